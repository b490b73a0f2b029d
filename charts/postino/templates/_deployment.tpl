{{/* One service's Deployment: (dict "root" $ "name" name "svc" mergedValues "extraEnv" list "operator" bool) */}}
{{- define "postino.deployment" -}}
{{- $ := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "postino.fullname" $ }}-{{ $name }}
  labels:
    {{- include "postino.componentLabels" (dict "root" $ "service" $name) | nindent 4 }}
spec:
  {{- if not (or $svc.autoscaling.enabled (dig "keda" "enabled" false $svc)) }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "postino.selector" (dict "root" $ "service" $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "postino.selector" (dict "root" $ "service" $name) | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") $ | sha256sum }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "postino.fullname" $ }}-{{ $name }}
      automountServiceAccountToken: {{ .operator | default false }}
      # SHUTDOWN_GRACE plus a margin: the process drains, then exits before the kubelet's SIGKILL.
      terminationGracePeriodSeconds: {{ include "postino.terminationGrace" $ }}
      securityContext:
        {{- toYaml $.Values.podSecurityContext | nindent 8 }}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $svc.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $svc.topologySpread.keys }}
        - maxSkew: 1
          topologyKey: {{ . }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "postino.selector" (dict "root" $ "service" $name) | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "postino.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args: ["run", {{ $name | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "postino.fullname" $ }}
          env:
            - name: POSTINO_NODE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- if or (eq $name "admin") .operator }}
            - name: ADMIN_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ include "postino.adminSecret" $ }}
                  key: token
            {{- end }}
            {{- with include "postino.natsAuthSecret" $ }}
            - name: NATS_USER
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: user
            - name: NATS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: password
            {{- end }}
            {{- if $.Values.redis.existingSecret }}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef:
                  name: {{ $.Values.redis.existingSecret }}
                  key: {{ $.Values.redis.existingSecretKey }}
            {{- end }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- range $k, $v := $svc.env }}
            - name: {{ $k }}
              value: {{ $v | quote }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $.Values.httpPort }}
            {{- range $pname, $port := $svc.ports }}
            - name: {{ $pname }}
              containerPort: {{ $port }}
            {{- end }}
          startupProbe:
            httpGet: { path: /healthz, port: http }
            periodSeconds: 2
            failureThreshold: 60
          readinessProbe:
            httpGet: { path: /readyz, port: http }
            periodSeconds: 5
          livenessProbe:
            httpGet: { path: /healthz, port: http }
            periodSeconds: 10
            failureThreshold: 6
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $.Values.securityContext | nindent 12 }}
          volumeMounts:
            # The only writable paths: the data folder (self-signed TLS pair, scratch) and /tmp.
            - { name: data, mountPath: /data }
            - { name: tmp, mountPath: /tmp }
            {{- if ne $.Values.tls.mode "none" }}
            - { name: tls, mountPath: /etc/postino/tls, readOnly: true }
            {{- end }}
            {{- if $.Values.nats.tls.caSecret }}
            - { name: nats-ca, mountPath: /etc/postino/nats-ca, readOnly: true }
            {{- end }}
            {{- if $.Values.redis.tls.caSecret }}
            - { name: redis-ca, mountPath: /etc/postino/redis-ca, readOnly: true }
            {{- end }}
      volumes:
        - name: data
          emptyDir: { sizeLimit: 256Mi }
        - name: tmp
          emptyDir: { medium: Memory, sizeLimit: 64Mi }
        {{- if ne $.Values.tls.mode "none" }}
        - name: tls
          secret:
            secretName: {{ include "postino.tlsSecret" $ }}
        {{- end }}
        {{- with $.Values.nats.tls.caSecret }}
        - name: nats-ca
          secret:
            secretName: {{ . }}
        {{- end }}
        {{- with $.Values.redis.tls.caSecret }}
        - name: redis-ca
          secret:
            secretName: {{ . }}
        {{- end }}
{{- end -}}
