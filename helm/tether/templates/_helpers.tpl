{{/*
Helpers for the tether chart.

The templates used by the sidecar ("tether.sidecar.container",
"tether.sidecar.volumes", "tether.config.toml", "tether.fullname",
"tether.terminationGracePeriodSeconds") read only .Values, .Release and,
if present, .Capabilities. That way another chart that has this one as a
dependency can include them with

  (dict "Values" .Values.tether "Release" .Release "Capabilities" .Capabilities)

and get the same names as the ConfigMap and Secret this chart renders. For the
same reason the chart name is written out ("tether") instead of read from
.Chart.
*/}}

{{- define "tether.name" -}}
{{- default "tether" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: <release>-tether, or the release name if it contains "tether". */}}
{{- define "tether.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "tether" .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tether.headlessName" -}}
{{- printf "%s-headless" (include "tether.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "tether.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether.labels" -}}
helm.sh/chart: {{ include "tether.chart" . }}
{{ include "tether.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The `helm test` Pod's labels (templates/tests/check.yaml): another name, so no selector of the release matches it. */}}
{{- define "tether.checkLabels" -}}
helm.sh/chart: {{ include "tether.chart" . }}
app.kubernetes.io/name: {{ include "tether.name" . }}-check
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: check
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the Services: the chart's own pods, or sidecar.podSelector. Empty: no Services. */}}
{{- define "tether.serviceSelector" -}}
{{- if eq .Values.mode "standalone" }}
{{- include "tether.selectorLabels" . }}
{{- else if .Values.sidecar.deployment.enabled }}
{{- include "tether.selectorLabels" . }}
{{- else if .Values.sidecar.podSelector }}
{{- toYaml .Values.sidecar.podSelector }}
{{- end }}
{{- end }}

{{- define "tether.image" -}}
{{- if not .Values.image.tag }}
{{- fail "image.tag must be set (the chart does not default it from .Chart so that the sidecar templates work from another chart)" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{- define "tether.secretName" -}}
{{- default (include "tether.fullname" .) .Values.tokenSecret.existingSecret }}
{{- end }}

{{- define "tether.configMapName" -}}
{{- include "tether.fullname" . }}
{{- end }}

{{/* The journal directory: a subdirectory of the volume, away from lost+found. */}}
{{- define "tether.dataDir" -}}
{{- printf "%s/journal" (trimSuffix "/" .Values.persistence.mountPath) }}
{{- end }}

{{- define "tether.upstream" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "ws://127.0.0.1:%d" (int .Values.sidecar.backendPort) }}
{{- else }}
{{- .Values.config.server.upstream }}
{{- end }}
{{- end }}

{{/*
Duration string (humantime, as tether reads it: "20s", "2m", "1m 30s",
"500ms") to whole seconds, rounded up.
*/}}
{{- define "tether.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- if not (regexMatch "^([0-9]+ *[a-zA-Z]+ *)+$" $d) }}
{{- fail (printf "cannot read the duration %q (expected e.g. \"20s\", \"2m\", \"1m 30s\")" $d) }}
{{- end }}
{{- $ms := 0 }}
{{- range $part := regexFindAll "[0-9]+ *[a-zA-Z]+" $d -1 }}
{{- $n := regexFind "^[0-9]+" $part | atoi }}
{{- $unit := regexFind "[a-zA-Z]+$" $part }}
{{- if has $unit (list "ns" "nsec" "us" "usec") }}
{{- $ms = add $ms 1 }}
{{- else if has $unit (list "ms" "msec" "millis") }}
{{- $ms = add $ms $n }}
{{- else if has $unit (list "s" "sec" "secs" "second" "seconds") }}
{{- $ms = add $ms (mul $n 1000) }}
{{- else if has $unit (list "m" "min" "mins" "minute" "minutes") }}
{{- $ms = add $ms (mul $n 60000) }}
{{- else if has $unit (list "h" "hr" "hrs" "hour" "hours") }}
{{- $ms = add $ms (mul $n 3600000) }}
{{- else if has $unit (list "d" "day" "days") }}
{{- $ms = add $ms (mul $n 86400000) }}
{{- else }}
{{- fail (printf "unknown unit %q in the duration %q" $unit $d) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + server.shutdown_grace + margin,
or the value given, which must exceed preStop sleep + shutdown_grace. In
sidecar mode, put it on the pod that carries the sidecar.
*/}}
{{- define "tether.terminationGracePeriodSeconds" -}}
{{- $grace := include "tether.durationSeconds" (.Values.config.server.shutdown_grace | default "20s") | atoi }}
{{- $sleep := int .Values.lifecycle.preStopSleepSeconds }}
{{- $min := add $sleep $grace }}
{{- if kindIs "invalid" .Values.lifecycle.terminationGracePeriodSeconds }}
{{- add $min (int .Values.lifecycle.terminationMarginSeconds) }}
{{- else }}
{{- $given := int .Values.lifecycle.terminationGracePeriodSeconds }}
{{- if le $given $min }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + config.server.shutdown_grace (%ds), or the drain is cut short by SIGKILL" $given $sleep $grace) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/*
The keys tether.toml may hold, per section, in the order of
config/tether.toml. Keep in sync with config/tether.toml: tether rejects
unknown keys, and scripts/check-helm compares the rendered file with it.
"derived" keys are set by the chart from other values; "secret" is passed
through the environment, never the ConfigMap.
*/}}
{{- define "tether.configKeys" -}}
sections: [server, tls, limits, session, token, stamp, journal, log, cluster]
keys:
  server: [upstream, backend_connect_timeout, handshake_timeout, allowed_origins, retry_after_secs, shutdown_grace]
  tls: [cert_file, key_file, reload_interval, upstream_ca_file, upstream_client_cert_file, upstream_client_key_file]
  limits: [max_message_bytes, max_frame_bytes, max_header_bytes, write_buffer_bytes, max_write_buffer_bytes, read_buffer_bytes, max_sessions, max_retained_sessions, ring_bytes, replay_batch_bytes]
  session: [linger, ping_interval, ping_timeout, upstream_stall_timeout, slow_consumer, slow_consumer_lag, backend_on_restart, restart_dials_per_second, restart_dial_concurrency, restart_credential_headers, restart_keep_credentials]
  token: [identity_headers]
  stamp: [mode, json_field]
  journal: [sync, sync_interval, retention, max_session_frames, max_session_bytes, max_frame_age, disk_budget_bytes, max_batch, memtable_bytes, page_cache_bytes, commit_delay]
  log: [format, level, warn_interval]
  cluster: [forward_timeout, peer_auth_max_age]
derived:
  server.listen: "listenHost and ports.data"
  server.admin_listen: "listenHost and ports.admin"
  journal.data_dir: "persistence.mountPath (the journal is <mountPath>/journal)"
  token.secret: "tokenSecret (it is passed as TETHER_TOKEN_SECRET from a Secret)"
  cluster.mode: "cluster.enabled, mode and the replica count"
  cluster.name: "cluster.name (default <fullname>.<namespace>)"
  cluster.instance: "the pod name (TETHER_CLUSTER_INSTANCE, downward API)"
  cluster.peer_listen: "listenHost and ports.peer"
  cluster.peer_address: "the headless Service and ports.peer"
  cluster.replicas: "replicaCount"
  cluster.peers: "nothing: the chart uses statefulset or sealed mode, not static"
  cluster.advertise: "the pod IP (TETHER_CLUSTER_ADVERTISE, downward API) and ports.peer"
  cluster.members_dns: "the headless Service"
{{- end }}

{{/* Fails on a config section or key tether does not know. */}}
{{- define "tether.validateConfig" -}}
{{- $spec := fromYaml (include "tether.configKeys" .) }}
{{- $cfg := .Values.config | default dict }}
{{- if not (kindIs "map" $cfg) }}
{{- fail "config must be a map of tether.toml sections" }}
{{- end }}
{{- range $section, $table := $cfg }}
{{- if not (has $section $spec.sections) }}
{{- fail (printf "config.%s: tether has no such section (sections: %s)" $section (join ", " $spec.sections)) }}
{{- end }}
{{- if not (kindIs "invalid" $table) }}
{{- if not (kindIs "map" $table) }}
{{- fail (printf "config.%s must be a map" $section) }}
{{- end }}
{{- range $key, $value := $table }}
{{- $full := printf "%s.%s" $section $key }}
{{- if hasKey $spec.derived $full }}
{{- fail (printf "config.%s is set by the chart from %s; do not set it here" $full (get $spec.derived $full)) }}
{{- end }}
{{- if not (has $key (get $spec.keys $section)) }}
{{- fail (printf "config.%s: tether has no such key (unknown keys are an error in tether; see config/tether.toml)" $full) }}
{{- end }}
{{- if kindIs "map" $value }}
{{- fail (printf "config.%s must be a string, number, boolean or list" $full) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The tether.toml the ConfigMap holds. */}}
{{- define "tether.config.toml" -}}
{{- include "tether.validateConfig" . }}
{{- $spec := fromYaml (include "tether.configKeys" .) }}
{{- $cfg := .Values.config | default dict }}
{{- $derived := dict
      "server.listen" (printf "%s:%d" .Values.listenHost (int .Values.ports.data))
      "server.admin_listen" (printf "%s:%d" .Values.listenHost (int .Values.ports.admin))
      "server.upstream" (include "tether.upstream" .)
      "journal.data_dir" (include "tether.dataDir" .) }}
{{- $tlsPaths := fromYaml (include "tether.tlsPaths" .) | default dict }}
# tether.toml rendered by the tether Helm chart from its values (config.*).
# token.secret comes from the environment (TETHER_TOKEN_SECRET).
{{- range $section := $spec.sections }}
{{- $table := get $cfg $section | default dict }}

[{{ $section }}]
{{- if eq $section "server" }}
listen = {{ get $derived "server.listen" | toJson }}
admin_listen = {{ get $derived "server.admin_listen" | toJson }}
upstream = {{ get $derived "server.upstream" | toJson }}
{{- end }}
{{- if eq $section "journal" }}
data_dir = {{ get $derived "journal.data_dir" | toJson }}
{{- end }}
{{- if eq $section "cluster" }}
{{- $c := fromYaml (include "tether.clusterDerived" $) }}
{{- range $key := list "mode" "name" "instance" "peer_listen" "peer_address" "replicas" "peers" "advertise" "members_dns" }}
{{ $key }} = {{ get $c $key | toJson }}
{{- end }}
{{- end }}
{{- range $key := get $spec.keys $section }}
{{- if and (eq $section "tls") (hasKey $tlsPaths $key) }}
{{ $key }} = {{ get $tlsPaths $key | toJson }}
{{- else if and (ne (printf "%s.%s" $section $key) "server.upstream") (hasKey $table $key) (not (kindIs "invalid" (get $table $key))) }}
{{ $key }} = {{ get $table $key | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}

{{/* The preStop handler: native sleep (Kubernetes >= 1.30) or exec sleep. */}}
{{- define "tether.preStop" -}}
{{- $mode := .Values.lifecycle.preStopMode | default "auto" }}
{{- $seconds := int .Values.lifecycle.preStopSleepSeconds }}
{{- if eq $mode "auto" }}
{{- $mode = "exec" }}
{{- with .Capabilities }}
{{- if semverCompare ">=1.30.0-0" .KubeVersion.Version }}
{{- $mode = "sleep" }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $mode "sleep" }}
sleep:
  seconds: {{ $seconds }}
{{- else if eq $mode "exec" }}
exec:
  command: ["sleep", {{ $seconds | toString | quote }}]
{{- else }}
{{- fail (printf "lifecycle.preStopMode must be auto, sleep or exec, not %q" $mode) }}
{{- end }}
{{- end }}

{{/*
The tether container (a list item). Used by the StatefulSet and, as
"tether.sidecar.container", next to a backend container.
*/}}
{{- define "tether.container" -}}
{{- $cluster := include "tether.clusterMode" . -}}
- name: tether
  image: {{ include "tether.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- with .Values.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  args:
    - --config
    - /etc/tether/tether.toml
    {{- with .Values.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: tether-data
      containerPort: {{ int .Values.ports.data }}
      protocol: TCP
    - name: tether-admin
      containerPort: {{ int .Values.ports.admin }}
      protocol: TCP
    {{- if ne $cluster "off" }}
    - name: tether-peer
      containerPort: {{ int .Values.ports.peer }}
      protocol: TCP
    {{- end }}
  env:
    - name: TETHER_TOKEN_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ include "tether.secretName" . }}
          key: {{ .Values.tokenSecret.key }}
    {{- if eq $cluster "statefulset" }}
    # This replica's name in the cluster: the pod name, <fullname>-<ordinal>.
    - name: TETHER_CLUSTER_INSTANCE
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- else if eq $cluster "sealed" }}
    # This pod's peer address, sealed into the tokens it mints.
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: TETHER_CLUSTER_ADVERTISE
      value: {{ printf (ternary "[$(POD_IP)]:%d" "$(POD_IP):%d" (hasPrefix "[" .Values.listenHost)) (int .Values.ports.peer) | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if .Values.probes.startup.enabled }}
  startupProbe:
    httpGet:
      path: /livez
      port: tether-admin
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /livez
      port: tether-admin
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: tether-admin
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  lifecycle:
    preStop:
      {{- include "tether.preStop" . | trim | nindent 6 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tether-config
      mountPath: /etc/tether
      readOnly: true
    - name: tether-journal
      mountPath: {{ .Values.persistence.mountPath }}
    - name: tether-tmp
      mountPath: /tmp
    {{- with include "tether.tlsMounts" . | trim }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The sidecar container: the same container, upstream ws://127.0.0.1:<sidecar.backendPort>. */}}
{{- define "tether.sidecar.container" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "tether.sidecar.container needs mode: sidecar in tether's values (its upstream is ws://127.0.0.1:<sidecar.backendPort>)" }}
{{- end }}
{{- include "tether.container" . }}
{{- end }}

{{/* Volumes every tether pod needs apart from the journal: the config and /tmp. */}}
{{- define "tether.baseVolumes" -}}
- name: tether-config
  configMap:
    name: {{ include "tether.configMapName" . }}
- name: tether-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with include "tether.tlsVolumes" . | trim }}
{{ . }}
{{- end }}
{{- end }}

{{/* The volumes to add to a pod that carries the sidecar (a list). */}}
{{- define "tether.sidecar.volumes" -}}
{{- include "tether.baseVolumes" . }}
{{- $j := .Values.sidecar.journal }}
{{- if eq $j.type "emptyDir" }}
- name: tether-journal
  emptyDir:
    {{- with $j.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $j.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- else if eq $j.type "persistentVolumeClaim" }}
{{- if not $j.claimName }}
{{- fail "sidecar.journal.claimName is required when sidecar.journal.type is persistentVolumeClaim" }}
{{- end }}
- name: tether-journal
  persistentVolumeClaim:
    claimName: {{ $j.claimName }}
{{- else }}
{{- fail (printf "sidecar.journal.type must be emptyDir or persistentVolumeClaim, not %q" $j.type) }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the StatefulSet and the sidecar Deployment (not the securityContext). */}}
{{- define "tether.podSpecCommon" -}}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
# Kubernetes would otherwise inject <SERVICE>_SERVICE_HOST-style variables; one
# for a Service named like tether-server-... reads as TETHER_SERVER_* config.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "tether.terminationGracePeriodSeconds" . }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
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
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template metadata: labels and a checksum of the config so a config change rolls the pods. */}}
{{- define "tether.podMetadata" -}}
labels:
  {{- include "tether.selectorLabels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include "tether.config.toml" . | sha256sum }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Scale-out (issue 9): how this release's replicas find a session's owner, as
tether's [cluster] mode: "statefulset" (standalone: peers are
<fullname>-<ordinal>, dialed through the headless Service), "sealed" (sidecar:
the owner's pod IP is sealed in the token, membership from the headless
Service's DNS records) or "off" (one instance). cluster.enabled auto turns it
on when the chart runs more than one tether pod.
*/}}
{{- define "tether.clusterMode" -}}
{{- $c := .Values.cluster | default dict }}
{{- $enabled := $c.enabled }}
{{- if kindIs "invalid" $enabled }}{{ $enabled = "auto" }}{{ end }}
{{- $on := false }}
{{- if eq (toString $enabled) "auto" }}
{{- if eq .Values.mode "standalone" }}
{{- $on = gt (int .Values.replicaCount) 1 }}
{{- else if .Values.sidecar.deployment.enabled }}
{{- $on = gt (int .Values.sidecar.deployment.replicas) 1 }}
{{- end }}
{{- else if kindIs "bool" $enabled }}
{{- $on = $enabled }}
{{- else }}
{{- fail (printf "cluster.enabled must be auto, true or false, not %q" (toString $enabled)) }}
{{- end }}
{{- if not $on }}off{{ else if eq .Values.mode "standalone" }}statefulset{{ else }}sealed{{ end }}
{{- end }}

{{/* [cluster] name: covered by every token's MAC, so tokens of another release are refused. */}}
{{- define "tether.clusterName" -}}
{{- $c := .Values.cluster | default dict }}
{{- default (printf "%s.%s" (include "tether.fullname" .) .Release.Namespace) $c.name }}
{{- end }}

{{/* [cluster] replicas (statefulset mode): cluster.replicas, or replicaCount. */}}
{{- define "tether.clusterReplicas" -}}
{{- $c := .Values.cluster | default dict }}
{{- if kindIs "invalid" $c.replicas }}
{{- int .Values.replicaCount }}
{{- else if lt (int $c.replicas) (int .Values.replicaCount) }}
{{- fail (printf "cluster.replicas (%d) must be at least replicaCount (%d): the pods above it would count as scaled down" (int $c.replicas) (int .Values.replicaCount)) }}
{{- else }}
{{- int $c.replicas }}
{{- end }}
{{- end }}

{{/* <headless>.<namespace>.svc.<clusterDomain> */}}
{{- define "tether.headlessFQDN" -}}
{{- $c := .Values.cluster | default dict }}
{{- printf "%s.%s.svc.%s" (include "tether.headlessName" .) .Release.Namespace ($c.clusterDomain | default "cluster.local") }}
{{- end }}

{{/* The [cluster] keys the chart sets (YAML map), per mode. Per-pod values (instance, advertise) come from the environment. */}}
{{- define "tether.clusterDerived" -}}
{{- $mode := include "tether.clusterMode" . }}
{{- $peer := int .Values.ports.peer }}
mode: {{ $mode | quote }}
name: {{ ternary "tether" (include "tether.clusterName" .) (eq $mode "off") | quote }}
instance: ""
peer_listen: {{ printf "%s:%d" .Values.listenHost $peer | quote }}
{{- if eq $mode "statefulset" }}
peer_address: {{ printf "{instance}.%s:%d" (include "tether.headlessFQDN" .) $peer | quote }}
replicas: {{ include "tether.clusterReplicas" . }}
{{- else }}
peer_address: ""
replicas: 0
{{- end }}
peers: {}
advertise: ""
members_dns: {{ ternary (include "tether.headlessFQDN" .) "" (and (eq $mode "sealed") (not (empty (include "tether.serviceSelector" .)))) | quote }}
{{- end }}

{{/* Cluster mode needs one token secret that every replica reads, and more than one replica needs cluster mode. */}}
{{- define "tether.validateCluster" -}}
{{- $mode := include "tether.clusterMode" . }}
{{- $replicas := ternary (int .Values.replicaCount) (int .Values.sidecar.deployment.replicas) (eq .Values.mode "standalone") }}
{{- $chartPods := or (eq .Values.mode "standalone") .Values.sidecar.deployment.enabled }}
{{- if and (eq $mode "off") $chartPods (gt $replicas 1) }}
{{- fail (printf "%d replicas with cluster.enabled false: a resume that reaches another replica than the session's owner would get a new session (gap journal_lost). Leave cluster.enabled at auto (or true) so that replicas forward resumes to the owner." $replicas) }}
{{- end }}
{{- if and (ne $mode "off") (not (or .Values.tokenSecret.existingSecret .Values.tokenSecret.value)) }}
{{- fail "cluster mode (more than one replica, or cluster.enabled true) needs a token secret that every replica shares and that stays the same across renders: set tokenSecret.existingSecret (or tokenSecret.value). A generated one is re-generated by every `helm template` render, and replicas started before and after would refuse each other's tokens." }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (ne $mode "off") (or (hasPrefix "TETHER_CLUSTER_" (toString .name)) (eq (toString .name) "TETHER_TOKEN_SECRET")) }}
{{- fail (printf "extraEnv sets %s, which the chart sets in cluster mode (see cluster.* and tokenSecret)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
TLS material from Secrets (values tls.*), mounted read-only under
/etc/tether-tls, and the [tls] keys of tether.toml that point at it: a map
(YAML) of [tls] key -> file, holding only the keys a Secret is set for.
*/}}
{{- define "tether.tlsPaths" -}}
{{- $t := .Values.tls | default dict }}
{{- if $t.secretName }}
cert_file: /etc/tether-tls/server/tls.crt
key_file: /etc/tether-tls/server/tls.key
{{- end }}
{{- if $t.upstreamCASecret }}
upstream_ca_file: /etc/tether-tls/upstream-ca/ca.crt
{{- end }}
{{- if $t.upstreamClientSecret }}
upstream_client_cert_file: /etc/tether-tls/upstream-client/tls.crt
upstream_client_key_file: /etc/tether-tls/upstream-client/tls.key
{{- end }}
{{- end }}

{{/* The TLS Secret volumes (list items for volumes:); empty without tls.* Secrets. */}}
{{- define "tether.tlsVolumes" -}}
{{- $t := .Values.tls | default dict }}
{{- $mode := int ($t.defaultMode | default 288) }}
{{- if $t.secretName }}
- name: tether-tls
  secret:
    secretName: {{ $t.secretName }}
    defaultMode: {{ $mode }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- if $t.upstreamCASecret }}
- name: tether-upstream-ca
  secret:
    secretName: {{ $t.upstreamCASecret }}
    defaultMode: {{ $mode }}
    items:
      - key: {{ $t.upstreamCAKey | default "ca.crt" }}
        path: ca.crt
{{- end }}
{{- if $t.upstreamClientSecret }}
- name: tether-upstream-client
  secret:
    secretName: {{ $t.upstreamClientSecret }}
    defaultMode: {{ $mode }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}

{{/* Their mounts in the tether container (list items for volumeMounts:). No subPath: a rotated Secret reaches the files. */}}
{{- define "tether.tlsMounts" -}}
{{- $t := .Values.tls | default dict }}
{{- if $t.secretName }}
- name: tether-tls
  mountPath: /etc/tether-tls/server
  readOnly: true
{{- end }}
{{- if $t.upstreamCASecret }}
- name: tether-upstream-ca
  mountPath: /etc/tether-tls/upstream-ca
  readOnly: true
{{- end }}
{{- if $t.upstreamClientSecret }}
- name: tether-upstream-client
  mountPath: /etc/tether-tls/upstream-client
  readOnly: true
{{- end }}
{{- end }}

{{/* A [tls] path comes from a Secret (tls.*) or from config.tls.*, not both; upstream TLS needs a wss:// upstream. */}}
{{- define "tether.validateTLS" -}}
{{- $paths := fromYaml (include "tether.tlsPaths" .) | default dict }}
{{- $given := (.Values.config | default dict).tls | default dict }}
{{- range $key := keys $paths | sortAlpha }}
{{- if get $given $key }}
{{- fail (printf "config.tls.%s is set by the chart from a tls.* Secret; set one or the other, not both" $key) }}
{{- end }}
{{- end }}
{{- $t := .Values.tls | default dict }}
{{- if and (or $t.upstreamCASecret $t.upstreamClientSecret) (not (hasPrefix "wss://" (include "tether.upstream" .))) }}
{{- fail (printf "tls.upstreamCASecret and tls.upstreamClientSecret are for a wss:// upstream; the upstream is %s" (include "tether.upstream" .)) }}
{{- end }}
{{- end }}

{{/* Checks on values that apply in every mode. */}}
{{- define "tether.validate" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) }}
{{- fail (printf "mode must be standalone or sidecar, not %q" .Values.mode) }}
{{- end }}
{{- include "tether.validateConfig" . }}
{{- $up := toString .Values.config.server.upstream }}
{{- if and (eq .Values.mode "standalone") (not (or (hasPrefix "ws://" $up) (hasPrefix "wss://" $up))) }}
{{- fail (printf "config.server.upstream must be a ws:// or wss:// URL, not %q" $up) }}
{{- end }}
{{- include "tether.validateTLS" . }}
{{- include "tether.validateCluster" . }}
{{- with .Values.tokenSecret.value }}
{{- if lt (len .) 32 }}
{{- fail "tokenSecret.value must be at least 32 characters" }}
{{- end }}
{{- end }}
{{- if and .Values.tokenSecret.value .Values.tokenSecret.existingSecret }}
{{- fail "set tokenSecret.value or tokenSecret.existingSecret, not both" }}
{{- end }}
{{- $_ := include "tether.terminationGracePeriodSeconds" . }}
{{- end }}
