{{/*
Names, labels and small decisions shared by every template.
*/}}

{{- define "vibe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-vibe, or the release name when it already contains the chart name. */}}
{{- define "vibe.fullname" -}}
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

{{- define "vibe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object: app.kubernetes.io/* plus commonLabels. */}}
{{- define "vibe.labels" -}}
helm.sh/chart: {{ include "vibe.chart" . }}
app.kubernetes.io/name: {{ include "vibe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vibe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "operator"). */}}
{{- define "vibe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vibe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: the standard ones plus its component. */}}
{{- define "vibe.componentLabels" -}}
{{ include "vibe.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vibe.operator.fullname" -}}
{{- printf "%s-operator" (include "vibe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vibe.agent.fullname" -}}
{{- printf "%s-agent" (include "vibe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vibe.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "vibe.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vibe.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "vibe.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespace of the GPUProfiles: where the agents write and the operator reads. */}}
{{- define "vibe.profileNamespace" -}}
{{- default .Release.Namespace .Values.operator.profileNamespace }}
{{- end }}

{{/* registry/repository[:tag][@digest], fully qualified: the registry defaults to .Values.imageRegistry,
the tag to the chart's appVersion. Pass an image dict + ctx. */}}
{{- define "vibe.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- $registry := trimSuffix "/" (default .ctx.Values.imageRegistry .image.registry) }}
{{- $ref := printf "%s/%s:%s" $registry .image.repository $tag }}
{{- if .image.digest }}
{{- printf "%s@%s" $ref .image.digest }}
{{- else }}
{{- $ref }}
{{- end }}
{{- end }}

{{/*
Whether to render a Prometheus Operator object: enabled, and either the cluster serves the kind
(.Capabilities, i.e. the API server Helm talks to) or force is set. Pass (dict "ctx" $ "cfg" <values>
"kind" "ServiceMonitor"); renders "true" or nothing.
*/}}
{{/* The `release` label kube-prometheus-stack's Prometheus selects monitors and rules by, if set. */}}
{{- define "vibe.monitoring.releaseLabel" -}}
{{- with .Values.monitoring.prometheusRelease }}
release: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Whether PodMonitors replace the ServiceMonitors. */}}
{{- define "vibe.monitoring.podMonitors" -}}
{{- include "vibe.monitoring.render" (dict "ctx" . "cfg" .Values.monitoring.podMonitor "kind" "PodMonitor") -}}
{{- end }}

{{- define "vibe.monitoring.render" -}}
{{- if and .cfg.enabled (or .cfg.force (.ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind))) -}}
true
{{- end }}
{{- end }}

{{/*
The operator's metrics bind address: operator.metrics.addr, or, when empty, all addresses only if a
ServiceMonitor scrapes it (its series name every tenant's MoEDeployments), else the loopback.
*/}}
{{- define "vibe.operator.metricsAddr" -}}
{{- if .Values.operator.metrics.addr -}}
{{ .Values.operator.metrics.addr }}
{{- else if include "vibe.monitoring.render" (dict "ctx" . "cfg" .Values.monitoring.serviceMonitor "kind" "ServiceMonitor") -}}
0.0.0.0
{{- else -}}
127.0.0.1
{{- end }}
{{- end }}

{{/*
CEL: the node an agent's pod-bound token carries (user extra authentication.kubernetes.io/node-name, one
value), or '' for a token bound to no node. The agents' node-restriction and event-restriction policies.
*/}}
{{- define "vibe.agent.tokenNode" -}}
'authentication.kubernetes.io/node-name' in request.userInfo.extra &&
size(request.userInfo.extra['authentication.kubernetes.io/node-name']) == 1
? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''
{{- end }}

{{/* Whether the operator watches every namespace (cluster-wide RBAC) or a list (namespaced Roles). */}}
{{- define "vibe.operator.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces -}}
true
{{- end }}
{{- end }}

{{/*
The namespaces a namespaced operator watches, as a JSON list: watchNamespaces plus the profile
namespace (`vibe operator` always watches that one: Kopf applies its namespaces to every resource).
*/}}
{{- define "vibe.operator.watchedNamespaces" -}}
{{- append .Values.operator.watchNamespaces (include "vibe.profileNamespace" .) | uniq | sortAlpha | toJson }}
{{- end }}

{{/* Refuse combinations that would be unsafe, with a message that says what to change. */}}
{{- define "vibe.validate" -}}
{{- if and .Values.operator.enabled (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) }}
{{- fail "operator.replicas > 1 needs operator.peering.enabled=true (otherwise every replica would reconcile)" }}
{{- end }}
{{- if and .Values.agent.enabled .Values.agent.simulate.enabled (not .Values.agent.simulate.fleet) }}
{{- fail "agent.simulate.enabled=true needs agent.simulate.fleet (the simulated fleet file's content)" }}
{{- end }}
{{- end }}
