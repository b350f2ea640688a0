{{/* Names are cut at 63 characters: some Kubernetes name fields are DNS-1123 labels. */}}
{{- define "alpaca-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alpaca-operator.fullname" -}}
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

{{- define "alpaca-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alpaca-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alpaca-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "alpaca-operator.labels" -}}
helm.sh/chart: {{ include "alpaca-operator.chart" . }}
{{ include "alpaca-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: alpaca-operator
{{- end }}

{{- define "alpaca-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "alpaca-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "alpaca-operator.leaseName" -}}
{{- default (include "alpaca-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "alpaca-operator.image" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/*
The operator's settings file (operator/settings.py, OperatorSettings), built from the values.
The `settings` passthrough comes first so that the fields the chart owns always win.
*/}}
{{- define "alpaca-operator.settings" -}}
{{- $images := dict
    "generate" (include "alpaca-operator.image" (list .Values.workloads.images.generate .))
    "train" (include "alpaca-operator.image" (list .Values.workloads.images.train .))
    "serve" (include "alpaca-operator.image" (list .Values.workloads.images.serve .))
    "evaluate" (include "alpaca-operator.image" (list .Values.workloads.images.evaluate .))
    "vllm" (include "alpaca-operator.image" (list .Values.workloads.images.vllm .))
    "llamaCpp" (include "alpaca-operator.image" (list .Values.workloads.images.llamaCpp .))
    "pullPolicy" .Values.workloads.pullPolicy }}
{{- $owned := dict
    "images" $images
    "namespaces" .Values.watchNamespaces
    "gpuHourUSD" .Values.prices.gpuHourUSD
    "tokenPrices" .Values.prices.tokens
    "gpuPools" .Values.gpuPools
    "workloadServiceAccount" .Values.workloads.serviceAccountName
    "metricsPort" (ternary (int .Values.metrics.port) 0 .Values.metrics.enabled)
    "teacherHosts" (dict "allowed" .Values.teacherHosts.allowed "allowLinkLocal" .Values.teacherHosts.allowLinkLocal)
    "leaderElection" (dict
      "leaseDurationSeconds" .Values.leaderElection.leaseDurationSeconds
      "renewDeadlineSeconds" .Values.leaderElection.renewDeadlineSeconds
      "retryPeriodSeconds" .Values.leaderElection.retryPeriodSeconds) }}
{{- with .Values.queue }}{{- if .name }}
{{- $_ := set $owned "queue" (ternary (dict "name" .name "priorityClass" .priorityClass) (dict "name" .name) (ne (toString .priorityClass) "")) }}
{{- end }}{{- end }}
{{- toYaml (merge $owned (deepCopy .Values.settings)) }}
{{- end }}

{{/*
The rules the operator needs in each namespace it works in: exactly what it calls
(operator/kube.py, operator/controller.py, kopf's watches), nothing more.
*/}}
{{- define "alpaca-operator.namespacedRules" -}}
# The four kinds: kopf lists and watches them; the operator writes only their status.
- apiGroups: [alpaca.dev]
  resources: [instructdatasets, finetunes, modelservers, evaluations]
  verbs: [list, watch]
# Status is written through the subresource. `get` is there because the operator grants it to the
# workloads' Role (below), and RBAC lets nobody grant what they do not hold.
- apiGroups: [alpaca.dev]
  resources: [instructdatasets/status, finetunes/status, modelservers/status, evaluations/status]
  verbs: [get, patch]
# Children: created by name (409 is read back: ours only with our UID), watched by label.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch]
# A PyTorchJob is suspended when its budget runs out.
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [create, get, list, watch, patch]
# A FineTune with backend: trainjob runs as a Kubeflow Trainer v2 TrainJob; the same verbs
# (patch: only spec.suspend, when its budget runs out).
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs]
  verbs: [create, get, list, watch, patch]
# A ModelServer's Deployment, Service and config are server-side applied (patch; create when
# missing, which the API server checks inside the same request).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, get, list, watch, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
# A ModelServer with spec.autoscaling: its HorizontalPodAutoscaler, applied the same way; read
# back and deleted (ours only, by UID precondition) when autoscaling is turned off.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, get, patch, delete]
# A ModelServer with spec.networkPolicy: its NetworkPolicy, applied the same way.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, patch]
# The workload identity of each namespace: a ServiceAccount with a Role that may patch status only.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create]
# The Role is server-side applied, so one made by an older operator gains the grants of new kinds.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
