{{/* Chart name, truncated to a DNS label. */}}
{{- define "metacache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it holds it. */}}
{{- define "metacache.fullname" -}}
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

{{- define "metacache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "metacache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metacache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "metacache.labels" -}}
helm.sh/chart: {{ include "metacache.chart" . }}
{{ include "metacache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "metacache.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
One TOML value. Strings go through toJson: a JSON string is a valid TOML basic string.
Numbers arrive as float64 (values pass through JSON); the schema allows only integers.
*/}}
{{- define "metacache.tomlValue" -}}
{{- if kindIs "bool" . }}{{ . }}
{{- else if kindIs "slice" . }}{{ toJson . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ int64 . }}
{{- else }}{{ toString . | toJson }}
{{- end }}
{{- end }}

{{/*
The settings file: every section of .Values.config, scalar keys first, then its sub-tables
(kafka.client, whose dotted librdkafka names are quoted), then http.listen and
http.probe_listen.
*/}}
{{- define "metacache.configToml" -}}
# metacache settings, rendered by the Helm chart from .Values.config.
# Secrets are not here: they are files mounted from Secrets (named below), or come from
# METACACHE__* environment variables.
{{- $config := include "metacache.config" . | fromJson }}
{{- range $section, $settings := $config }}
{{- if ne $section "http" }}

[{{ $section }}]
{{- range $key, $value := $settings }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ include "metacache.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := $settings }}
{{- if kindIs "map" $value }}

[{{ $section }}.{{ $key }}]
{{- range $name, $v := $value }}
{{ $name | toJson }} = {{ include "metacache.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

[http]
listen = {{ printf "0.0.0.0:%d" (int .Values.containerPort) | toJson }}
{{- if .Values.probePort }}
probe_listen = {{ printf "0.0.0.0:%d" (int .Values.probePort) | toJson }}
{{- end }}
{{- range $key, $value := $config.http }}
{{ $key }} = {{ include "metacache.tomlValue" $value }}
{{- end }}
{{- end }}

{{/* The shutdown drain plus room for the process to exit after it. */}}
{{- define "metacache.terminationGracePeriodSeconds" -}}
{{- add (int .Values.config.shutdown.timeout_secs) 15 }}
{{- end }}

{{/* Cross-field rules the schema cannot express; the daemon would refuse these at start. */}}
{{- define "metacache.validate" -}}
{{- $c := .Values.config }}
{{- if eq $c.kafka.device_topic $c.kafka.metric_topic }}
{{- fail "config.kafka.metric_topic must differ from config.kafka.device_topic" }}
{{- end }}
{{- if and $c.writer (gt (int64 ($c.writer.retry_initial_ms | default 100)) (int64 ($c.writer.retry_max_ms | default 10000))) }}
{{- fail "config.writer.retry_initial_ms must not exceed config.writer.retry_max_ms" }}
{{- end }}
{{- if and .Values.probePort (eq (int .Values.probePort) (int .Values.containerPort)) }}
{{- fail "probePort must differ from containerPort (or be 0)" }}
{{- end }}
{{- $f := .Values.secretFiles | default dict }}
{{- if and $f.redisPassword.name (or .Values.secrets.redisPassword.name $c.redis.password_file) }}
{{- fail "give the Redis password one way: secretFiles.redisPassword, secrets.redisPassword or config.redis.password_file" }}
{{- end }}
{{- if and $f.kafkaSaslPassword.name .Values.secrets.kafkaSaslPassword.name }}
{{- fail "give the Kafka SASL password one way: secretFiles.kafkaSaslPassword or secrets.kafkaSaslPassword" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
The Secret volumes of .Values.secretFiles, as YAML: volume name -> {name, keys}.
*/}}
{{- define "metacache.secretFileVolumes" -}}
{{- $f := .Values.secretFiles | default dict }}
{{- with $f.redisPassword }}{{ if .name }}
redis-password:
  name: {{ .name }}
  keys: [{{ .key | quote }}]
{{- end }}{{ end }}
{{- with $f.kafkaSaslPassword }}{{ if .name }}
kafka-sasl-password:
  name: {{ .name }}
  keys: [{{ .key | quote }}]
{{- end }}{{ end }}
{{- with $f.redisTls }}{{ if .name }}
redis-tls:
  name: {{ .name }}
  keys: [{{ without (list .caKey .certKey .keyKey) "" | compact | join "\", \"" | printf "\"%s\"" }}]
{{- end }}{{ end }}
{{- end }}

{{/*
.Values.config with the paths of the mounted secret files filled in, as JSON.
*/}}
{{- define "metacache.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $f := .Values.secretFiles | default dict }}
{{- $dir := "/var/run/secrets/metacache" }}
{{- with $f.redisPassword }}{{ if .name }}
{{- $_ := set $config.redis "password_file" (printf "%s/redis-password/%s" $dir .key) }}
{{- end }}{{ end }}
{{- with $f.kafkaSaslPassword }}{{ if .name }}
{{- $files := $config.kafka.client_files | default dict }}
{{- $_ := set $files "sasl.password" (printf "%s/kafka-sasl-password/%s" $dir .key) }}
{{- $_ := set $config.kafka "client_files" $files }}
{{- end }}{{ end }}
{{- with $f.redisTls }}{{ if .name }}
{{- $tls := $config.redis.tls | default dict }}
{{- if .caKey }}{{ $_ := set $tls "ca_file" (printf "%s/redis-tls/%s" $dir .caKey) }}{{ end }}
{{- if .certKey }}{{ $_ := set $tls "client_cert_file" (printf "%s/redis-tls/%s" $dir .certKey) }}{{ end }}
{{- if .keyKey }}{{ $_ := set $tls "client_key_file" (printf "%s/redis-tls/%s" $dir .keyKey) }}{{ end }}
{{- $_ := set $config.redis "tls" $tls }}
{{- end }}{{ end }}
{{- $config | toJson }}
{{- end }}
