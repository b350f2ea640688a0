#!/usr/bin/env bash
# Cluster addons for the e2e tests of queues, Trainer v2 and autoscaling, installed into the
# cluster that hack/cluster.sh started: Kueue, Kubeflow Trainer v2 with JobSet, and
# metrics-server, each built from the Go module its hack/tools/<module>/go.mod pins.
#
# Usage:
#   hack/addons.sh build ADDON...   # build (once, cached) the controllers; prints the binaries
#   hack/addons.sh up ADDON...      # install into the running cluster and wait until ready
#   hack/addons.sh down ADDON...    # remove what `up` installed (webhooks first)
#   hack/addons.sh status ADDON...  # exit 0 when each is installed and ready
#
# ADDON: kueue, trainer (Trainer v2's controller manager, its CRDs and ClusterTrainingRuntimes,
# and JobSet, which it runs on), metrics-server.
#
# Binaries are cached like hack/cluster.sh's, keyed by the content of their tools module, and
# built with the same flags so that shared packages hit the Go build cache. Each controller runs
# as a pod (like the cluster's own CoreDNS and training operator) from an image made here: the
# static binary on an empty root, imported into the node's containerd. The upstream manifests
# (CRDs, RBAC, webhooks, Deployments) come from the same module, with the image swapped and CPU
# requests shrunk to fit the one 2-core node; each controller manages its own webhook
# certificates (cert-controller) as it does upstream.
#
# Two departures from a stock install, both for a shared test node:
# - Kueue's admission webhooks apply only in namespaces labelled alpaca.dev/kueue=enabled, so a
#   Kueue that is starting (or gone) never refuses the Jobs and Pods of other namespaces; its
#   visibility API (an aggregated API server) is not registered.
# - The cluster's API server has no front-proxy client certificate, so the aggregator reaches
#   metrics-server with none and metrics-server sees every request as anonymous: its discovery
#   paths are always allowed, and RBAC lets the anonymous user read the metrics API (the API
#   server, which refuses anonymous requests itself, has authorised the caller before proxying;
#   metrics-server's port is reachable only from the node and its pods).
set -Eeuo pipefail
shopt -s inherit_errexit

# hack/cluster.sh's paths, pins and helpers (sourcing it defines them and starts nothing).
# shellcheck source=hack/cluster.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.sh"

log() { printf 'addons: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

addons_dir="${cluster_dir}/addons"

# name|tools module folder|package|module whose pin names the version
binaries=(
    "kueue|kueue|sigs.k8s.io/kueue/cmd/kueue|sigs.k8s.io/kueue"
    "trainer-controller-manager|trainer|github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager|github.com/kubeflow/trainer/v2"
    "jobset|trainer|sigs.k8s.io/jobset|sigs.k8s.io/jobset"
    "metrics-server|metrics-server|sigs.k8s.io/metrics-server/cmd/metrics-server|sigs.k8s.io/metrics-server"
)

binaries_of() {
    case "$1" in
        kueue) echo kueue ;;
        trainer) echo jobset trainer-controller-manager ;;
        metrics-server) echo metrics-server ;;
        *) die "unknown addon $1 (known: kueue trainer metrics-server)" ;;
    esac
}

entry_of() {
    local entry
    for entry in "${binaries[@]}"; do
        [[ "${entry%%|*}" == "$1" ]] && { printf '%s\n' "${entry}"; return 0; }
    done
    die "no binary $1"
}

# The folder a binary is cached in: its version and the hash of its tools module's content.
bin_dir_of() {
    local name mod_dir pkg module hash
    IFS='|' read -r name mod_dir pkg module <<<"$(entry_of "$1")"
    hash="$({ go env GOVERSION; cat "${tools_dir}/${mod_dir}"/go.mod "${tools_dir}/${mod_dir}"/go.sum; } |
        sha256sum | cut -c1-12)"
    printf '%s/bin/addon-%s-%s_%s\n' "${cache_root}" "${name}" "$(pinned "${mod_dir}" "${module}")" "${hash}"
}

build_binary() {
    local name mod_dir pkg module dir
    IFS='|' read -r name mod_dir pkg module <<<"$(entry_of "$1")"
    dir="$(bin_dir_of "${name}")"
    mkdir -p "${dir}"
    exec 8>"${dir}/.lock"
    flock 8
    if [[ ! -x "${dir}/${name}" ]]; then
        log "building ${name} from ${pkg} (hack/tools/${mod_dir}); a cold build takes minutes"
        local start=${SECONDS}
        (
            cd "${tools_dir}/${mod_dir}"
            # hack/cluster.sh's flags exactly: other flags miss the shared Go build cache.
            GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 nice -n 10 \
                go build -trimpath -buildvcs=false -ldflags="-s -w" -o "${dir}/.${name}.tmp" "${pkg}"
        )
        mv -f "${dir}/.${name}.tmp" "${dir}/${name}"
        log "built ${name} in $((SECONDS - start))s"
    fi
    exec 8>&-
    printf '%s/%s\n' "${dir}" "${name}"
}

# The module's source folder (downloaded and checked against go.sum when missing).
module_dir() {
    (cd "${tools_dir}/$1" && GOWORK=off GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' "$2")
}

# localhost/alpaca/NAME:TAG, TAG from the binary's content; imported into the node's containerd
# when missing. The image holds the binary at /TARGET, a passwd entry and /tmp, and runs as
# nobody (the upstream Deployments ask for runAsNonRoot).
image_of() {
    local name="$1" binary="$2" target="$3"
    local tag ref
    tag="$(sha256sum "${binary}" | cut -c1-12)"
    ref="localhost/alpaca/${name}:${tag}"
    local have
    # Listed first: `grep -q` leaving a pipe early would fail the pipeline under pipefail.
    have="$(ctr --address "${containerd_sock}" -n k8s.io images ls -q)"
    if ! grep -qxF "${ref}" <<<"${have}"; then
        local work ctr archive
        work="$(mktemp -d "${cluster_dir}/addon-rootfs.XXXXXX")"
        mkdir -p "${work}/tmp" "${work}/etc"
        chmod 1777 "${work}/tmp"
        cp "${binary}" "${work}${target}"
        echo 'nobody:x:65534:65534:nobody:/:/bin/false' >"${work}/etc/passwd"
        ctr="$(bh from scratch)"
        bh copy "${ctr}" "${work}/" / >/dev/null
        bh config --entrypoint "[\"${target}\"]" --user 65534:65534 "${ctr}"
        bh commit --quiet "${ctr}" "${ref}" >/dev/null
        bh rm "${ctr}" >/dev/null
        archive="${work}.tar"
        bh push --quiet "${ref}" "oci-archive:${archive}:${ref}"
        ctr --address "${containerd_sock}" -n k8s.io images import --no-unpack=false "${archive}" >/dev/null
        bh rmi "${ref}" >/dev/null 2>&1 || true
        rm -rf "${work}" "${archive}"
        log "imported ${ref}"
    fi
    printf '%s\n' "${ref}"
}

# A kustomization over a copy of the module's manifests (kustomize takes no absolute paths),
# with our image; the Deployment patch ops in $4 are JSON6902 ops on every Deployment.
write_overlay() {
    local folder="$1" upstream="$2" resources="$3" image_name="$4" ref="$5" extra="$6"
    rm -rf "${folder}"
    mkdir -p "${folder}"
    cp -r "${upstream}" "${folder}/upstream"
    chmod -R u+w "${folder}/upstream"
    cat >"${folder}/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - upstream/${resources}
images:
  - name: ${image_name}
    newName: ${ref%:*}
    newTag: "${ref##*:}"
patches:
  - target: {kind: Deployment}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      # A 2-core node shared with training pods: small requests, and a memory ceiling.
      - op: add
        path: /spec/template/spec/containers/0/resources
        value: {requests: {cpu: 10m, memory: 64Mi}, limits: {memory: 1Gi}}
${extra}
EOF
}

kueue_manifests() {
    local binary="$1" folder="${addons_dir}/kueue" ref upstream
    ref="$(image_of kueue "${binary}" /manager)"
    upstream="$(module_dir kueue sigs.k8s.io/kueue)/config"
    write_overlay "${folder}" "${upstream}" default us-central1-docker.pkg.dev/k8s-staging-images/kueue/kueue "${ref}" "$(cat <<'EOF'
  # The visibility API is an aggregated API server: not registered here (see the header).
  - patch: |-
      $patch: delete
      apiVersion: apiregistration.k8s.io/v1
      kind: APIService
      metadata: {name: v1beta1.visibility.kueue.x-k8s.io}
  - patch: |-
      $patch: delete
      apiVersion: apiregistration.k8s.io/v1
      kind: APIService
      metadata: {name: v1beta2.visibility.kueue.x-k8s.io}
configMapGenerator:
  - name: kueue-manager-config
    namespace: kueue-system
    behavior: replace
    files: [controller_manager_config.yaml]
    options: {disableNameSuffixHash: true}
EOF
)"
    # Upstream's configuration, with the integrations this project's children need: batch Jobs
    # (InstructDataset, Evaluation), PyTorchJobs and TrainJobs (FineTune), JobSets (under
    # TrainJobs). Deployments (ModelServer) are left out: Kueue's pod-group webhooks would then
    # apply to every pod of a labelled namespace.
    cat >"${folder}/controller_manager_config.yaml" <<'EOF'
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
health:
  healthProbeBindAddress: :8081
metrics:
  bindAddress: :8443
webhook:
  port: 9443
leaderElection:
  leaderElect: true
  resourceName: c1f6bfd2.kueue.x-k8s.io
clientConnection:
  qps: 50
  burst: 100
integrations:
  frameworks:
  - "batch/job"
  - "kubeflow.org/pytorchjob"
  - "jobset.x-k8s.io/jobset"
  - "trainer.kubeflow.org/trainjob"
EOF
    kustomize_ "${folder}" |
        yq -y '(select(.kind == "MutatingWebhookConfiguration" or .kind == "ValidatingWebhookConfiguration")
                | .webhooks[].namespaceSelector) = {"matchLabels": {"alpaca.dev/kueue": "enabled"}}'
}

trainer_manifests() {
    local jobset_bin="$1" trainer_bin="$2" jobset_ref trainer_ref
    jobset_ref="$(image_of jobset "${jobset_bin}" /manager)"
    trainer_ref="$(image_of trainer-controller-manager "${trainer_bin}" /manager)"
    write_overlay "${addons_dir}/jobset" "$(module_dir trainer sigs.k8s.io/jobset)/config" default \
        us-central1-docker.pkg.dev/k8s-staging-images/jobset/jobset "${jobset_ref}" ""
    # Trainer's `manager` overlay, less its JobSet (a release URL): JobSet comes from its module above.
    local trainer_mod
    trainer_mod="$(module_dir trainer github.com/kubeflow/trainer/v2)/manifests"
    write_overlay "${addons_dir}/trainer" "${trainer_mod}" overlays/manager \
        ghcr.io/kubeflow/trainer/trainer-controller-manager "${trainer_ref}" ""
    sed -i '/third-party\/jobset/d' "${addons_dir}/trainer/upstream/overlays/manager/kustomization.yaml"
    kustomize_ "${addons_dir}/jobset"
    echo ---
    kustomize_ "${addons_dir}/trainer"
}

trainer_runtimes() {
    local trainer_mod
    trainer_mod="$(module_dir trainer github.com/kubeflow/trainer/v2)/manifests"
    rm -rf "${addons_dir}/runtimes"
    mkdir -p "${addons_dir}/runtimes"
    cp -r "${trainer_mod}/base/runtimes" "${addons_dir}/runtimes/upstream"
    chmod -R u+w "${addons_dir}/runtimes/upstream"
    printf 'resources: [upstream]\n' >"${addons_dir}/runtimes/kustomization.yaml"
    kustomize_ "${addons_dir}/runtimes"
}

metrics_server_manifests() {
    local binary="$1" ref
    ref="$(image_of metrics-server "${binary}" /metrics-server)"
    write_overlay "${addons_dir}/metrics-server" \
        "$(module_dir metrics-server sigs.k8s.io/metrics-server)/manifests" base \
        gcr.io/k8s-staging-metrics-server/metrics-server "${ref}" "$(cat <<'EOF'
  - target: {kind: Deployment, name: metrics-server}
    patch: |-
      # The kubelet serves a self-signed certificate (no serving-cert CSR signer here); the
      # aggregator sends no client certificate (see the header); a 2-core node, 5 s resolution
      # for a quick HPA.
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --kubelet-insecure-tls
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --authorization-always-allow-paths=/livez,/readyz,/healthz,/apis,/apis/metrics.k8s.io,/apis/metrics.k8s.io/*,/openapi/*
EOF
)"
    kustomize_ "${addons_dir}/metrics-server"
    # Resource requests are authorised by a SubjectAccessReview for the user metrics-server sees:
    # anonymous, as the aggregator sends no client certificate here (see the header).
    cat <<'EOF'
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "alpaca-addons:metrics-through-aggregator"}
rules:
  - apiGroups: [metrics.k8s.io]
    resources: [nodes, pods]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "alpaca-addons:metrics-through-aggregator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "alpaca-addons:metrics-through-aggregator"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:anonymous"}
EOF
}

kubectl_() { "${k8s_dir}/kubectl" --kubeconfig "${cluster_dir}/kubeconfig" "$@"; }

# kustomize, without its warning about upstream's deprecated commonLabels (JobSet's).
kustomize_() { "${k8s_dir}/kubectl" kustomize "$1" 2> >(grep -v "'commonLabels' is deprecated" >&2); }

rollout() {
    local namespace="$1" deployment="$2"
    kubectl_ -n "${namespace}" rollout status "deployment/${deployment}" --timeout=300s >&2
}

cmd_build() {
    local addon name
    for addon in "$@"; do
        for name in $(binaries_of "${addon}"); do
            build_binary "${name}"
        done
    done
}

cmd_up() {
    [[ ${EUID} -eq 0 ]] || die "needs root (the node's containerd)"
    command -v yq >/dev/null || die "missing yq: apt-get install yq"
    "${repo_root}/hack/cluster.sh" status || die "no cluster is up (hack/cluster.sh up)"
    k8s_dir="$(cat "${cluster_dir}/k8s-bin")"
    mkdir -p "${addons_dir}"
    local addon
    for addon in "$@"; do
        binaries_of "${addon}" >/dev/null
        case "${addon}" in
            kueue)
                kueue_manifests "$(build_binary kueue)" >"${addons_dir}/kueue.yaml"
                kubectl_ apply --server-side -f "${addons_dir}/kueue.yaml" >/dev/null
                rollout kueue-system kueue-controller-manager
                # Ready means its webhooks answer: the cert-controller has injected the CA bundle.
                printf '%s\n' "apiVersion: kueue.x-k8s.io/v1beta2" "kind: ResourceFlavor" \
                    "metadata: {name: alpaca-addons-probe}" >"${addons_dir}/kueue-probe.yaml"
                wait_for "Kueue's webhook" 180 kubectl_ create --dry-run=server -f "${addons_dir}/kueue-probe.yaml"
                ;;
            trainer)
                trainer_manifests "$(build_binary jobset)" "$(build_binary trainer-controller-manager)" \
                    >"${addons_dir}/trainer.yaml"
                kubectl_ apply --server-side -f "${addons_dir}/trainer.yaml" >/dev/null
                rollout jobset-system jobset-controller-manager
                rollout kubeflow-system kubeflow-trainer-controller-manager
                # The runtimes go through Trainer's validating webhook: wait until it answers.
                trainer_runtimes >"${addons_dir}/runtimes.yaml"
                wait_for "Trainer's webhook" 180 kubectl_ apply --server-side -f "${addons_dir}/runtimes.yaml"
                ;;
            metrics-server)
                metrics_server_manifests "$(build_binary metrics-server)" >"${addons_dir}/metrics-server.yaml"
                kubectl_ apply --server-side -f "${addons_dir}/metrics-server.yaml" >/dev/null
                rollout kube-system metrics-server
                wait_for "the metrics API" 180 kubectl_ get --raw /apis/metrics.k8s.io/v1beta1/nodes
                ;;
        esac
        log "${addon} is up"
    done
}

# The objects of FILE whose kind matches the jq condition on .kind, deleted.
delete_kinds() {
    local file="$1" condition="$2"
    yq -y "select(.kind | ${condition})" "${file}" | kubectl_ delete --ignore-not-found --wait=true --timeout=120s -f - >/dev/null || true
}

# Kueue's finalizers (on workloads, queues, flavors) are lifted by its controller only: once the
# controller is gone, they are lifted here, or those objects and their namespaces could never go.
lift_kueue_finalizers() {
    local kind namespace name
    for kind in $(kubectl_ api-resources --api-group=kueue.x-k8s.io -o name 2>/dev/null); do
        kubectl_ get "${kind}" -A -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' 2>/dev/null |
            while read -r namespace name; do
                [[ -n "${name}" ]] || { name="${namespace}"; namespace=""; }
                kubectl_ patch "${kind}" "${name}" ${namespace:+-n "${namespace}"} --type=merge \
                    -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
            done
    done
}

cmd_down() {
    k8s_dir="$(cat "${cluster_dir}/k8s-bin")"
    local addon files f
    for addon in "$@"; do
        binaries_of "${addon}" >/dev/null
        case "${addon}" in
            trainer) files="${addons_dir}/runtimes.yaml ${addons_dir}/trainer.yaml" ;;
            *) files="${addons_dir}/${addon}.yaml" ;;
        esac
        for f in ${files}; do
            [[ -f "${f}" ]] || continue
            # Nothing may call a controller that is going: webhooks and API registrations first.
            delete_kinds "${f}" 'test("WebhookConfiguration$|^APIService$")'
            delete_kinds "${f}" '. == "Deployment"'
        done
        [[ "${addon}" != kueue ]] || lift_kueue_finalizers
        for f in ${files}; do
            [[ -f "${f}" ]] || continue
            delete_kinds "${f}" '. != ""'
            rm -f "${f}"
        done
        log "${addon} is down"
    done
}

cmd_status() {
    k8s_dir="$(cat "${cluster_dir}/k8s-bin")"
    local addon
    for addon in "$@"; do
        case "${addon}" in
            kueue) kubectl_ -n kueue-system rollout status deployment/kueue-controller-manager --timeout=1s ;;
            trainer) kubectl_ -n kubeflow-system rollout status deployment/kubeflow-trainer-controller-manager --timeout=1s &&
                kubectl_ get clustertrainingruntime torch-distributed ;;
            metrics-server) kubectl_ get --raw /apis/metrics.k8s.io/v1beta1/nodes ;;
            *) die "unknown addon ${addon}" ;;
        esac
    done >/dev/null
}

[[ $# -ge 2 ]] || { sed -n "2,16p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
command="$1"
shift
case "${command}" in
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    *) sed -n "2,16p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
