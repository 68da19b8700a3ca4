# The dashboards module (dashboards/, a Go module of its own): the Grafana
# and Datadog dashboards generated from internal/metrics, the Datadog
# monitors and the Prometheus alerting rules (deploy/prometheus/alerts.yml).
# Include it from the main Makefile, or run it on its own:
#
#   make -f dashboards/dashboards.mk dashboards
#   make -f dashboards/dashboards.mk test-dashboards
#
# test-dashboards needs Prometheus and promtool (Debian package
# `prometheus`). Without them a developer gets a loud warning and the other
# tests; CI (CI=true) fails instead.

GO ?= go
# This fragment's directory, wherever make runs from.
DASHBOARDS_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: dashboards
dashboards: ## regenerate the Grafana and Datadog dashboards and the panel table of dashboards/README.md
	cd $(DASHBOARDS_DIR) && $(GO) run ./gen

.PHONY: test-dashboards
test-dashboards: ## check the dashboards, monitors and alert rules: drift, metric names, promtool, and end to end on real processes (about 1-2 minutes)
	@test -z "$$(gofmt -l $(DASHBOARDS_DIR))" || { echo "gofmt needed:"; gofmt -l $(DASHBOARDS_DIR); exit 1; }
	cd $(DASHBOARDS_DIR) && $(GO) vet ./...
	cd $(DASHBOARDS_DIR) && $(GO) test -count=1 -timeout 10m ./...
