{{/*
Names, labels and the per-service configuration shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "clipaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource-name prefix: <release>-<name>, or the release name alone when it already
contains the chart name. Truncated to 63 characters (the DNS label limit).
*/}}
{{- define "clipaudit.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "clipaudit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The five services, in data-flow order. */}}
{{- define "clipaudit.serviceNames" -}}
embedder indexer classifier trainer evaluator
{{- end }}

{{/* The enabled services, space-separated. */}}
{{- define "clipaudit.enabledServices" -}}
{{- $enabled := list }}
{{- range $name := include "clipaudit.serviceNames" . | splitList " " }}
{{- if (index $.Values.services $name).enabled }}
{{- $enabled = append $enabled $name }}
{{- end }}
{{- end }}
{{- join " " $enabled }}
{{- end }}

{{/* Name of one service's resources: <fullname>-<service>. Takes (dict "root" $ "component" name). */}}
{{- define "clipaudit.componentFullname" -}}
{{- printf "%s-%s" (include "clipaudit.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{/* Labels that select this release's pods; never change them on upgrade. */}}
{{- define "clipaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clipaudit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every resource. */}}
{{- define "clipaudit.labels" -}}
helm.sh/chart: {{ include "clipaudit.chart" . }}
{{ include "clipaudit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | replace "+" "_" | trunc 63 | quote }}
app.kubernetes.io/part-of: clipaudit
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one service. Takes (dict "root" $ "component" name). */}}
{{- define "clipaudit.componentSelectorLabels" -}}
{{ include "clipaudit.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one service's resources. Takes (dict "root" $ "component" name). */}}
{{- define "clipaudit.componentLabels" -}}
{{ include "clipaudit.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The configuration of one service: serviceDefaults with every key set under
services.<name> replacing the default key as a whole. (A shallow merge by hand:
sprig's merge functions skip false and 0, so `consume: false` would be lost.)
Takes (dict "root" $ "component" name); returns YAML, read back with fromYaml.
*/}}
{{- define "clipaudit.serviceConfig" -}}
{{- $cfg := deepCopy .root.Values.serviceDefaults }}
{{- range $key, $value := index .root.Values.services .component }}
{{- $_ := set $cfg $key $value }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The image reference: repository@digest or repository:tag. */}}
{{- define "clipaudit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount name. */}}
{{- define "clipaudit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clipaudit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The object-store location every service gets: s3://<bucket>[/<prefix>]. */}}
{{- define "clipaudit.storeUri" -}}
{{- $prefix := trimAll "/" .Values.s3.prefix }}
{{- if $prefix }}
{{- printf "s3://%s/%s" .Values.s3.bucket $prefix }}
{{- else }}
{{- printf "s3://%s" .Values.s3.bucket }}
{{- end }}
{{- end }}

{{/*
Prometheus label matchers of this release's scrape targets: the Service names the
ServiceMonitor produces as `job`, in the release namespace.
*/}}
{{- define "clipaudit.jobMatcher" -}}
{{- $jobs := list }}
{{- range $name := include "clipaudit.enabledServices" . | splitList " " | compact }}
{{- $jobs = append $jobs (include "clipaudit.componentFullname" (dict "root" $ "component" $name)) }}
{{- end }}
{{- printf "namespace=%q, job=~%q" .Release.Namespace (join "|" $jobs) }}
{{- end }}
