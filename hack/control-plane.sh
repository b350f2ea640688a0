#!/usr/bin/env bash
# Build (once) and locate the binaries of a test control plane: etcd, kube-apiserver, kubectl,
# and helm on request. They come from the pinned Go modules under hack/tools/, because this
# project's machines reach package registries only: no release downloads, no setup-envtest.
#
# Usage:
#   export KUBEBUILDER_ASSETS="$(hack/control-plane.sh | tail -1)"   # etcd kube-apiserver kubectl
#   hack/control-plane.sh etcd kube-apiserver kubectl helm           # choose the tools
#
# The last stdout line is the folder holding the binaries; progress goes to stderr.
# A KUBEBUILDER_ASSETS that already holds the requested tools (etcd and kube-apiserver by
# default) is used as it is. Otherwise the binaries are cached outside the repository, in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/alpaca-operator/bin/<versions-key>/
# and built only when missing: a cold build takes many minutes on two cores.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/hack/tools"

log() { printf 'control-plane: %s\n' "$*" >&2; }

# The tools that a KUBEBUILDER_ASSETS folder must hold to be accepted, and those we build.
if [[ $# -gt 0 ]]; then
    wanted=("$@")
    required=("$@")
else
    wanted=(etcd kube-apiserver kubectl)
    # envtest-style folders from elsewhere may lack kubectl; the tests need only these two.
    required=(etcd kube-apiserver)
fi

for tool in "${wanted[@]}"; do
    case "${tool}" in
        etcd | kube-apiserver | kubectl | helm) ;;
        # The node's components, for hack/cluster.sh: same module, same flags, so a warm Go
        # build cache shares every package they have in common with kube-apiserver.
        kube-controller-manager | kube-scheduler | kubelet | kube-proxy) ;;
        *) log "unknown tool '${tool}' (known: etcd kube-apiserver kubectl helm" \
            "kube-controller-manager kube-scheduler kubelet kube-proxy)"; exit 2 ;;
    esac
done

holds_all() {
    local dir="$1"; shift
    local tool
    for tool in "$@"; do
        [[ -x "${dir}/${tool}" ]] || return 1
    done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && holds_all "${KUBEBUILDER_ASSETS}" "${required[@]}"; then
    log "using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
    printf '%s\n' "${KUBEBUILDER_ASSETS}"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "go is not installed; install Go >= 1.26 or set KUBEBUILDER_ASSETS"
    exit 1
fi

# The module version that a tools module pins for MODULE (from its go.mod, no network).
pinned() {
    local mod_dir="$1" module="$2"
    awk -v m="${module}" '
        $1 == m && $2 ~ /^v/ { print $2; exit }
        $1 == "require" && $2 == m { print $3; exit }' "${tools_dir}/${mod_dir}/go.mod"
}

k8s_version="$(pinned kubernetes k8s.io/kubernetes)"
etcd_version="$(pinned etcd go.etcd.io/etcd/server/v3)"
helm_version="$(pinned helm helm.sh/helm/v3)"
go_version="$(go env GOVERSION)"

# The readable versions name the folder; a short hash of the module files and the Go version
# makes a change to any pin (or to the compiler) land in a fresh folder instead of reusing
# stale binaries. Only the modules built here count: hack/cluster.sh's own tool modules
# (training operator, CoreDNS, ...) live beside them and must not move this folder.
own_modules=(etcd helm kubernetes)
files_hash="$(
    {
        printf '%s\n' "${go_version}"
        for pattern in go.mod go.sum '*.go'; do
            for mod_dir in "${own_modules[@]}"; do
                # shellcheck disable=SC2086 # the pattern must glob
                cat "${tools_dir}/${mod_dir}"/${pattern} 2>/dev/null || true
            done
        done
    } | sha256sum | cut -c1-12
)"
key="k8s-${k8s_version}_etcd-${etcd_version}_helm-${helm_version}_${go_version}_${files_hash}"
cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/alpaca-operator/bin"
bin_dir="${cache_root}/${key}"
mkdir -p "${bin_dir}"

if holds_all "${bin_dir}" "${wanted[@]}"; then
    log "cached in ${bin_dir}"
    printf '%s\n' "${bin_dir}"
    exit 0
fi

# Two callers at once (parallel test runs) must not build the same binary twice or see a
# half-written one: hold a lock, and move each finished binary into place atomically.
exec 9>"${bin_dir}/.lock"
flock 9

# k8s binaries report these on /version and `kubectl version`; without them they claim
# v0.0.0-master, which makes kubectl warn about version skew.
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X ${pkg}.gitVersion=${k8s_version} -X ${pkg}.gitMajor=1"
    k8s_ldflags+=" -X ${pkg}.gitMinor=${k8s_minor} -X ${pkg}.gitTreeState=clean"
done

# helm renders offline (`helm template`, `helm lint`) for the Kubernetes version compiled into it,
# v1.20 unless told: give it its client-go's minor, as helm's own release build does.
helm_k8s_minor="$(pinned helm k8s.io/client-go)"
helm_k8s_minor="${helm_k8s_minor#v0.}"
helm_k8s_minor="${helm_k8s_minor%%.*}"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${helm_k8s_minor}"
done

build() {
    local tool="$1" mod_dir="$2" pkg="$3" ldflags="$4"
    if [[ -x "${bin_dir}/${tool}" ]]; then
        return 0
    fi
    log "building ${tool} from ${pkg} (hack/tools/${mod_dir}); a cold build takes minutes"
    local start=${SECONDS}
    (
        cd "${tools_dir}/${mod_dir}"
        # Each module has its own go.mod; GOWORK=off keeps a stray go.work from merging them.
        # -mod=readonly builds exactly what the committed go.sum pins, never a silent update;
        # static (CGO off) binaries, as upstream releases them, run on any Linux machine.
        GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
            go build -trimpath -buildvcs=false -ldflags="${ldflags}" \
            -o "${bin_dir}/.${tool}.tmp" "${pkg}"
    )
    mv -f "${bin_dir}/.${tool}.tmp" "${bin_dir}/${tool}"
    log "built ${tool} in $((SECONDS - start))s"
}

for tool in "${wanted[@]}"; do
    case "${tool}" in
        etcd) build etcd etcd . "-s -w" ;;
        kube-apiserver) build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver "${k8s_ldflags}" ;;
        kubectl) build kubectl kubernetes k8s.io/kubernetes/cmd/kubectl "${k8s_ldflags}" ;;
        helm) build helm helm helm.sh/helm/v3/cmd/helm "${helm_ldflags}" ;;
        kube-controller-manager | kube-scheduler | kubelet | kube-proxy)
            build "${tool}" kubernetes "k8s.io/kubernetes/cmd/${tool}" "${k8s_ldflags}" ;;
    esac
done

log "ready in ${bin_dir}"
printf '%s\n' "${bin_dir}"
