{{/* Names, labels and the Secrets the Deployment reads. */}}

{{- define "module-controller.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release name alone when it already says module-controller, else release-chart. */}}
{{- define "module-controller.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "module-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "module-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "module-controller.labels" -}}
{{ include "module-controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "module-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "module-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "module-controller.mqttSecretName" -}}
{{- default (printf "%s-mqtt" (include "module-controller.fullname" .)) .Values.mqtt.existingSecret }}
{{- end }}

{{/* Where the MQTT TLS Secret is mounted; MQTT_*_PATH point at files in here. */}}
{{- define "module-controller.tlsDir" -}}
/etc/module-controller/mqtt-tls
{{- end }}

{{/* Where the kubelet proxy's certificate and client CA are mounted. */}}
{{- define "module-controller.kubeletProxyTlsDir" -}}
/etc/module-controller/kubelet-proxy-tls
{{- end }}

{{- define "module-controller.kubeletProxyClientCaDir" -}}
/etc/module-controller/kubelet-proxy-client-ca
{{- end }}
