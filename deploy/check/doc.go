// Package check holds the tests of the deploy files, run by
// `make lint-deploy`: they load docker-compose.yml with compose-go, execute
// the Tiltfile with Starlark and stub builtins, lint the Dockerfiles with
// BuildKit's own parser and linter, load the statsd_exporter mapping with the
// exporter's mapper, and check the Helm chart as rendered by helm template
// (PAGEVIEWS_RENDERED_DIR: per Kubernetes version, with and without the
// Prometheus Operator's API) against what the worker reads and against the
// operator's CRDs (PAGEVIEWS_MONITORING_CRDS), and run the pinned helm
// (PAGEVIEWS_HELM) where a rendering must fail. Every path these files name
// must exist in the repository.
package check
