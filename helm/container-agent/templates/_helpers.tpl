{{/*
Chart name, truncated to 63 chars (DNS label limit).
*/}}
{{- define "container-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 chars.
If the release name already contains the chart name it is used as is.
*/}}
{{- define "container-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "container-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "container-agent.labels" -}}
helm.sh/chart: {{ include "container-agent.chart" . }}
{{ include "container-agent.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable on the DaemonSet: never add to these).
*/}}
{{- define "container-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "container-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "container-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "container-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "container-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
Is the chart in files mode (json-file logs read from the node's container directory)?
Returns "true" or "".
*/}}
{{- define "container-agent.filesMode" -}}
{{- if eq .Values.mode "files" }}true{{ end }}
{{- end }}

{{/*
The agent container's securityContext: .Values.securityContext, with uid/gid 0 in files
mode (json-file logs are root's, 0640). Capabilities, read-only root, no privilege
escalation and seccomp stay as given.
*/}}
{{- define "container-agent.securityContext" -}}
{{- $sc := deepCopy .Values.securityContext }}
{{- if include "container-agent.filesMode" . }}
{{- $_ := set $sc "runAsUser" 0 }}
{{- $_ := set $sc "runAsGroup" 0 }}
{{- $_ := set $sc "runAsNonRoot" false }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/*
The pod's securityContext: .Values.podSecurityContext; in api mode the engine socket's
group (engineSocket.groupId) is added to supplementalGroups and is the fsGroup unless one
is given.
*/}}
{{- define "container-agent.podSecurityContext" -}}
{{- $psc := deepCopy (.Values.podSecurityContext | default dict) }}
{{- $gid := .Values.engineSocket.groupId }}
{{- if and (not (include "container-agent.filesMode" .)) (not (kindIs "invalid" $gid)) }}
{{- $groups := list (int64 $gid) }}
{{- range ($psc.supplementalGroups | default list) }}
{{- $groups = append $groups (int64 .) }}
{{- end }}
{{- $_ := set $psc "supplementalGroups" (uniq $groups) }}
{{- if not (hasKey $psc "fsGroup") }}
{{- $_ := set $psc "fsGroup" (int64 $gid) }}
{{- end }}
{{- end }}
{{- if $psc }}
{{- toYaml $psc }}
{{- end }}
{{- end }}

{{/*
The agent's config (the ConfigMap's config.yaml): .Values.config, with the keys that must
match the mounts filled in when not set (engine.host, logs.source, logs.containers_dir,
stats.source, stats.cgroup_root). Fails on a logs/stats source the pod cannot serve.
*/}}
{{- define "container-agent.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $files := include "container-agent.filesMode" . }}
{{- $engine := get $cfg "engine" | default dict }}
{{- if not (hasKey $engine "host") }}
{{- $_ := set $engine "host" (printf "unix://%s" .Values.engineSocket.mountPath) }}
{{- end }}
{{- $_ := set $cfg "engine" $engine }}
{{- $logs := get $cfg "logs" | default dict }}
{{- if $files }}
{{- $source := get $logs "source" | default "files" }}
{{- if not (has $source (list "files" "auto")) }}
{{- fail (printf "config.logs.source is %q but mode is files: use files or auto (or mode: api)" $source) }}
{{- end }}
{{- $_ := set $logs "source" $source }}
{{- if not (hasKey $logs "containers_dir") }}
{{- $_ := set $logs "containers_dir" .Values.containersDir.mountPath }}
{{- end }}
{{- else }}
{{- $source := get $logs "source" | default "api" }}
{{- if ne $source "api" }}
{{- fail (printf "config.logs.source is %q but mode is api: the pod does not mount the node's container directory; set mode: files to read json-file logs from disk" $source) }}
{{- end }}
{{- $_ := set $logs "source" "api" }}
{{- end }}
{{- $_ := set $cfg "logs" $logs }}
{{- $stats := get $cfg "stats" | default dict }}
{{- if .Values.hostCgroup.enabled }}
{{- if not (hasKey $stats "source") }}
{{- $_ := set $stats "source" "auto" }}
{{- end }}
{{- if not (hasKey $stats "cgroup_root") }}
{{- $_ := set $stats "cgroup_root" .Values.hostCgroup.mountPath }}
{{- end }}
{{- else }}
{{- $source := get $stats "source" | default "api" }}
{{- if ne $source "api" }}
{{- fail (printf "config.stats.source is %q but hostCgroup.enabled is false: the pod does not mount the node's cgroups; set hostCgroup.enabled: true" $source) }}
{{- end }}
{{- $_ := set $stats "source" "api" }}
{{- end }}
{{- $_ := set $cfg "stats" $stats }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Seconds in a Prometheus duration restricted to one number and one unit (s, m, h), as the
schema allows for prometheusRule.alerts.logReadLag.recentLinesWindow.
*/}}
{{- define "container-agent.durationSeconds" -}}
{{- $n := regexFind "^[0-9]+" . | atoi }}
{{- $unit := trimPrefix (toString $n) . }}
{{- $mult := dict "s" 1 "m" 60 "h" 3600 }}
{{- mul $n (get $mult $unit) }}
{{- end }}

{{/*
PromQL label matchers selecting the agent's series (no braces).
*/}}
{{- define "container-agent.ruleSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q,namespace=%q" .Release.Name .Release.Namespace) }}
{{- end }}
