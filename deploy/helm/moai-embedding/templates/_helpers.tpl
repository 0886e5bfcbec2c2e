{{/* Names, labels and the pieces both Deployments (and the test Pod) share. */}}

{{- define "moai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels that select a component's pods: (dict "root" $ "component" "triton"|"gateway"). */}}
{{- define "moai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moai.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "moai.labels" -}}
{{ include "moai.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* The headless Service's name and the gRPC target the gateway resolves: one address per Triton pod. */}}
{{- define "moai.tritonHeadless" -}}
{{ include "moai.fullname" . }}-triton-headless
{{- end }}

{{- define "moai.tritonTarget" -}}
dns:///{{ include "moai.tritonHeadless" . }}.{{ .Release.Namespace }}.svc.cluster.local:8001
{{- end }}

{{/* The gateway's termination grace: longer than its preStop sleep and drain, or the kubelet kills
requests the drain would have finished. */}}
{{- define "moai.gatewayGrace" -}}
{{- $g := .Values.gateway }}
{{- $floor := add (int $g.preStopSleepSeconds) (int (ceil $g.drainTimeoutSeconds)) }}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds }}
{{- add $floor 5 }}
{{- else if le (int $g.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + drainTimeoutSeconds (%v)" $g.terminationGracePeriodSeconds $floor) }}
{{- else }}
{{- $g.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The model repository as a volume named "repository" (pvc, or an emptyDir an init container fills). */}}
{{- define "moai.repositoryVolume" -}}
{{- $repo := .Values.modelRepository }}
- name: repository
{{- if eq $repo.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $repo.pvc.claimName }}
    readOnly: true
{{- else if eq $repo.source "initCopy" }}
  emptyDir:
    sizeLimit: {{ $repo.initCopy.sizeLimit }}
{{- else }}
{{- fail (printf "modelRepository.source must be pvc or initCopy, not %q" $repo.source) }}
{{- end }}
{{- end }}

{{- define "moai.repositoryMount" -}}
- name: repository
  mountPath: {{ .Values.modelRepository.mountPath }}
{{- if eq .Values.modelRepository.source "pvc" }}
  readOnly: true
{{- with .Values.modelRepository.pvc.subPath }}
  subPath: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The init container that copies the repository in (source: initCopy). */}}
{{- define "moai.repositoryInit" -}}
{{- if eq .Values.modelRepository.source "initCopy" }}
initContainers:
  - name: copy-repository
    image: {{ .Values.modelRepository.initCopy.image }}
    command: {{ toJson .Values.modelRepository.initCopy.command }}
    env:
      - name: MOAI_MODEL_REPOSITORY
        value: {{ .Values.modelRepository.mountPath }}
      {{- with .Values.modelRepository.initCopy.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext:
      {{- include "moai.containerSecurity" true | nindent 6 }}
    volumeMounts:
      - name: repository
        mountPath: {{ .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}

{{/* A container's securityContext; the argument: whether its root filesystem is read-only. */}}
{{- define "moai.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ . }}
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "moai.podSecurity" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- toYaml . | nindent 0 }}
{{- end }}

{{/* Replicas spread over nodes (and zones): (dict "root" $ "component" NAME). */}}
{{- define "moai.topologySpread" -}}
{{- $spread := .root.Values.topologySpread }}
{{- if $spread.enabled }}
topologySpreadConstraints:
{{- range $key := compact (list "kubernetes.io/hostname" $spread.zoneKey) }}
  - maxSkew: {{ $spread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "moai.selectorLabels" $ | nindent 8 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret holding the gateway's keys: the chart's own (apiKeys.create) or one that exists. */}}
{{- define "moai.apiKeySecret" -}}
{{- if .Values.apiKeys.create }}
{{- include "moai.fullname" . }}-api-keys
{{- else }}
{{- required "apiKeys.existingSecret (or apiKeys.create with apiKeys.keys, or apiKeys.enabled=false)" .Values.apiKeys.existingSecret }}
{{- end }}
{{- end }}
