# Checks of the deploy files, offline: the Helm chart, the Kubernetes
# manifests, docker-compose.yml, the Tiltfile, the Dockerfiles and the CI
# workflows. Run from the repository root:
#
#   make -f Makefile -f deploy/deploy.mk lint-deploy
#   make -f deploy/deploy.mk lint-deploy          # the same, on its own
#
# Tools are pinned in tools/go.mod and run with `go tool`, which caches the
# built binaries (helm takes minutes to build once, then starts at once).
# Kubernetes JSON schemas are generated from the OpenAPI spec inside the
# k8s.io/kubernetes module (tools/k8sschema), one set per Kubernetes version,
# so kubeconform never fetches anything; the Prometheus Operator's CRDs come
# from its module the same way. The only outside program is shellcheck
# (Debian package `shellcheck`), which actionlint runs on the workflows'
# scripts.

GO ?= go
DEPLOY_TOOL    := $(GO) tool -modfile=tools/go.mod
DEPLOY_HELM    := $(DEPLOY_TOOL) helm
DEPLOY_KUBECONFORM := $(DEPLOY_TOOL) kubeconform
DEPLOY_ACTIONLINT  := $(DEPLOY_TOOL) actionlint

# The Kubernetes releases the manifests are validated against: the newest
# (K8S_SCHEMA_VERSION) and the oldest the chart claims (kubeVersion in
# Chart.yaml; deploy/check fails when the two disagree). Each is a
# k8s.io/kubernetes module version (the OpenAPI spec's source) and the
# version helm and kubeconform are told.
K8S_SCHEMA_VERSION ?= v1.37.2
K8S_OLDEST_SCHEMA_VERSION ?= v1.29.6
DEPLOY_KUBE_VERSION := $(patsubst v%,%,$(K8S_SCHEMA_VERSION))
DEPLOY_KUBE_OLDEST  := $(patsubst v%,%,$(K8S_OLDEST_SCHEMA_VERSION))

# The Prometheus Operator release whose CRDs (the PodMonitor's and the
# PrometheusRule's schemas, in its module zip) deploy/check validates the
# chart's monitoring objects against; kubeconform has no schema for them.
MONITORING_CRDS_VERSION ?= v0.85.0
MONITORING_KINDS := monitoring.coreos.com/v1/PodMonitor,monitoring.coreos.com/v1/PrometheusRule

DEPLOY_CACHE   := .cache/deploy
K8S_SCHEMAS    := .cache/k8s-schemas
K8S_SCHEMA_STAMPS := $(foreach v,$(K8S_SCHEMA_VERSION) $(K8S_OLDEST_SCHEMA_VERSION),$(K8S_SCHEMAS)/$(v)-standalone-strict/.complete)
CHART          := deploy/helm/pageviews
# Every values set is linted, rendered and validated besides the defaults:
# those of the chart's ci/, which CI also installs on kind (they expect
# deploy/kafka in the release's namespace), and those of deploy/check's
# testdata, which only render (nondefault-values.yaml turns every optional
# branch on, with Secrets and endpoints that exist nowhere).
CHART_CI_VALUES := $(sort $(wildcard $(CHART)/ci/*-values.yaml))
CHART_RENDER_VALUES := $(sort $(wildcard deploy/check/testdata/values/*-values.yaml))
CHART_VALUES := $(CHART_CI_VALUES) $(CHART_RENDER_VALUES)
# One directory per rendering: v<newest>, v<oldest>, and v<newest>-monitoring
# (with the Prometheus Operator's API, as a cluster that has its CRDs).
DEPLOY_RENDERED := $(DEPLOY_CACHE)/rendered
RENDERED_NEWEST := $(DEPLOY_RENDERED)/v$(DEPLOY_KUBE_VERSION)
RENDERED_OLDEST := $(DEPLOY_RENDERED)/v$(DEPLOY_KUBE_OLDEST)
RENDERED_MONITORING := $(DEPLOY_RENDERED)/v$(DEPLOY_KUBE_VERSION)-monitoring
# The chart has no default broker (an install without one fails): the
# defaults are rendered with this one.
DEPLOY_BROKERS := kafka:9092

.PHONY: lint-deploy
lint-deploy: lint-deploy-helm lint-deploy-tests lint-deploy-manifests lint-deploy-workflows ## check the Helm chart, manifests, compose file, Tiltfile, Dockerfiles and CI workflows (offline)
	@echo "lint-deploy: ok"

# deploy-render renders the chart into directory $(1) for Kubernetes $(2),
# with more helm template flags $(3): the defaults (with a broker) as
# chart-default.yaml, each values set as chart-<name>.yaml.
define deploy-render
	@mkdir -p $(1)
	$(DEPLOY_HELM) template pageviews $(CHART) --namespace pageviews --kube-version $(2) \
	  --set kafka.brokers=$(DEPLOY_BROKERS) $(3) > $(1)/chart-default.yaml
	@set -e; for v in $(CHART_VALUES); do \
	  out=$(1)/chart-$$(basename $$v .yaml).yaml; \
	  echo "$(DEPLOY_HELM) template pageviews $(CHART) --namespace pageviews --kube-version $(2) -f $$v $(3) > $$out"; \
	  $(DEPLOY_HELM) template pageviews $(CHART) --namespace pageviews --kube-version $(2) -f $$v $(3) > $$out; \
	done
endef

# helm lint --strict (warnings fail) for both Kubernetes versions, and helm
# template for both, and for the newest with the monitoring API, for the
# defaults and every values set. The chart's own values.schema.json is
# enforced by both. Linting the defaults without a broker passes: helm lint
# only notes a missing required value (deploy/check makes sure that helm
# template fails on it).
.PHONY: lint-deploy-helm
lint-deploy-helm:
	@rm -rf $(DEPLOY_RENDERED)
	@set -e; for k in $(DEPLOY_KUBE_VERSION) $(DEPLOY_KUBE_OLDEST); do \
	  for v in "" $(CHART_VALUES); do \
	    echo "$(DEPLOY_HELM) lint --strict --kube-version $$k $(CHART)$${v:+ -f $$v}"; \
	    $(DEPLOY_HELM) lint --strict --kube-version $$k $(CHART) $${v:+-f $$v}; \
	  done; \
	done
	$(call deploy-render,$(RENDERED_NEWEST),$(DEPLOY_KUBE_VERSION),)
	$(call deploy-render,$(RENDERED_OLDEST),$(DEPLOY_KUBE_OLDEST),)
	$(call deploy-render,$(RENDERED_MONITORING),$(DEPLOY_KUBE_VERSION),--api-versions monitoring.coreos.com/v1)

# The Go checks in deploy/check (a module of its own): compose-go loads
# docker-compose.yml, Starlark runs the Tiltfile with stub builtins, BuildKit
# lints the Dockerfiles, statsd_exporter's mapper loads the mapping, and the
# rendered chart is checked against what the worker reads, per Kubernetes
# version and with and without the monitoring API; the PodMonitor and the
# PrometheusRule are validated against the operator's CRDs, and helm template
# must fail without a broker. The Tiltfile test also writes what Tilt would
# apply, for kubeconform below.
.PHONY: lint-deploy-tests
lint-deploy-tests: lint-deploy-helm
	@test -z "$$(gofmt -l deploy/check tools/k8sschema)" || { echo "gofmt needed:"; gofmt -l deploy/check tools/k8sschema; exit 1; }
	cd deploy/check && $(GO) vet ./...
	cd deploy/check && PAGEVIEWS_RENDERED_DIR=$(abspath $(DEPLOY_RENDERED)) PAGEVIEWS_TILT_OUT=$(abspath $(DEPLOY_CACHE)/tilt) \
	  PAGEVIEWS_HELM="$(DEPLOY_HELM)" PAGEVIEWS_MONITORING_CRDS=$(MONITORING_CRDS_VERSION) \
	  $(GO) test -count=1 ./...
	tr '\n' '\0' < $(DEPLOY_CACHE)/tilt/helm-args.txt | \
	  xargs -0 $(DEPLOY_HELM) template --namespace pageviews --kube-version $(DEPLOY_KUBE_VERSION) \
	  > $(RENDERED_NEWEST)/tilt-chart.yaml

# kubeconform -strict on every manifest, for the newest and the oldest
# Kubernetes: the rendered chart (all values sets and Tilt's), the local
# Kafka, and the objects the Tiltfile builds itself. The PodMonitor and the
# PrometheusRule are skipped here only (deploy/check validates them).
# Schemas come only from the generated directories: no network.
DEPLOY_KUBECONFORM_FLAGS = -strict -summary -output text -schema-location $(abspath $(K8S_SCHEMAS))

.PHONY: lint-deploy-manifests
lint-deploy-manifests: lint-deploy-helm lint-deploy-tests $(K8S_SCHEMA_STAMPS)
	$(DEPLOY_KUBECONFORM) $(DEPLOY_KUBECONFORM_FLAGS) -kubernetes-version $(DEPLOY_KUBE_VERSION) \
	  $(RENDERED_NEWEST)/*.yaml deploy/kafka/kafka.yaml $(DEPLOY_CACHE)/tilt/objects.yaml
	$(DEPLOY_KUBECONFORM) $(DEPLOY_KUBECONFORM_FLAGS) -kubernetes-version $(DEPLOY_KUBE_VERSION) \
	  -skip $(MONITORING_KINDS) $(RENDERED_MONITORING)/*.yaml
	$(DEPLOY_KUBECONFORM) $(DEPLOY_KUBECONFORM_FLAGS) -kubernetes-version $(DEPLOY_KUBE_OLDEST) \
	  $(RENDERED_OLDEST)/*.yaml deploy/kafka/kafka.yaml $(DEPLOY_CACHE)/tilt/objects.yaml

# One schema set per Kubernetes version, made once from the k8s.io/kubernetes
# module of that version (fetched through the module proxy the first time).
$(K8S_SCHEMAS)/%-standalone-strict/.complete: tools/k8sschema/main.go
	cd tools && $(GO) run ./k8sschema -version $* -out ../$(K8S_SCHEMAS)
	@touch $@

# actionlint checks the workflows, and their run: scripts with shellcheck.
# Without shellcheck a developer gets a loud warning and the rest of the
# checks; CI (CI=true) fails instead.
.PHONY: lint-deploy-workflows
lint-deploy-workflows:
	@if command -v shellcheck >/dev/null 2>&1; then \
	  echo "$(DEPLOY_ACTIONLINT) .github/workflows/*.yml"; \
	  $(DEPLOY_ACTIONLINT) .github/workflows/*.yml; \
	elif [ "$$CI" = true ]; then \
	  echo "lint-deploy: shellcheck is not installed (Debian package shellcheck) and CI=true: actionlint must check the scripts" >&2; \
	  exit 1; \
	else \
	  echo "" >&2; \
	  echo "*** WARNING: shellcheck is not installed: actionlint SKIPS the run: scripts (apt-get install shellcheck) ***" >&2; \
	  echo "" >&2; \
	  $(DEPLOY_ACTIONLINT) -shellcheck= .github/workflows/*.yml; \
	fi
