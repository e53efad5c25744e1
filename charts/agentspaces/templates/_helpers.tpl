{{/*
Object names are fixed (agentspaces-operator, agentspaces-dashboard, ...), as in
manifests/: the CRDs and ClusterRoles are cluster-wide and one operator serves a cluster,
so a second release of this chart in one cluster is not supported.
*/}}

{{- define "agentspaces.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{- define "agentspaces.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Labels on every object; selectors use app.kubernetes.io/name only, as manifests/ do. */}}
{{- define "agentspaces.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentspaces
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "agentspaces.operatorLabels" -}}
app.kubernetes.io/name: agentspaces
{{ include "agentspaces.labels" . }}
{{- end -}}

{{- define "agentspaces.dashboardLabels" -}}
app.kubernetes.io/name: agentspaces-dashboard
{{ include "agentspaces.labels" . }}
{{- end -}}

{{- define "agentspaces.gatewayLabels" -}}
app.kubernetes.io/name: agentspaces-gateway
{{ include "agentspaces.labels" . }}
{{- end -}}

{{/* The namespaces the Secret rights are bound in when rbac.secrets.clusterWide is false. */}}
{{- define "agentspaces.secretNamespaces" -}}
{{- prepend .Values.rbac.secrets.namespaces (include "agentspaces.namespace" .) | uniq | toJson -}}
{{- end -}}
