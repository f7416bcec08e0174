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

{{/* The probe: the shipped photo classified through the ensemble, over the pod's own
port 8000, behind the fence like any client (it sends the key the container writes for
itself, /tmp/nginx/healthcheck.key). Called with (list $ timeoutSeconds). */}}
{{- define "resnet-triton.probeCommand" -}}
{{- $ := index . 0 -}}
[/workspace/.venv/bin/python, -m, resnet_triton.serving.probe, --url, "localhost:8000", --model, {{ $.Values.ensemble | quote }}, --timeout, {{ index . 1 | quote }}]
{{- end -}}

{{/* Who may call the pods (deploy/README.md, "Who may call the pods"). The cpu image's
nginx checks the inference keys; NVIDIA's image (gpu) has no proxy, so keys there would
be a promise nothing keeps and are refused. Without keys the pods serve whoever the
NetworkPolicy lets in: that takes apiKeys.allowAnonymous=true, said out loud. */}}
{{- define "resnet-triton.checkApiKeys" -}}
{{- $keys := .Values.apiKeys -}}
{{- if and $keys.secretName $keys.allowAnonymous -}}
{{- fail (printf "apiKeys.secretName=%s and apiKeys.allowAnonymous=true contradict each other: keep the keys Secret, or drop it to publish inference without keys" $keys.secretName) -}}
{{- end -}}
{{- if eq .Values.target "gpu" -}}
{{- if $keys.secretName -}}
{{- fail (printf "apiKeys.secretName=%s: target gpu runs NVIDIA's image, which has no nginx to check inference keys (only the cpu image has that proxy); unset it and set apiKeys.allowAnonymous=true to publish the GPU pods without keys, networkPolicy.clients deciding who reaches them" $keys.secretName) -}}
{{- else if not $keys.allowAnonymous -}}
{{- fail "target gpu has no proxy to check inference keys (NVIDIA's image, no nginx): set apiKeys.allowAnonymous=true to publish it without keys, networkPolicy.clients deciding who reaches it" -}}
{{- end -}}
{{- else if not (or $keys.secretName $keys.allowAnonymous) -}}
{{- fail "the pods are published to the cluster (TRITON_BIND_ADDRESS=0.0.0.0) with no inference keys: set apiKeys.secretName to an existing Secret holding the keys file (`<name> <key>` per line, deploy/README.md), or apiKeys.allowAnonymous=true to publish inference to anyone the NetworkPolicy lets in" -}}
{{- end -}}
{{- end -}}

{{/* The fence settings: the CPU image's nginx reads them at container start
(src/resnet_triton/serving/fence.py); on gpu only the opt-out, which serve needs to
start published with no proxy in front (fence.check_unfenced). */}}
{{- define "resnet-triton.fenceEnv" -}}
{{- if .Values.apiKeys.secretName }}
- {name: RESNET_TRITON_API_KEYS_FILE, value: /run/secrets/resnet-triton/api-keys}
{{- else }}
- {name: RESNET_TRITON_ALLOW_ANONYMOUS, value: "1"}
{{- end }}
{{- if eq .Values.target "cpu" }}
- {name: RESNET_TRITON_RATE_LIMIT, value: {{ .Values.rateLimit.requestsPerSecond | int64 | quote }}}
- {name: RESNET_TRITON_RATE_BURST, value: {{ .Values.rateLimit.burst | int64 | quote }}}
{{- end -}}
{{- end -}}
