{{/* Chart name, overridable with nameOverride; 63 characters is the label value limit. */}}
{{- define "bundlecopy-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: release name, plus the chart name unless the release name contains it. */}}
{{- define "bundlecopy-operator.fullname" -}}
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

{{- define "bundlecopy-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bundlecopy-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bundlecopy-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bundlecopy-operator.labels" -}}
helm.sh/chart: {{ include "bundlecopy-operator.chart" . }}
{{ include "bundlecopy-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: bundlecopy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bundlecopy-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bundlecopy-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bundlecopy-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "true" when leader election is on: asked for, or needed because more than one replica runs. */}}
{{- define "bundlecopy-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{/* Where the extra CA bundle is mounted; the key is always projected to this file name. */}}
{{- define "bundlecopy-operator.extraCADir" -}}/etc/bundlecopy/extra-ca{{- end }}
{{- define "bundlecopy-operator.extraCAFile" -}}{{ include "bundlecopy-operator.extraCADir" . }}/ca.crt{{- end }}

{{/* The RBAC rules the controller needs in every namespace it watches (cluster-wide with a ClusterRole). */}}
{{- define "bundlecopy-operator.watchRules" -}}
- apiGroups: ["bundlecopy.dev"]
  resources: ["bundlecopies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["bundlecopy.dev"]
  resources: ["bundlecopies/status"]
  verbs: ["get", "patch"]
{{- if .Values.mirrors.enabled }}
# BundleMirrors own one BundleCopy per selected tag: created and updated by server-side apply,
# deleted when the tag leaves the selection.
- apiGroups: ["bundlecopy.dev"]
  resources: ["bundlecopies"]
  verbs: ["create", "update", "delete"]
- apiGroups: ["bundlecopy.dev"]
  resources: ["bundlemirrors"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["bundlecopy.dev"]
  resources: ["bundlemirrors/status"]
  verbs: ["get", "patch"]
{{- end }}
# Registry credentials and CA certificates referenced by BundleCopies; watched so a changed Secret retries the copy.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# The controller publishes Events through kube-runtime's Recorder, which writes events.k8s.io/v1 Events
# (create, then patch to count repeats). The core ("") group is granted the same for clients that
# still post v1 Events.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
