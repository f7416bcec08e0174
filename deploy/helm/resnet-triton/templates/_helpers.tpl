{{- define "resnet-triton.name" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "resnet-triton.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "resnet-triton.labels" -}}
{{ include "resnet-triton.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* model.version as text: `--set model.version=4` gives an integer, a values file's 4 a
float (JSON's numbers); either prints as "4", as the string "4" does. */}}
{{- define "resnet-triton.modelVersion" -}}
{{- $version := .Values.model.version -}}
{{- if kindIs "string" $version }}{{ $version }}{{ else }}{{ $version | int64 | toString }}{{ end -}}
{{- end -}}

{{/* The copier's command for the store's scheme: <storeUri>/<target> into the emptyDir. */}}
{{- define "resnet-triton.syncCommand" -}}
{{- $store := trimSuffix "/" .Values.modelRepository.storeUri -}}
{{- $source := printf "%s/%s" $store .Values.target -}}
{{- with .Values.model.version }}{{ $source = printf "%s/versions/%s/%s" $store $.Values.target (include "resnet-triton.modelVersion" $) }}{{ end -}}
{{- if hasPrefix "s3://" .Values.modelRepository.storeUri -}}
[aws, s3, sync, --only-show-errors, {{ $source | quote }}, /workspace/model_repository]
{{- else -}}
[gsutil, -m, rsync, -r, {{ $source | quote }}, /workspace/model_repository]
{{- end -}}
{{- end -}}
