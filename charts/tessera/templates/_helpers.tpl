{{/*
Labels Helm adds to every object's metadata on top of those manifests/ has.
Pod template labels stay exactly as in manifests/ (they are the selectors).
*/}}
{{- define "tessera.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tessera.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* The service account name the admission policy and RBAC bind. */}}
{{- define "tessera.devicePluginUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:tessera-device-plugin
{{- end }}

{{- define "tessera.validate" -}}
{{- if and (gt (int .Values.scheduler.replicas) 1) (not .Values.scheduler.leaderElection.enabled) }}
{{- fail "scheduler.replicas > 1 needs scheduler.leaderElection.enabled=true: two schedulers without a leader would place the same gangs twice" }}
{{- end }}
{{- $s := .Values.devicePlugin.sharing }}
{{- if not (has $s.strategy (list "timeslice" "mps" "mig")) }}
{{- fail (printf "devicePlugin.sharing.strategy: %q is not one of timeslice, mps, mig" $s.strategy) }}
{{- end }}
{{- if eq $s.strategy "mig" }}
{{- if or $s.slicesPerGPU $s.sliceMemoryMiB }}
{{- fail "devicePlugin.sharing: with strategy mig set neither slicesPerGPU nor sliceMemoryMiB (a slice is a MIG device); use --set devicePlugin.sharing.slicesPerGPU=0" }}
{{- end }}
{{- else if and $s.slicesPerGPU $s.sliceMemoryMiB }}
{{- fail "devicePlugin.sharing: set slicesPerGPU or sliceMemoryMiB, not both (set the other to 0)" }}
{{- else if not (or $s.slicesPerGPU $s.sliceMemoryMiB) }}
{{- fail "devicePlugin.sharing: set slicesPerGPU or sliceMemoryMiB" }}
{{- end }}
{{- end }}
