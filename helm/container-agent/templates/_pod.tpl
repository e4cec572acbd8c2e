{{/*
Pod spec of the agent, included by daemonset.yaml.
*/}}
{{- define "container-agent.pod" -}}
serviceAccountName: {{ include "container-agent.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
containers:
  - name: {{ .Chart.Name }}
    image: {{ include "container-agent.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- with .Values.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    env:
      - name: CONTAINER_AGENT_HOSTNAME
        valueFrom:
          fieldRef:
            fieldPath: spec.nodeName
      {{- with .Values.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: metrics
        containerPort: {{ .Values.metricsPort }}
        protocol: TCP
    {{- if .Values.probes.enabled }}
    {{- with .Values.probes.liveness }}
    livenessProbe:
      httpGet:
        path: {{ .path }}
        port: metrics
      initialDelaySeconds: {{ .initialDelaySeconds }}
      periodSeconds: {{ .periodSeconds }}
      timeoutSeconds: {{ .timeoutSeconds }}
      failureThreshold: {{ .failureThreshold }}
    {{- end }}
    {{- with .Values.probes.readiness }}
    readinessProbe:
      httpGet:
        path: {{ .path }}
        port: metrics
      initialDelaySeconds: {{ .initialDelaySeconds }}
      periodSeconds: {{ .periodSeconds }}
      timeoutSeconds: {{ .timeoutSeconds }}
      failureThreshold: {{ .failureThreshold }}
    {{- end }}
    {{- end }}
    {{- with .Values.securityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: config
        mountPath: /etc/container-agent
        readOnly: true
      - name: state
        mountPath: {{ .Values.state.mountPath }}
      {{- if .Values.tmpVolume.enabled }}
      - name: tmp
        mountPath: /tmp
      {{- end }}
      {{- range .Values.hostPaths }}
      - name: {{ .name }}
        mountPath: {{ .mountPath }}
        readOnly: {{ .readOnly | default false }}
      {{- end }}
      {{- with .Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "container-agent.fullname" . }}
  - name: state
    {{- if eq .Values.state.type "hostPath" }}
    hostPath:
      path: {{ .Values.state.hostPath }}
      {{- with .Values.state.hostPathType }}
      type: {{ . }}
      {{- end }}
    {{- else if eq .Values.state.type "emptyDir" }}
    emptyDir:
      {{- toYaml (.Values.state.emptyDir | default dict) | nindent 6 }}
    {{- else }}
    {{- fail (printf "state.type must be \"hostPath\" or \"emptyDir\", got %q" .Values.state.type) }}
    {{- end }}
  {{- if .Values.tmpVolume.enabled }}
  - name: tmp
    emptyDir:
      {{- with .Values.tmpVolume.sizeLimit }}
      sizeLimit: {{ . }}
      {{- end }}
  {{- end }}
  {{- range .Values.hostPaths }}
  - name: {{ .name }}
    hostPath:
      path: {{ .hostPath }}
      {{- with .type }}
      type: {{ . }}
      {{- end }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
