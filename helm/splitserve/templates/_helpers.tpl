{{/*
Named templates shared by the endpoint and Triton templates. Helpers that work on one component take a
dict: `dict "context" $ "component" "endpoint"` (or "triton").
*/}}

{{/* The chart name, truncated to a DNS label. */}}
{{- define "splitserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release-scoped prefix of every object name: `<release>-<chart>`, or the release name alone when it
already contains the chart name; truncated to 63 characters.
*/}}
{{- define "splitserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The name of a component's objects, `<fullname>-<component>`. The prefix is cut first so that the
component suffix always survives and the endpoint and Triton names never collide.
*/}}
{{- define "splitserve.componentName" -}}
{{- $prefix := include "splitserve.fullname" .context | trunc (int (sub 62 (len .component))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix .component -}}
{{- end -}}

{{/* The immutable labels a component's selectors match on. */}}
{{- define "splitserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "splitserve.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* The standard labels of every object; `component` may be left out for chart-wide objects. */}}
{{- define "splitserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "splitserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: splitserve
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount both pods run as. */}}
{{- define "splitserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "splitserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from `{registry, repository, tag, digest}`; the digest wins over the tag, and
`defaultTag` stands in for an empty tag. Takes `dict "image" <values> "defaultTag" <tag>`.
*/}}
{{- define "splitserve.image" -}}
{{- $ref := .image.repository -}}
{{- if .image.registry -}}
{{- $ref = printf "%s/%s" .image.registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .defaultTag .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
A number or a percentage (an IntOrString field). Values reach templates as float64, which would
print as 1e+06; this prints integers as integers and keeps strings quoted.
*/}}
{{- define "splitserve.intOrString" -}}
{{- if kindIs "string" . -}}
{{- quote . -}}
{{- else -}}
{{- int . -}}
{{- end -}}
{{- end -}}

{{/*
A Kubernetes quantity (e.g. an HPA target) from a string or a number, quoted; numbers reach templates as
float64 and print as integers.
*/}}
{{- define "splitserve.quantity" -}}
{{- if kindIs "string" . -}}
{{- quote . -}}
{{- else -}}
{{- int . | toString | quote -}}
{{- end -}}
{{- end -}}

{{/* Whether ServiceMonitors are rendered: "true" or empty. */}}
{{- define "splitserve.serviceMonitor.enabled" -}}
{{- $create := .Values.serviceMonitor.create -}}
{{- if or (eq $create "always") (and (eq $create "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end -}}
{{- end -}}

{{/* The Triton gRPC address the endpoint uses; empty selects the embedded ONNX Runtime tail. */}}
{{- define "splitserve.tritonUrl" -}}
{{- if .Values.endpoint.config.tritonUrl -}}
{{- .Values.endpoint.config.tritonUrl -}}
{{- else if .Values.triton.enabled -}}
{{- $service := include "splitserve.componentName" (dict "context" . "component" "triton") -}}
{{- printf "%s.%s.svc:%d" $service .Release.Namespace (int .Values.triton.service.ports.grpc) -}}
{{- end -}}
{{- end -}}

{{/* The endpoint's readiness probe transport after resolving `auto`: "grpc" or "http". */}}
{{- define "splitserve.endpoint.probeMode" -}}
{{- $mode := .Values.endpoint.probes.mode -}}
{{- if eq $mode "auto" -}}
{{- ternary "http" "grpc" .Values.endpoint.tls.enabled -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/* The endpoint's bundle paths, comma-separated (SPLITSERVE_CLOUD_BUNDLES). */}}
{{- define "splitserve.endpoint.bundlePaths" -}}
{{- $root := .Values.modelRepository.mountPath -}}
{{- $paths := list -}}
{{- range .Values.modelRepository.bundles -}}
{{- $paths = append $paths (printf "%s/%s" $root .) -}}
{{- end -}}
{{- join "," $paths -}}
{{- end -}}

{{/* The PodDisruptionBudget body shared by both components. Takes the component dict. */}}
{{- define "splitserve.pdb" -}}
{{- $pdb := index .context.Values .component "pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "splitserve.componentName" . }}
  namespace: {{ .context.Release.Namespace }}
  labels:
    {{- include "splitserve.labels" . | nindent 4 }}
spec:
  {{- if ne (toString $pdb.minAvailable) "" }}
  minAvailable: {{ include "splitserve.intOrString" $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ include "splitserve.intOrString" $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "splitserve.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* The ServiceMonitor body shared by both components. Takes the component dict. */}}
{{- define "splitserve.serviceMonitor" -}}
{{- $sm := .context.Values.serviceMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "splitserve.componentName" . }}
  namespace: {{ .context.Release.Namespace }}
  labels:
    {{- include "splitserve.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  namespaceSelector:
    matchNames:
      - {{ .context.Release.Namespace }}
  selector:
    matchLabels:
      {{- include "splitserve.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      scheme: http
      interval: {{ $sm.interval }}
      scrapeTimeout: {{ $sm.scrapeTimeout }}
{{- end -}}

{{/*
The pod-level fields both Deployments share: identity, pull secrets, security context and scheduling.
Takes the component dict; `extraTolerations` (a list) is appended to the component's tolerations.
*/}}
{{- define "splitserve.podSpecCommon" -}}
{{- $values := index .context.Values .component -}}
serviceAccountName: {{ include "splitserve.serviceAccountName" .context }}
automountServiceAccountToken: false
# Service links would inject <SERVICE>_PORT variables, which can collide with SPLITSERVE_CLOUD_*.
enableServiceLinks: false
{{- with .context.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ int $values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $values.podSecurityContext | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := concat $values.tolerations (default list .extraTolerations) }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The `models` volume: the claim (read-only) or an emptyDir the copy init containers fill. */}}
{{- define "splitserve.modelVolume" -}}
{{- $repo := .Values.modelRepository -}}
- name: models
{{- if eq $repo.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $repo.pvc.existingClaim }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ $repo.scratchSizeLimit }}
{{- end }}
{{- end -}}

{{/* The read-only mount of the `models` volume at the repository root. */}}
{{- define "splitserve.modelVolumeMount" -}}
{{- $repo := .Values.modelRepository -}}
- name: models
  mountPath: {{ $repo.mountPath }}
  readOnly: true
  {{- if and (eq $repo.source "pvc") $repo.pvc.subPath }}
  subPath: {{ $repo.pvc.subPath }}
  {{- end }}
{{- end -}}

{{/*
One init container per bundle that copies it into the `models` emptyDir, from the bundle image or from
object storage. Renders nothing for the `pvc` source. Takes the component dict (the component's
container security context applies).
*/}}
{{- define "splitserve.copyInitContainers" -}}
{{- $ctx := .context -}}
{{- $repo := $ctx.Values.modelRepository -}}
{{- $securityContext := (index $ctx.Values .component).containerSecurityContext -}}
{{- if ne $repo.source "pvc" -}}
{{- $image := ternary $repo.image $repo.objectStore.copy.image (eq $repo.source "image") -}}
{{- $command := ternary $repo.image.command $repo.objectStore.copy.command (eq $repo.source "image") -}}
{{- $from := ternary $repo.image.path (trimSuffix "/" $repo.objectStore.url) (eq $repo.source "image") -}}
{{- range $index, $bundle := $repo.bundles }}
- name: copy-bundle-{{ $index }}
  image: {{ include "splitserve.image" (dict "image" $image "defaultTag" "") }}
  imagePullPolicy: {{ $image.pullPolicy }}
  command:
    {{- toYaml $command | nindent 4 }}
  args:
    - {{ printf "%s/%s" $from $bundle | quote }}
    - {{ printf "/scratch/%s" $bundle | quote }}
  env:
    # Copy tools keep caches and config under HOME; the root filesystem is read-only.
    - name: HOME
      value: /tmp
  {{- if and (eq $repo.source "objectStore") $repo.objectStore.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ $repo.objectStore.credentialsSecret }}
  {{- end }}
  resources:
    {{- toYaml $repo.copyResources | nindent 4 }}
  securityContext:
    {{- toYaml $securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /scratch
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}
{{- end -}}

{{/*
Containers the operator adds to a component's pods (`initContainers`, `extraContainers`), as a YAML list.
A container without a `securityContext` gets the component's `containerSecurityContext`, so that sidecars
are as locked down as the chart's own containers unless they say otherwise. Takes the component dict
plus `containers` (the list).
*/}}
{{- define "splitserve.userContainers" -}}
{{- $securityContext := (index .context.Values .component).containerSecurityContext -}}
{{- $containers := list -}}
{{- range .containers -}}
{{- $container := deepCopy . -}}
{{- if not (hasKey $container "securityContext") -}}
{{- $_ := set $container "securityContext" (deepCopy $securityContext) -}}
{{- end -}}
{{- $containers = append $containers $container -}}
{{- end -}}
{{- with $containers -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/*
What the chart itself puts in a component's pods, for the checks of the operator's additions in
`splitserve.validateValues`: `containers` (names of the main and copy containers), `volumes` (names
rendered with these values), `reservedVolumes` (every name the chart may use) and `mountPaths` (of the
main container). Returned as JSON; takes the component dict. Keep it in step with the Deployments.
*/}}
{{- define "splitserve.chartPodParts" -}}
{{- $values := .context.Values -}}
{{- $repo := $values.modelRepository -}}
{{- $containers := list .component -}}
{{- $volumes := list -}}
{{- $mountPaths := list -}}
{{- $reserved := list -}}
{{- $copies := false -}}
{{- if eq .component "endpoint" -}}
{{- $endpoint := $values.endpoint -}}
{{- $copies = ne $repo.source "pvc" -}}
{{- $reserved = list "models" "tmp" "tls" "client-ca" "tokens" -}}
{{- $volumes = list "models" "tmp" -}}
{{- $mountPaths = list $repo.mountPath "/tmp" -}}
{{- if $endpoint.tls.enabled -}}
{{- $volumes = append $volumes "tls" -}}
{{- $mountPaths = append $mountPaths "/etc/splitserve/tls" -}}
{{- if $endpoint.tls.clientCA.enabled -}}
{{- $volumes = append $volumes "client-ca" -}}
{{- $mountPaths = append $mountPaths "/etc/splitserve/client-ca" -}}
{{- end -}}
{{- end -}}
{{- if $endpoint.auth.tokensSecret -}}
{{- $volumes = append $volumes "tokens" -}}
{{- $mountPaths = append $mountPaths "/etc/splitserve/auth" -}}
{{- end -}}
{{- else -}}
{{- $copies = eq $repo.source "image" -}}
{{- $reserved = list "models" "dshm" "tmp" -}}
{{- $volumes = list "dshm" "tmp" -}}
{{- $mountPaths = list "/dev/shm" "/tmp" -}}
{{- if ne $repo.source "objectStore" -}}
{{- $volumes = prepend $volumes "models" -}}
{{- $mountPaths = prepend $mountPaths $repo.mountPath -}}
{{- end -}}
{{- end -}}
{{- if $copies -}}
{{- range $index, $_ := $repo.bundles -}}
{{- $containers = append $containers (printf "copy-bundle-%d" $index) -}}
{{- end -}}
{{- end -}}
{{- dict "containers" $containers "volumes" $volumes "reservedVolumes" $reserved "mountPaths" $mountPaths | toJson -}}
{{- end -}}

{{/*
Cross-field checks the schema cannot express with a clear message. Every failed rule adds a line, and
the chart fails once with all of them.
*/}}
{{- define "splitserve.validateValues" -}}
{{- $messages := list -}}
{{- $repo := .Values.modelRepository -}}
{{- $endpoint := .Values.endpoint -}}
{{- if and (eq $repo.source "pvc") (not $repo.pvc.existingClaim) -}}
{{- $messages = append $messages "modelRepository.source=pvc needs modelRepository.pvc.existingClaim: the claim that holds the bundles." -}}
{{- end -}}
{{- if and (eq $repo.source "image") (not $repo.image.repository) -}}
{{- $messages = append $messages "modelRepository.source=image needs modelRepository.image.repository: the image that holds the bundles." -}}
{{- end -}}
{{- $pinned := dict -}}
{{- if .Values.triton.enabled -}}
{{- $_ := set $pinned "triton.image" .Values.triton.image -}}
{{- end -}}
{{- if eq $repo.source "image" -}}
{{- $_ := set $pinned "modelRepository.image" $repo.image -}}
{{- else if eq $repo.source "objectStore" -}}
{{- $_ := set $pinned "modelRepository.objectStore.copy.image" $repo.objectStore.copy.image -}}
{{- end -}}
{{- range $key, $image := $pinned -}}
{{- if not (or $image.tag $image.digest) -}}
{{- $messages = append $messages (printf "%s needs a tag or a digest: the chart never pulls `latest`." $key) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $repo.source "objectStore") (not (regexMatch "^(s3|gs|as)://[^/]+" $repo.objectStore.url)) -}}
{{- $messages = append $messages (printf "modelRepository.source=objectStore needs modelRepository.objectStore.url as s3://, gs:// or as://<bucket>/<prefix>; got %q." $repo.objectStore.url) -}}
{{- end -}}
{{- if and $endpoint.tls.enabled (not $endpoint.tls.existingSecret) -}}
{{- $messages = append $messages "endpoint.tls.enabled needs endpoint.tls.existingSecret: a kubernetes.io/tls Secret with tls.crt and tls.key." -}}
{{- end -}}
{{- if and $endpoint.tls.clientCA.enabled (not $endpoint.tls.enabled) -}}
{{- $messages = append $messages "endpoint.tls.clientCA.enabled (mutual TLS) needs endpoint.tls.enabled." -}}
{{- end -}}
{{- if and $endpoint.tls.enabled (eq $endpoint.probes.mode "grpc") -}}
{{- $messages = append $messages "endpoint.probes.mode=grpc cannot work with endpoint.tls.enabled: kubelet's gRPC probes do not speak TLS. Use mode http or auto." -}}
{{- end -}}
{{- $shutdown := add (int $endpoint.preStopSleepSeconds) (int $endpoint.config.graceSeconds) -}}
{{- if ge $shutdown (int $endpoint.terminationGracePeriodSeconds) -}}
{{- $messages = append $messages (printf "endpoint.preStopSleepSeconds + endpoint.config.graceSeconds (%d s) must be below endpoint.terminationGracePeriodSeconds (%d s), or in-flight requests are killed while draining." $shutdown (int $endpoint.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- if and .Values.triton.enabled $endpoint.config.tritonUrl -}}
{{- $messages = append $messages (printf "endpoint.config.tritonUrl=%q points at another Triton while triton.enabled deploys one: set one of them." $endpoint.config.tritonUrl) -}}
{{- end -}}
{{- if $endpoint.autoscaling.enabled -}}
{{- if gt (int $endpoint.autoscaling.minReplicas) (int $endpoint.autoscaling.maxReplicas) -}}
{{- $messages = append $messages (printf "endpoint.autoscaling.minReplicas (%d) is greater than endpoint.autoscaling.maxReplicas (%d)." (int $endpoint.autoscaling.minReplicas) (int $endpoint.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if not (dig "requests" "cpu" "" $endpoint.resources) -}}
{{- $messages = append $messages "endpoint.autoscaling needs endpoint.resources.requests.cpu: CPU utilization is measured against the request." -}}
{{- end -}}
{{- end -}}
{{- $triton := .Values.triton -}}
{{- if and $triton.enabled $triton.autoscaling.enabled -}}
{{- $autoscaling := $triton.autoscaling -}}
{{- if gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas) -}}
{{- $messages = append $messages (printf "triton.autoscaling.minReplicas (%d) is greater than triton.autoscaling.maxReplicas (%d)." (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and (eq $autoscaling.queueTime.type "External") (not $autoscaling.queueTime.selector) -}}
{{- $messages = append $messages "triton.autoscaling.queueTime.type=External needs triton.autoscaling.queueTime.selector: without it the HPA reads the queue time of every Triton the adapter sees, not this release's." -}}
{{- end -}}
{{- end -}}
{{- $components := list "endpoint" -}}
{{- if $triton.enabled -}}
{{- $components = append $components "triton" -}}
{{- end -}}
{{- range $component := $components -}}
{{- $values := index $.Values $component -}}
{{- $parts := include "splitserve.chartPodParts" (dict "context" $ "component" $component) | fromJson -}}
{{- $names := $parts.containers -}}
{{- range $container := concat (default list $values.initContainers) (default list $values.extraContainers) -}}
{{- if has $container.name $names -}}
{{- $messages = append $messages (printf "%s.initContainers and %s.extraContainers: container name %q is taken (the pod already has %s); names are shared by all containers of a pod." $component $component $container.name (join ", " $names)) -}}
{{- end -}}
{{- $names = append $names $container.name -}}
{{- end -}}
{{- $volumes := $parts.volumes -}}
{{- $taken := $parts.reservedVolumes -}}
{{- range $volume := $values.extraVolumes -}}
{{- if has $volume.name $taken -}}
{{- $messages = append $messages (printf "%s.extraVolumes: volume name %q is taken (the chart uses %s, and each name once); pick another." $component $volume.name (join ", " $parts.reservedVolumes)) -}}
{{- end -}}
{{- $taken = append $taken $volume.name -}}
{{- $volumes = append $volumes $volume.name -}}
{{- end -}}
{{- $paths := $parts.mountPaths -}}
{{- range $mount := $values.extraVolumeMounts -}}
{{- if not (has $mount.name $volumes) -}}
{{- $messages = append $messages (printf "%s.extraVolumeMounts: %q names no volume of the pod (%s): add it to %s.extraVolumes." $component $mount.name (join ", " $volumes) $component) -}}
{{- end -}}
{{- if has $mount.mountPath $paths -}}
{{- $messages = append $messages (printf "%s.extraVolumeMounts: mountPath %q is already mounted in the %s container (%s)." $component $mount.mountPath $component (join ", " $paths)) -}}
{{- end -}}
{{- $paths = append $paths $mount.mountPath -}}
{{- end -}}
{{- end -}}
{{- range $component := list "endpoint" "triton" -}}
{{- $pdb := (index $.Values $component).pdb -}}
{{- if $pdb.enabled -}}
{{- $min := ne (toString $pdb.minAvailable) "" -}}
{{- $max := ne (toString $pdb.maxUnavailable) "" -}}
{{- if eq $min $max -}}
{{- $messages = append $messages (printf "%s.pdb: set exactly one of minAvailable and maxUnavailable (the other to \"\"); got minAvailable=%q, maxUnavailable=%q." $component (toString $pdb.minAvailable) (toString $pdb.maxUnavailable)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $messages -}}
{{- fail (printf "\n\nVALUES VALIDATION:\n- %s" (join "\n- " $messages)) -}}
{{- end -}}
{{- end -}}
