{{/* Names, labels and shared pod fragments. */}}
{{- define "quotaflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quotaflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quotaflow
{{- end -}}

{{/* selector labels: call with (dict "root" $ "component" "ingress") */}}
{{- define "quotaflow.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "quotaflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* The slim edge image (Dockerfile target `edge`: the quotaflow-edge distribution). */ -}}
{{- define "quotaflow.edgeImage" -}}
{{ .Values.edgeSidecar.image.repository }}:{{ .Values.edgeSidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "quotaflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "quotaflow.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "quotaflow.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "quotaflow.fullname" .)) }}
{{- end -}}

{{- define "quotaflow.tenantsSecretName" -}}
{{ .Values.tenants.existingSecret | default (printf "%s-tenants" (include "quotaflow.fullname" .)) }}
{{- end -}}

{{/* "true" when tenants come from a file rather than the tenants topic. */}}
{{- define "quotaflow.tenantsFromFile" -}}
{{- if or .Values.tenants.existingSecret .Values.tenants.json }}true{{ end -}}
{{- end -}}

{{/* One variable from the chart's (or the operator's) Secret:
     (dict "root" $ "key" "QUOTAFLOW_PUSH_SIGNING_KEYS" "optional" false) */}}
{{- define "quotaflow.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "quotaflow.secretName" .root }}
      key: {{ .key }}
      optional: {{ .optional }}
{{- end -}}

{{/* The keyring, for the components that use tenants' secrets (ingress: webhook secrets;
     worker: Stripe API keys; admin): optional with a tenants file. Pushers never get it. */}}
{{- define "quotaflow.keyringEnv" -}}
{{ include "quotaflow.secretEnv" (dict "root" . "key" "QUOTAFLOW_KEYRING" "optional" (not (empty (include "quotaflow.tenantsFromFile" .)))) }}
{{- end -}}

{{/* Environment every component that reads tenants gets: the public tenants keys (every
     tenant record is signed) or the tenants file, then extraEnv. */}}
{{- define "quotaflow.commonEnv" -}}
{{- if include "quotaflow.tenantsFromFile" . }}
- name: QUOTAFLOW_TENANTS_FILE
  value: /etc/quotaflow/tenants/tenants.json
{{- end }}
- name: QUOTAFLOW_TENANT_VERIFY_KEYS
  value: {{ .Values.publicKeys.tenants | default list | toJson | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "quotaflow.envFrom" -}}
- configMapRef:
    name: {{ include "quotaflow.fullname" . }}-config
{{- end -}}

{{/* Volumes every component mounts: a writable /tmp, and the tenants file if one is used. */}}
{{- define "quotaflow.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if include "quotaflow.tenantsFromFile" . }}
- name: tenants
  secret:
    secretName: {{ include "quotaflow.tenantsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "quotaflow.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "quotaflow.tenantsFromFile" . }}
- name: tenants
  mountPath: /etc/quotaflow/tenants
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod annotations that roll pods when configuration or secrets change. */}}
{{- define "quotaflow.checksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}
