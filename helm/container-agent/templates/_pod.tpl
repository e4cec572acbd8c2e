{{/*
Pod spec of the agent, included by daemonset.yaml.

api mode (default): mounts the engine socket only (plus state, config, /tmp), runs as the
image's non-root uid with the socket's group. files mode: also mounts the node's
container directory read-only and runs as uid 0. Both: every capability dropped,
read-only root filesystem, no privilege escalation, seccomp RuntimeDefault.
*/}}
{{- define "container-agent.pod" -}}
{{- $sc := include "container-agent.securityContext" . | fromYaml -}}
{{- $files := include "container-agent.filesMode" . -}}
serviceAccountName: {{ include "container-agent.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with include "container-agent.podSecurityContext" . }}
securityContext:
  {{- . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- if and (eq .Values.state.type "hostPath") .Values.state.initChown.enabled }}
initContainers:
  # The kubelet creates a hostPath directory as root: give the state directory to the
  # agent's user before it starts. Root, but with CHOWN as its only capability.
  - name: state-owner
    image: {{ include "container-agent.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      - chown
      - -R
      - -h
      - {{ printf "%d:%d" (int64 $sc.runAsUser) (int64 (hasKey $sc "runAsGroup" | ternary $sc.runAsGroup $sc.runAsUser)) | quote }}
      - {{ .Values.state.mountPath | quote }}
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      allowPrivilegeEscalation: false
      privileged: false
      readOnlyRootFilesystem: true
      capabilities:
        drop:
          - ALL
        add:
          - CHOWN
      seccompProfile:
        type: RuntimeDefault
    {{- with .Values.state.initChown.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    volumeMounts:
      - name: state
        mountPath: {{ .Values.state.mountPath }}
{{- end }}
containers:
  - name: {{ .Chart.Name }}
    image: {{ include "container-agent.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    {{- with .Values.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    # Relative paths in the config (e.g. ./var/dead-letter/) land on the state volume.
    workingDir: {{ .Values.state.mountPath }}
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
    securityContext:
      {{- toYaml $sc | nindent 6 }}
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
      # Root-equivalent on the node (see the chart's README). A read-only mount would
      # not restrict the API: connecting to a socket needs write access.
      - name: docker-socket
        mountPath: {{ .Values.engineSocket.mountPath }}
      {{- if $files }}
      - name: docker-containers
        mountPath: {{ .Values.containersDir.mountPath }}
        readOnly: true
      {{- end }}
      {{- if .Values.hostCgroup.enabled }}
      - name: host-cgroup
        mountPath: {{ .Values.hostCgroup.mountPath }}
        readOnly: true
      {{- end }}
      {{- range .Values.extraHostPaths }}
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
    {{- else }}
    emptyDir:
      {{- toYaml (.Values.state.emptyDir | default dict) | nindent 6 }}
    {{- end }}
  {{- if .Values.tmpVolume.enabled }}
  - name: tmp
    emptyDir:
      {{- with .Values.tmpVolume.sizeLimit }}
      sizeLimit: {{ . }}
      {{- end }}
  {{- end }}
  # "Socket" makes the pod fail to start on nodes without Docker instead of letting the
  # kubelet create an empty directory at that path.
  - name: docker-socket
    hostPath:
      path: {{ .Values.engineSocket.hostPath }}
      type: Socket
  {{- if $files }}
  - name: docker-containers
    hostPath:
      path: {{ .Values.containersDir.hostPath }}
      type: Directory
  {{- end }}
  {{- if .Values.hostCgroup.enabled }}
  - name: host-cgroup
    hostPath:
      path: {{ .Values.hostCgroup.hostPath }}
      type: Directory
  {{- end }}
  {{- range .Values.extraHostPaths }}
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
