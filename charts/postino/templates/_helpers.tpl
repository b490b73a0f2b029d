{{- define "postino.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "postino.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "service" name) */}}
{{- define "postino.componentLabels" -}}
{{ include "postino.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "postino.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "postino.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "postino.adminSecret" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "postino.fullname" .)) -}}
{{- end -}}

{{/* The Secret holding the NATS user and password (keys `user`, `password`), or '' when none. */}}
{{- define "postino.natsAuthSecret" -}}
{{- if .Values.nats.auth.existingSecret -}}
{{- .Values.nats.auth.existingSecret -}}
{{- else if .Values.nats.embedded.enabled -}}
{{- printf "%s-nats-auth" (include "postino.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The merged settings of one service: defaults, then services.<name>. (dict "root" $ "service" name) */}}
{{- define "postino.serviceValues" -}}
{{- $own := index .root.Values.services .service | default dict -}}
{{- toYaml (mustMergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $own)) -}}
{{- end -}}

{{- define "postino.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- required "tls.existingSecret is required with tls.mode=secret" .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "postino.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "postino.natsUrl" -}}
{{- if .Values.nats.embedded.enabled -}}
{{- printf "nats://%s-nats:4222" (include "postino.fullname" .) -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* Seconds a pod gets on SIGTERM: the services' drain plus the margin. */}}
{{- define "postino.terminationGrace" -}}
{{- add (int .Values.shutdownGraceSeconds) (int .Values.terminationGraceMargin) -}}
{{- end -}}

{{/* The JetStream stream a KEDA-scaled consumer reads (services/core/nats.ts CONSUMERS). */}}
{{- define "postino.consumerStream" -}}
{{- get (dict "router" "INGRESS" "delivery" "OUTBOUND" "mailbox-store" "LOCAL") . -}}
{{- end -}}

{{/* Environment variables of the port each named container port listens on. */}}
{{- define "postino.portEnv" -}}
{{- get (dict "smtp" "SMTP_PORT" "submission" "SUBMISSION_PORT" "smtps" "SMTPS_PORT" "imap" "IMAP_PORT" "imaps" "IMAPS_PORT" "pop3" "POP3_PORT" "pop3s" "POP3S_PORT") . -}}
{{- end -}}
