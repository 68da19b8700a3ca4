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
# k8s.io/kubernetes module (tools/k8sschema), so kubeconform never fetches
# anything. The only outside program is shellcheck (Debian package
# `shellcheck`), which actionlint runs on the workflows' scripts.

GO ?= go
DEPLOY_TOOL    := $(GO) tool -modfile=tools/go.mod
DEPLOY_HELM    := $(DEPLOY_TOOL) helm
DEPLOY_KUBECONFORM := $(DEPLOY_TOOL) kubeconform
DEPLOY_ACTIONLINT  := $(DEPLOY_TOOL) actionlint

# The Kubernetes release the manifests are validated against: its module
# version (the OpenAPI spec's source) and the version helm and kubeconform
# are told.
K8S_SCHEMA_VERSION ?= v1.37.2
DEPLOY_KUBE_VERSION := $(patsubst v%,%,$(K8S_SCHEMA_VERSION))

DEPLOY_CACHE   := .cache/deploy
K8S_SCHEMAS    := .cache/k8s-schemas
K8S_SCHEMA_STAMP := $(K8S_SCHEMAS)/$(K8S_SCHEMA_VERSION)-standalone-strict/.complete
CHART          := deploy/helm/pageviews
# Every values set under ci/ is linted, rendered and validated besides the
# defaults (nondefault-values.yaml turns every optional branch on).
CHART_CI_VALUES := $(sort $(wildcard $(CHART)/ci/*-values.yaml))
DEPLOY_RENDERED := $(DEPLOY_CACHE)/rendered

.PHONY: lint-deploy
lint-deploy: lint-deploy-helm lint-deploy-tests lint-deploy-manifests lint-deploy-workflows ## check the Helm chart, manifests, compose file, Tiltfile, Dockerfiles and CI workflows (offline)
	@echo "lint-deploy: ok"

# helm lint --strict (warnings fail) and helm template, for the defaults and
# every ci/ values set. The chart's own values.schema.json is enforced by both.
.PHONY: lint-deploy-helm
lint-deploy-helm:
	@mkdir -p $(DEPLOY_RENDERED)
	$(DEPLOY_HELM) lint --strict --kube-version $(DEPLOY_KUBE_VERSION) $(CHART)
	@set -e; for v in $(CHART_CI_VALUES); do \
	  echo "$(DEPLOY_HELM) lint --strict --kube-version $(DEPLOY_KUBE_VERSION) $(CHART) -f $$v"; \
	  $(DEPLOY_HELM) lint --strict --kube-version $(DEPLOY_KUBE_VERSION) $(CHART) -f $$v; \
	done
	$(DEPLOY_HELM) template pageviews $(CHART) --namespace pageviews --kube-version $(DEPLOY_KUBE_VERSION) \
	  > $(DEPLOY_RENDERED)/chart-default.yaml
	@set -e; for v in $(CHART_CI_VALUES); do \
	  out=$(DEPLOY_RENDERED)/chart-$$(basename $$v .yaml).yaml; \
	  echo "$(DEPLOY_HELM) template pageviews $(CHART) -f $$v > $$out"; \
	  $(DEPLOY_HELM) template pageviews $(CHART) --namespace pageviews --kube-version $(DEPLOY_KUBE_VERSION) -f $$v > $$out; \
	done

# The Go checks in deploy/check (a module of its own): compose-go loads
# docker-compose.yml, Starlark runs the Tiltfile with stub builtins, BuildKit
# lints the Dockerfiles, statsd_exporter's mapper loads the mapping, and the
# rendered chart is checked against what the worker reads. The Tiltfile test
# also writes what Tilt would apply, for kubeconform below.
.PHONY: lint-deploy-tests
lint-deploy-tests: lint-deploy-helm
	@test -z "$$(gofmt -l deploy/check tools/k8sschema)" || { echo "gofmt needed:"; gofmt -l deploy/check tools/k8sschema; exit 1; }
	cd deploy/check && $(GO) vet ./...
	cd deploy/check && PAGEVIEWS_RENDERED_DIR=$(abspath $(DEPLOY_RENDERED)) PAGEVIEWS_TILT_OUT=$(abspath $(DEPLOY_CACHE)/tilt) \
	  $(GO) test -count=1 ./...
	tr '\n' '\0' < $(DEPLOY_CACHE)/tilt/helm-args.txt | \
	  xargs -0 $(DEPLOY_HELM) template --namespace pageviews --kube-version $(DEPLOY_KUBE_VERSION) \
	  > $(DEPLOY_RENDERED)/tilt-chart.yaml

# kubeconform -strict on every manifest: the rendered chart (all values sets
# and Tilt's), the local Kafka, and the objects the Tiltfile builds itself.
# Schemas come only from the generated directory: no network.
.PHONY: lint-deploy-manifests
lint-deploy-manifests: lint-deploy-helm lint-deploy-tests $(K8S_SCHEMA_STAMP)
	$(DEPLOY_KUBECONFORM) -strict -summary -output text \
	  -kubernetes-version $(DEPLOY_KUBE_VERSION) \
	  -schema-location $(abspath $(K8S_SCHEMAS)) \
	  $(DEPLOY_RENDERED)/*.yaml deploy/kafka/kafka.yaml $(DEPLOY_CACHE)/tilt/objects.yaml

$(K8S_SCHEMA_STAMP): tools/k8sschema/main.go
	cd tools && $(GO) run ./k8sschema -version $(K8S_SCHEMA_VERSION) -out ../$(K8S_SCHEMAS)
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
