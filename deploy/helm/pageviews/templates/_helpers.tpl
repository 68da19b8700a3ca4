{{/*
Names. The StatefulSet, its headless Service and the pod names derive from
pageviews.fullname; the pod names are also the workers' static member ids.
*/}}
{{- define "pageviews.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pageviews.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod a stable DNS name. */}}
{{- define "pageviews.headlessName" -}}
{{- printf "%s-headless" (include "pageviews.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pageviews.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image tag, and the version every telemetry signal is tagged with. */}}
{{- define "pageviews.version" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "pageviews.ddVersion" -}}
{{- default (include "pageviews.version" .) .Values.datadog.version }}
{{- end }}

{{- define "pageviews.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pageviews.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pageviews.labels" -}}
helm.sh/chart: {{ include "pageviews.chart" . }}
{{ include "pageviews.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pageviews.version" . | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: pageviews
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pageviews.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pageviews.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
pageviews.seconds turns a Go duration made of whole hours, minutes and
seconds ("30s", "1m30s", "2h") into whole seconds. values.schema.json admits
only that form, so that the grace period computed from SHUTDOWN_TIMEOUT is
exact.
*/}}
{{- define "pageviews.seconds" -}}
{{- $d := toString . }}
{{- $h := regexFind "[0-9]+h" $d | trimSuffix "h" | default "0" | atoi }}
{{- $m := regexFind "[0-9]+m" $d | trimSuffix "m" | default "0" | atoi }}
{{- $s := regexFind "[0-9]+s" $d | trimSuffix "s" | default "0" | atoi }}
{{- add (mul $h 3600) (mul $m 60) $s }}
{{- end }}

{{/*
pageviews.preStopSleepSeconds is the worker's preStop sleep, or 0 for none.
The image has no shell and no sleep binary, so the hook is the kubelet's own
sleep action: beta and on by default from Kubernetes 1.30 (PodLifecycleSleepAction).
On 1.29 the API server would drop the field (the gate is alpha and off there),
so the chart renders no hook at all rather than one that silently does nothing.
*/}}
{{- define "pageviews.preStopSleepSeconds" -}}
{{- if and (gt (int .Values.worker.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- int .Values.worker.preStopSleepSeconds }}
{{- else -}}
0
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep, then SHUTDOWN_TIMEOUT plus
headroom, so that the kubelet's KILL never cuts a warm shutdown (flush,
commit, leave the group) short. The grace period counts from the start of
the preStop hook.
*/}}
{{- define "pageviews.terminationGracePeriodSeconds" -}}
{{- $timeout := include "pageviews.seconds" .Values.worker.shutdownTimeout | atoi }}
{{- if le $timeout 0 }}
{{- fail (printf "worker.shutdownTimeout=%q: want a positive duration such as 30s or 1m30s" .Values.worker.shutdownTimeout) }}
{{- end }}
{{- add (include "pageviews.preStopSleepSeconds" . | atoi) $timeout .Values.worker.shutdownGraceExtraSeconds }}
{{- end }}

{{/*
KAFKA_BROKERS. There is no default: an empty list would start the worker's
embedded development broker in every pod, each with its own topics.
*/}}
{{- define "pageviews.brokers" -}}
{{- required "kafka.brokers is required: give the Kafka brokers' host:port list, such as --set kafka.brokers=kafka:9092 (an empty list would start the embedded development broker in every pod)" .Values.kafka.brokers }}
{{- end }}

{{/*
"true" when the Prometheus Operator's API is there and the statsd_exporter
sidecar gives it something to scrape: the PodMonitor and the PrometheusRule
are rendered only then (each also has its own switch).
*/}}
{{- define "pageviews.prometheusOperator" -}}
{{- if and (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") .Values.statsdExporter.enabled }}true{{ end }}
{{- end }}

{{/*
Labels of the helm test Job's pod: deliberately not the selector labels, so
that the Services, the PodDisruptionBudget and the StatefulSet never take the
test pod for a worker.
*/}}
{{- define "pageviews.testLabels" -}}
helm.sh/chart: {{ include "pageviews.chart" . }}
app.kubernetes.io/name: {{ include "pageviews.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "pageviews.version" . | quote }}
app.kubernetes.io/component: test
app.kubernetes.io/part-of: pageviews
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Kafka security: which Secrets hold what, and whether the chart makes one. */}}
{{- define "pageviews.kafkaSecretName" -}}
{{- printf "%s-kafka" (include "pageviews.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pageviews.tlsSecretName" -}}
{{- default (include "pageviews.kafkaSecretName" .) .Values.kafka.tls.existingSecret }}
{{- end }}

{{- define "pageviews.saslSecretName" -}}
{{- default (include "pageviews.kafkaSecretName" .) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{/* "true" when the TLS Secret holds a CA bundle to trust. */}}
{{- define "pageviews.tlsHasCA" -}}
{{- $t := .Values.kafka.tls }}
{{- if and $t.enabled (ternary $t.caKey $t.ca (ne $t.existingSecret "")) }}true{{ end }}
{{- end }}

{{/* "true" when the TLS Secret holds a client certificate and key (mutual TLS). */}}
{{- define "pageviews.tlsHasCert" -}}
{{- $t := .Values.kafka.tls }}
{{- if $t.enabled }}
{{- if $t.existingSecret }}
{{- if ne (empty $t.certKey) (empty $t.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey: set both for mutual TLS, or neither" }}
{{- end }}
{{- if $t.certKey }}true{{ end }}
{{- else }}
{{- if ne (empty $t.cert) (empty $t.key) }}
{{- fail "kafka.tls.cert and kafka.tls.key: set both for mutual TLS, or neither" }}
{{- end }}
{{- if $t.cert }}true{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when the TLS Secret is mounted at all. */}}
{{- define "pageviews.tlsMounted" -}}
{{- if or (include "pageviews.tlsHasCA" .) (include "pageviews.tlsHasCert" .) }}true{{ end }}
{{- end }}

{{/* "true" when the chart itself creates the Kafka Secret. */}}
{{- define "pageviews.createKafkaSecret" -}}
{{- $madeTLS := and (include "pageviews.tlsMounted" .) (not .Values.kafka.tls.existingSecret) }}
{{- $madeSASL := and .Values.kafka.sasl.mechanism (not .Values.kafka.sasl.existingSecret) }}
{{- if $madeSASL }}
{{- if not (and .Values.kafka.sasl.username .Values.kafka.sasl.password) }}
{{- fail "kafka.sasl.mechanism is set: give kafka.sasl.existingSecret, or kafka.sasl.username and kafka.sasl.password" }}
{{- end }}
{{- end }}
{{- if or $madeTLS $madeSASL }}true{{ end }}
{{- end }}

{{/* Where the TLS files appear inside the worker container. */}}
{{- define "pageviews.tlsDir" -}}
/etc/pageviews/kafka-tls
{{- end }}

{{/*
The schema registry. The chart makes its own Secret (credentials, CA bundle)
from values only for what no Secret of yours provides. Settings that need a
URL fail without one, rather than doing nothing.
*/}}
{{- define "pageviews.registrySecretName" -}}
{{- printf "%s-schema-registry" (include "pageviews.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the worker sends basic-auth credentials to the registry. */}}
{{- define "pageviews.registryAuth" -}}
{{- $r := .Values.schemaRegistry }}
{{- if or $r.existingSecret $r.username $r.password }}
{{- if not $r.url }}
{{- fail "schemaRegistry: credentials are set but schemaRegistry.url is empty" }}
{{- end }}
{{- if and (not $r.existingSecret) (not (and $r.username $r.password)) }}
{{- fail "schemaRegistry.username and schemaRegistry.password: set both, or give schemaRegistry.existingSecret" }}
{{- end -}}
true
{{- end }}
{{- end }}

{{/* "true" when a CA bundle for the registry is mounted. */}}
{{- define "pageviews.registryHasCA" -}}
{{- $r := .Values.schemaRegistry }}
{{- if or $r.caSecret $r.ca }}
{{- if not (hasPrefix "https://" $r.url) }}
{{- fail (printf "schemaRegistry: a CA bundle is set (caSecret or ca) but schemaRegistry.url=%q is not an https URL" $r.url) }}
{{- end -}}
true
{{- end }}
{{- end }}

{{/* "true" when the chart itself creates the schema registry Secret. */}}
{{- define "pageviews.createRegistrySecret" -}}
{{- $r := .Values.schemaRegistry }}
{{- $madeAuth := and (include "pageviews.registryAuth" .) (not $r.existingSecret) }}
{{- $madeCA := and (include "pageviews.registryHasCA" .) (not $r.caSecret) }}
{{- if or $madeAuth $madeCA }}true{{ end }}
{{- end }}

{{/* Where the registry's CA bundle appears inside the worker container. */}}
{{- define "pageviews.registryCADir" -}}
/etc/pageviews/schema-registry-tls
{{- end }}

{{/* The statsd_exporter sidecar's Unix socket, when the worker sends over one. */}}
{{- define "pageviews.dsdSocket" -}}
{{- printf "%s/dsd.socket" (trimSuffix "/" .Values.datadog.uds.socketDir) }}
{{- end }}
