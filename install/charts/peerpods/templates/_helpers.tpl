{{/*
Names, labels and the checks of the provider settings.
*/}}

{{- define "peerpods.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's prefix for names that must be unique per release. */}}
{{- define "peerpods.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects are shared by every namespace: the name carries the release's namespace. */}}
{{- define "peerpods.clusterName" -}}
{{- printf "peerpods:%s:%s" .Release.Namespace (include "peerpods.fullname" .) -}}
{{- end -}}

{{- define "peerpods.labels" -}}
app.kubernetes.io/name: {{ include "peerpods.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The adaptor pods' selector; app=cloud-api-adaptor as in existing peer-pods installs. */}}
{{- define "peerpods.adaptorSelector" -}}
app: cloud-api-adaptor
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "peerpods.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default "cloud-api-adaptor" -}}
{{- end -}}

{{- define "peerpods.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.flavor -}}
{{- $tag = printf "%s-%s" $tag .Values.image.flavor -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "peerpods.secretName" -}}
{{- if eq .Values.secrets.mode "create" -}}
peer-pods-secret
{{- else if eq .Values.secrets.mode "reference" -}}
{{- required "secrets.existingSecretName is required when secrets.mode is reference" .Values.secrets.existingSecretName -}}
{{- end -}}
{{- end -}}

{{/*
The adaptor's settings, generated from its flag definitions
(generated/reference.json; see that file's "generated_by").
*/}}
{{- define "peerpods.settings" -}}
{{- .Files.Get "generated/reference.json" -}}
{{- end -}}

{{/*
Fails the render, naming the key, when `config` or `secrets.values` holds
a key the chosen provider does not have, a secret in the ConfigMap, a key
the chart itself sets, or lacks a required key.
*/}}
{{- define "peerpods.validate" -}}
{{- $s := include "peerpods.settings" . | fromJson -}}
{{- if not (hasKey $s "providers") -}}
{{- fail "generated/reference.json is missing or unreadable: the chart is incomplete" -}}
{{- end -}}
{{- $p := .Values.provider -}}
{{- if not $p -}}
{{- fail (printf "provider is required: one of %s (start from providers/<name>.yaml)" (keys $s.providers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if not (hasKey $s.providers $p) -}}
{{- fail (printf "provider %q is not one of %s" $p (keys $s.providers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $prov := index $s.providers $p -}}
{{- $known := dict -}}
{{- range $s.global -}}{{- $_ := set $known .env . -}}{{- end -}}
{{- range $prov.settings -}}{{- $_ := set $known .env . -}}{{- end -}}
{{- if not .Values.configMap.create -}}
{{- if .Values.config -}}
{{- fail "config must be empty when configMap.create is false (the existing peer-pods-cm is used as it is)" -}}
{{- end -}}
{{- else -}}
{{- range $k, $v := .Values.config -}}
{{- if not (hasKey $known $k) -}}
{{- fail (printf "config.%s is not a setting of the %s provider nor a global one (see providers/%s.yaml)" $k $p $p) -}}
{{- end -}}
{{- $def := index $known $k -}}
{{- if $def.chart_managed -}}
{{- fail (printf "config.%s is set by the chart itself (%s)" $k $def.chart_managed) -}}
{{- end -}}
{{- if $def.secret -}}
{{- fail (printf "config.%s is a secret: put it in the Secret (secrets.values with secrets.mode create, or the Secret secrets.existingSecretName)" $k) -}}
{{- end -}}
{{- if not (kindIs "string" $v) -}}
{{- fail (printf "config.%s must be a string (quote it: \"%v\")" $k $v) -}}
{{- end -}}
{{- end -}}
{{- range $prov.required -}}
{{- if not (index $.Values.config .) -}}
{{- fail (printf "config.%s is required by the %s provider (providers/%s.yaml)" . $p $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.secrets.mode "create" -}}
{{- range $k, $v := .Values.secrets.values -}}
{{- if not (hasKey $known $k) -}}
{{- fail (printf "secrets.values.%s is not a setting of the %s provider (see providers/%s.yaml)" $k $p $p) -}}
{{- end -}}
{{- if not (kindIs "string" $v) -}}
{{- fail (printf "secrets.values.%s must be a string" $k) -}}
{{- end -}}
{{- end -}}
{{- else if .Values.secrets.values -}}
{{- fail (printf "secrets.values is only used with secrets.mode create (mode is %s)" .Values.secrets.mode) -}}
{{- end -}}
{{- if and .Values.uninstall.deleteInstances (not .Values.clusterId) -}}
{{- fail "clusterId is required while uninstall.deleteInstances is true: the uninstall hook deletes every pod VM tagged with it (a name unique among the clusters sharing the cloud account), or set uninstall.deleteInstances=false" -}}
{{- end -}}
{{- end -}}

{{/*
A component's ClusterRole (rules "<component>") and Role in the release
namespace (rules "<component>-namespace") with their bindings to its
ServiceAccount, from generated/reference.json.
*/}}
{{- define "peerpods.rbac" -}}
{{- $root := .root -}}
{{- $s := include "peerpods.settings" $root | fromJson -}}
{{- $cluster := dig "rbac" .component (list) $s -}}
{{- $ns := dig "rbac" (printf "%s-namespace" .component) (list) $s -}}
{{- if and .required (not $cluster) (not $ns) -}}
{{- fail (printf "generated/reference.json has no RBAC table for %s: the binary that generated it does not know this component (run scripts/gen-install.sh with a build that has it)" .component) -}}
{{- end -}}
{{- $name := printf "%s:%s" (include "peerpods.clusterName" $root) .component -}}
{{- if $cluster }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $name }}
  labels:
    {{- include "peerpods.labels" $root | nindent 4 }}
rules:
  {{- toYaml $cluster | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $name }}
  labels:
    {{- include "peerpods.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ .sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- if $ns }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ include "peerpods.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpods.labels" $root | nindent 4 }}
rules:
  {{- toYaml $ns | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ include "peerpods.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "peerpods.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ include "peerpods.fullname" $root }}-{{ .component }}
subjects:
  - kind: ServiceAccount
    name: {{ .sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end -}}
