{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "trustgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: the release name, plus the chart name when the release name
does not already contain it. Truncated to 63 characters (DNS label).
*/}}
{{- define "trustgate.fullname" -}}
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

{{- define "trustgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trustgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trustgate.labels" -}}
helm.sh/chart: {{ include "trustgate.chart" . }}
{{ include "trustgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: admission-webhook
app.kubernetes.io/part-of: trustgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "trustgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trustgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trustgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Lease the replicas compete for; only the holder writes status and runs the audit. */}}
{{- define "trustgate.leaseName" -}}
{{- printf "%s-leader" (include "trustgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding tls.crt and tls.key, whatever the certificate mode. */}}
{{- define "trustgate.tlsSecretName" -}}
{{- $mode := .Values.certificates.mode }}
{{- if eq $mode "existingSecret" }}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret: name a kubernetes.io/tls Secret in the release namespace" .Values.certificates.existingSecret.name }}
{{- else if eq $mode "certManager" }}
{{- printf "%s-certmanager-tls" (include "trustgate.fullname" .) }}
{{- else }}
{{- printf "%s-tls" (include "trustgate.fullname" .) }}
{{- end }}
{{- end }}

{{/* DNS names the API server may use to reach the Service. */}}
{{- define "trustgate.dnsNames" -}}
{{- $svc := include "trustgate.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
The chart-generated CA and serving certificate (mode auto), as a dict with keys ca, crt, key
(PEM). Generated once per render and memoized, so the Secret and the webhook's caBundle agree;
on upgrade the existing Secret is read back with lookup and kept, so the CA does not change
under a running API server.
*/}}
{{- define "trustgate.autoCerts" -}}
{{- if not (hasKey .Values.certificates.auto "_generated") }}
{{- $secretName := include "trustgate.tlsSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $certs := dict }}
{{- if and $existing $existing.data (hasKey $existing.data "tls.crt") (hasKey $existing.data "tls.key") (hasKey $existing.data "ca.crt") }}
{{- $_ := set $certs "ca" (index $existing.data "ca.crt" | b64dec) }}
{{- $_ := set $certs "crt" (index $existing.data "tls.crt" | b64dec) }}
{{- $_ := set $certs "key" (index $existing.data "tls.key" | b64dec) }}
{{- else }}
{{- $days := int .Values.certificates.auto.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "trustgate.fullname" .)) $days }}
{{- $dnsNames := include "trustgate.dnsNames" . | fromJsonArray }}
{{- $cert := genSignedCert (index $dnsNames 2) nil $dnsNames $days $ca }}
{{- $_ := set $certs "ca" $ca.Cert }}
{{- $_ := set $certs "crt" $cert.Cert }}
{{- $_ := set $certs "key" $cert.Key }}
{{- end }}
{{- $_ := set .Values.certificates.auto "_generated" $certs }}
{{- end }}
{{- toJson (get .Values.certificates.auto "_generated") }}
{{- end }}

{{/* caBundle for the webhook configuration (base64 PEM); empty for certManager (injected). */}}
{{- define "trustgate.caBundle" -}}
{{- $mode := .Values.certificates.mode }}
{{- if eq $mode "auto" }}
{{- (include "trustgate.autoCerts" . | fromJson).ca | b64enc }}
{{- else if eq $mode "existingSecret" }}
{{- $_ := include "trustgate.tlsSecretName" . }}{{/* the name is asked for first */}}
{{- $ca := required "certificates.existingSecret.caBundle is required when certificates.mode is existingSecret: give the PEM (or base64 PEM) of the CA that signed the Secret's certificate" .Values.certificates.existingSecret.caBundle }}
{{- if contains "-----BEGIN" $ca }}
{{- $ca | b64enc }}
{{- else }}
{{- $ca | trim }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespaces the webhook never sees: always the release namespace (trustgate must be able to
start its own Pods), kube-system unless explicitly turned off, and webhook.excludedNamespaces.
*/}}
{{- define "trustgate.excludedNamespaces" -}}
{{- $names := list .Release.Namespace }}
{{- if .Values.webhook.excludeKubeSystem }}
{{- $names = append $names "kube-system" }}
{{- end }}
{{- $names = concat $names (.Values.webhook.excludedNamespaces | default list) }}
{{- $names | uniq | toJson }}
{{- end }}

{{/*
PromQL label matchers that pick this release's series: those of the chart's ServiceMonitor
(Prometheus sets job to the Service's name) unless metrics.selector says otherwise.
*/}}
{{- define "trustgate.metricsSelector" -}}
{{- if .Values.metrics.selector }}
{{- .Values.metrics.selector }}
{{- else }}
{{- printf "namespace=%q,job=%q" .Release.Namespace (include "trustgate.fullname" .) }}
{{- end }}
{{- end }}
