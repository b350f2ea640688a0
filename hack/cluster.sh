#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, for the e2e tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy (iptables) from the pinned
# k8s.io/kubernetes module; containerd + runc + CNI plugins from Debian; CoreDNS, the
# local-path provisioner and the Kubeflow training operator from their pinned Go modules.
#
# Usage:
#   hack/cluster.sh build          # build (once, cached) every binary; prints the bin folders
#   hack/cluster.sh up             # start the cluster; prints the kubeconfig path last
#   hack/cluster.sh down [--purge] # stop it and remove everything it left on the machine
#                                  # (--purge: the node's image cache too)
#   hack/cluster.sh status         # exit 0 when a started cluster's API answers
#
# Needs root (containerd, iptables, cgroups) and the Debian packages named in need_packages.
# Binaries are cached under ${XDG_CACHE_HOME:-$HOME/.cache}/alpaca-operator/bin/, keyed by the
# content of the tool modules, like hack/control-plane.sh. The running cluster lives in
# ${ALPACA_CLUSTER_DIR:-/tmp/alpaca-cluster}: logs, certificates, kubeconfig, process ids.
#
# Addresses come from the documentation ranges only, and all traffic stays on this machine:
#   node IP 203.0.113.10 (on lo), Services 203.0.113.128/25, Pods 198.51.100.0/24.
set -Eeuo pipefail
shopt -s inherit_errexit

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/hack/tools"
cluster_dir="${ALPACA_CLUSTER_DIR:-/tmp/alpaca-cluster}"
cache_root="${XDG_CACHE_HOME:-${HOME}/.cache}/alpaca-operator"

node_name="alpaca-node"
node_ip="203.0.113.10"
service_cidr="203.0.113.128/25"
kubernetes_service_ip="203.0.113.129"
dns_service_ip="203.0.113.138"
pod_cidr="198.51.100.0/24"
bridge_name="alpaca0"
cluster_domain="cluster.local"
apiserver_port=6443

# Every path below is ours alone, so teardown can remove it without asking. containerd's root
# holds the images loaded into the node (several GB with torch): it is a cache, kept by `down`
# (no containers or sandboxes are left in it) and removed by `down --purge`.
containerd_root="${cache_root}/containerd"
containerd_state="/run/alpaca-containerd"
containerd_sock="${containerd_state}/containerd.sock"
kubelet_root="/var/lib/alpaca-kubelet"
local_path_root="/var/lib/alpaca-local-path"
cni_conf_dir="${cluster_dir}/cni"
cni_net_dir="/var/lib/cni/networks/alpaca"

# Images made here (no registry is reachable): the pod sandbox, busybox (the local-path helper,
# and the tests' probes) and the addons. Their tag is set by make_addon_images from the content.
addon_tag=""
pause_image=""
helper_image=""
init_image=""

k8s_tools=(etcd kube-apiserver kubectl helm kube-controller-manager kube-scheduler kubelet kube-proxy)
need_packages=(containerd runc containernetworking-plugins iptables conntrack busybox-static buildah)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- build ------------------------------------------------------------------------------

# The module version that a tools module pins for MODULE (from its go.mod, no network).
pinned() {
    awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }
        $1 == "require" && $2 == m { print $3; exit }' "${tools_dir}/$1/go.mod"
}

# The cluster's own tools: name, module folder, package, extra ldflags.
extra_tools=(
    "training-operator|training-operator|github.com/kubeflow/training-operator/cmd/training-operator.v1"
    "coredns|coredns|."
    "local-path-provisioner|local-path-provisioner|github.com/rancher/local-path-provisioner"
)

extra_bin_dir() {
    local hash
    hash="$(
        {
            go env GOVERSION
            local mod_dir
            for mod_dir in training-operator coredns local-path-provisioner; do
                cat "${tools_dir}/${mod_dir}"/go.mod "${tools_dir}/${mod_dir}"/go.sum
                cat "${tools_dir}/${mod_dir}"/*.go 2>/dev/null || true
            done
        } | sha256sum | cut -c1-12
    )"
    printf '%s/bin/cluster-training-operator-%s_coredns-%s_local-path-%s_%s\n' "${cache_root}" \
        "$(pinned training-operator github.com/kubeflow/training-operator)" \
        "$(pinned coredns github.com/coredns/coredns)" \
        "$(pinned local-path-provisioner github.com/rancher/local-path-provisioner)" "${hash}"
}

build_extra() {
    local bin_dir="$1" name="$2" mod_dir="$3" pkg="$4"
    [[ -x "${bin_dir}/${name}" ]] && return 0
    log "building ${name} from ${pkg} (hack/tools/${mod_dir}); a cold build takes minutes"
    local start=${SECONDS}
    (
        cd "${tools_dir}/${mod_dir}"
        # The same flags as hack/control-plane.sh, so shared packages hit the Go build cache.
        GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
            go build -trimpath -buildvcs=false -ldflags="-s -w" -o "${bin_dir}/.${name}.tmp" "${pkg}"
    )
    mv -f "${bin_dir}/.${name}.tmp" "${bin_dir}/${name}"
    log "built ${name} in $((SECONDS - start))s"
}

# Prints two lines: the Kubernetes binaries' folder, then the cluster tools' folder.
cmd_build() {
    command -v go >/dev/null || die "go is not installed; install Go >= 1.26"
    local k8s_dir extra_dir entry name mod_dir pkg
    k8s_dir="$(KUBEBUILDER_ASSETS='' "${repo_root}/hack/control-plane.sh" "${k8s_tools[@]}" | tail -1)"
    extra_dir="$(extra_bin_dir)"
    mkdir -p "${extra_dir}"
    exec 8>"${extra_dir}/.lock"
    flock 8
    for entry in "${extra_tools[@]}"; do
        IFS='|' read -r name mod_dir pkg <<<"${entry}"
        build_extra "${extra_dir}" "${name}" "${mod_dir}" "${pkg}"
    done
    exec 8>&-
    printf '%s\n%s\n' "${k8s_dir}" "${extra_dir}"
}

# --- images made here ---------------------------------------------------------------------

# buildah's storage holds one driver only; hack/images.sh uses the same. overlay is far faster
# than vfs for big layers; vfs works on any filesystem.
bh() { buildah --storage-driver "${ALPACA_BUILDAH_DRIVER:-overlay}" "$@"; }

# A single-layer image from a folder, imported into the node's containerd (namespace k8s.io).
# buildah needs no daemon; the OCI archive is what `ctr images import` reads.
import_rootfs_image() {
    local name="$1" rootfs="$2" entrypoint="$3"
    local ctr archive
    ctr="$(bh from scratch)"
    bh copy "${ctr}" "${rootfs}/" / >/dev/null
    bh config --entrypoint "${entrypoint}" "${ctr}"
    archive="${cluster_dir}/images/$(echo "${name}" | tr '/:' '__').tar"
    mkdir -p "${cluster_dir}/images"
    bh commit --quiet "${ctr}" "${name}" >/dev/null
    bh rm "${ctr}" >/dev/null
    rm -f "${archive}"
    bh push --quiet "${name}" "oci-archive:${archive}:${name}"
    ctr --address "${containerd_sock}" -n k8s.io images import --no-unpack=false "${archive}" >/dev/null
    rm -f "${archive}"
}

# The addon images: each a static binary on an empty root. The sandbox (pause) container only
# has to hold the pod's namespaces until it is told to stop: a busybox shell loop does that.
# Tagged by the binaries' content, and made only when the node's image store lacks them.
# The training operator's Worker pods wait for the Master's name in an init container,
# `sh -c '... if nslookup NAME; then ...'` with alpine by default (no registry here serves it).
# Debian's busybox will not do: its nslookup (1.35) tries every search domain and exits 1 when any
# of them misses, even after the name resolved, and its sh runs its own applets before anything
# on PATH. The init image made here has dash as /bin/sh, busybox for the rest, and an nslookup
# that, as alpine's, exits 0 once the name resolved.
nslookup_wrapper='#!/bin/sh
/bin/busybox nslookup "$@" | tee /dev/stderr | grep -q "^Name:"
'

addon_names() {
    local extra_dir="$1"
    addon_tag="$(cat /bin/busybox "${extra_dir}"/training-operator "${extra_dir}"/coredns \
        "${extra_dir}"/local-path-provisioner | sha256sum | cut -c1-12)"
    pause_image="localhost/alpaca/pause:${addon_tag}"
    helper_image="localhost/alpaca/busybox:${addon_tag}"
    init_image="localhost/alpaca/pytorch-init:$({ cat /bin/busybox /usr/bin/dash; printf '%s' "${nslookup_wrapper}"; } | sha256sum | cut -c1-12)"
    printf '%s\n' "${helper_image}" >"${cluster_dir}/busybox-image"
}

make_addon_images() {
    local extra_dir="$1" work name target entry
    local have
    have="$(ctr --address "${containerd_sock}" -n k8s.io images ls -q)"
    work="$(mktemp -d "${cluster_dir}/rootfs.XXXXXX")"
    mkdir -p "${work}/busybox/bin" "${work}/busybox/tmp" "${work}/busybox/etc"
    cp /bin/busybox "${work}/busybox/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ -e "${work}/busybox/bin/${applet}" ]] || ln -s busybox "${work}/busybox/bin/${applet}"
    done
    echo 'root:x:0:0:root:/:/bin/sh' >"${work}/busybox/etc/passwd"
    grep -qxF "${pause_image}" <<<"${have}" ||
        import_rootfs_image "${pause_image}" "${work}/busybox" \
            '["/bin/sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]'
    grep -qxF "${helper_image}" <<<"${have}" ||
        import_rootfs_image "${helper_image}" "${work}/busybox" '["/bin/sh"]'
    if ! grep -qxF "${init_image}" <<<"${have}"; then
        cp -a "${work}/busybox" "${work}/init"
        rm "${work}/init/bin/sh" "${work}/init/bin/nslookup"
        cp /usr/bin/dash "${work}/init/bin/sh"
        local lib
        for lib in $(ldd /usr/bin/dash | grep -o '/[^ ]*'); do
            mkdir -p "${work}/init$(dirname "${lib}")"
            cp -L "${lib}" "${work}/init${lib}"
        done
        printf '%s' "${nslookup_wrapper}" >"${work}/init/bin/nslookup"
        chmod 0755 "${work}/init/bin/nslookup"
        import_rootfs_image "${init_image}" "${work}/init" '["/bin/sh"]'
    fi
    for entry in "training-operator:/manager" "coredns:/coredns" "local-path-provisioner:/local-path-provisioner"; do
        name="${entry%%:*}" target="${entry#*:}"
        grep -qxF "localhost/alpaca/${name}:${addon_tag}" <<<"${have}" && continue
        mkdir -p "${work}/${name}/tmp" "${work}/${name}/etc"
        cp "${extra_dir}/${name}" "${work}/${name}${target}"
        echo 'nobody:x:65534:65534:nobody:/:/bin/false' >"${work}/${name}/etc/passwd"
        import_rootfs_image "localhost/alpaca/${name}:${addon_tag}" "${work}/${name}" "[\"${target}\"]"
    done
    rm -rf "${work}"
}

# --- start --------------------------------------------------------------------------------

# Start a long-running process in its own session, logging to the cluster folder; its pid goes
# to pids/NAME so that `down` stops exactly what `up` started.
spawn() {
    local name="$1"; shift
    mkdir -p "${cluster_dir}/pids" "${cluster_dir}/logs"
    setsid "$@" </dev/null >>"${cluster_dir}/logs/${name}.log" 2>&1 &
    echo $! >"${cluster_dir}/pids/${name}"
}

wait_for() {
    local what="$1" timeout="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for ${what}"
            return 1
        fi
        sleep 1
    done
}

write_certs() {
    local pki="${cluster_dir}/pki"
    mkdir -p "${pki}"
    (
        cd "${pki}"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=alpaca-test-ca" \
            -keyout ca.key -out ca.crt 2>/dev/null
        cat >apiserver.ext <<EOF
subjectAltName = IP:${node_ip}, IP:${kubernetes_service_ip}, IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.${cluster_domain}
extendedKeyUsage = serverAuth
EOF
        openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
            -keyout apiserver.key -out apiserver.csr 2>/dev/null
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        # The API server's identity towards the kubelet (logs, exec, port-forward).
        printf 'extendedKeyUsage = clientAuth\n' >client.ext
        openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
            -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
        openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile client.ext -out kubelet-client.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    )
}

# A static bearer token per component; the users are the ones the API server's bootstrap RBAC
# policy already binds (system:kube-controller-manager, system:kube-scheduler,
# system:kube-proxy) and the kubelet's node identity, which the Node authorizer checks.
write_kubeconfigs() {
    local tokens="${cluster_dir}/pki/tokens.csv" entry name user groups token
    : >"${tokens}"
    chmod 600 "${tokens}"
    for entry in "admin|alpaca-admin|system:masters" \
        "controller-manager|system:kube-controller-manager|" \
        "scheduler|system:kube-scheduler|" \
        "kube-proxy|system:kube-proxy|" \
        "kubelet|system:node:${node_name}|system:nodes"; do
        IFS='|' read -r name user groups <<<"${entry}"
        token="$(openssl rand -hex 24)"
        printf '%s,%s,%s,"%s"\n' "${token}" "${user}" "${user}" "${groups}" >>"${tokens}"
        cat >"${cluster_dir}/${name}.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: alpaca
  cluster:
    server: https://${node_ip}:${apiserver_port}
    certificate-authority: ${cluster_dir}/pki/ca.crt
users:
- name: ${name}
  user:
    token: ${token}
contexts:
- name: alpaca
  context: {cluster: alpaca, user: ${name}, namespace: default}
current-context: alpaca
EOF
        chmod 600 "${cluster_dir}/${name}.kubeconfig"
    done
    cp "${cluster_dir}/admin.kubeconfig" "${cluster_dir}/kubeconfig"
}

start_network() {
    # The node IP lives on lo: the kubelet refuses a loopback address but not another one on lo,
    # and no packet to it ever leaves the machine.
    ip addr show dev lo | grep -q " ${node_ip}/32" || ip addr add "${node_ip}/32" dev lo
    cat /proc/sys/net/ipv4/ip_forward >"${cluster_dir}/ip_forward.saved"
    # Pod -> Service -> pod traffic is routed through the host.
    echo 1 >/proc/sys/net/ipv4/ip_forward
    if [[ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi
    mkdir -p "${cni_conf_dir}"
    cat >"${cni_conf_dir}/10-alpaca.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "alpaca",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${bridge_name}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "/var/lib/cni/networks",
        "ranges": [[{"subnet": "${pod_cidr}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

start_containerd() {
    cat >"${cluster_dir}/containerd.toml" <<EOF
version = 2
root = "${containerd_root}"
state = "${containerd_state}"
[grpc]
  address = "${containerd_sock}"
[ttrpc]
  address = "${containerd_state}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${pause_image}"
  # Root here lacks CAP_SYS_RESOURCE: without this runc fails every sandbox with
  # "can't get final child's PID from pipe: EOF" when it raises oom_score_adj.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${cni_conf_dir}"
EOF
    spawn containerd containerd --config "${cluster_dir}/containerd.toml"
    wait_for containerd 60 ctr --address "${containerd_sock}" version
}

start_control_plane() {
    local k8s_dir="$1" pki="${cluster_dir}/pki"
    # Every write by a ServiceAccount, with the client's address: the tests read it to tell which
    # operator replica wrote (exactly one may).
    cat >"${cluster_dir}/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
EOF
    spawn etcd "${k8s_dir}/etcd" --data-dir="${cluster_dir}/etcd" \
        --listen-client-urls=http://127.0.0.1:12379 --advertise-client-urls=http://127.0.0.1:12379 \
        --listen-peer-urls=http://127.0.0.1:12380 --initial-advertise-peer-urls=http://127.0.0.1:12380 \
        --name=alpaca --initial-cluster=alpaca=http://127.0.0.1:12380 \
        --unsafe-no-fsync=true --log-level=warn
    spawn kube-apiserver "${k8s_dir}/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:12379 \
        --bind-address="${node_ip}" --advertise-address="${node_ip}" --secure-port="${apiserver_port}" \
        --tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key" \
        --client-ca-file="${pki}/ca.crt" --token-auth-file="${pki}/tokens.csv" \
        --kubelet-client-certificate="${pki}/kubelet-client.crt" \
        --kubelet-client-key="${pki}/kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --anonymous-auth=false \
        --service-account-issuer="https://kubernetes.default.svc.${cluster_domain}" \
        --service-account-key-file="${pki}/sa.pub" --service-account-signing-key-file="${pki}/sa.key" \
        --service-cluster-ip-range="${service_cidr}" --allow-privileged=true \
        --audit-policy-file="${cluster_dir}/audit-policy.yaml" \
        --audit-log-path="${cluster_dir}/logs/audit.log" --audit-log-format=json
    wait_for "kube-apiserver" 120 "${k8s_dir}/kubectl" --kubeconfig "${cluster_dir}/kubeconfig" get --raw /readyz
    spawn kube-controller-manager "${k8s_dir}/kube-controller-manager" \
        --kubeconfig="${cluster_dir}/controller-manager.kubeconfig" \
        --authentication-kubeconfig="${cluster_dir}/controller-manager.kubeconfig" \
        --authorization-kubeconfig="${cluster_dir}/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --use-service-account-credentials=true \
        --root-ca-file="${pki}/ca.crt" --service-account-private-key-file="${pki}/sa.key" \
        --service-cluster-ip-range="${service_cidr}" --cluster-cidr="${pod_cidr}" \
        --leader-elect=false
    spawn kube-scheduler "${k8s_dir}/kube-scheduler" \
        --kubeconfig="${cluster_dir}/scheduler.kubeconfig" \
        --authentication-kubeconfig="${cluster_dir}/scheduler.kubeconfig" \
        --authorization-kubeconfig="${cluster_dir}/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false
}

start_node() {
    local k8s_dir="$1"
    : >"${cluster_dir}/resolv.conf"
    cat >"${cluster_dir}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${node_ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${cluster_dir}/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://${containerd_sock}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [${dns_service_ip}]
clusterDomain: ${cluster_domain}
# No upstream resolver: names outside the cluster resolve to nothing, nothing leaves the host.
resolvConf: ${cluster_dir}/resolv.conf
# No registry can give an evicted image back: never collect images, evict only when truly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
podPidsLimit: 4096
serializeImagePulls: false
EOF
    spawn kubelet "${k8s_dir}/kubelet" --config="${cluster_dir}/kubelet.yaml" \
        --kubeconfig="${cluster_dir}/kubelet.kubeconfig" \
        --root-dir="${kubelet_root}" --cert-dir="${cluster_dir}/kubelet-pki" \
        --node-ip="${node_ip}" --hostname-override="${node_name}"
    cat >"${cluster_dir}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: ${cluster_dir}/kube-proxy.kubeconfig}
hostnameOverride: ${node_name}
clusterCIDR: ${pod_cidr}
bindAddress: ${node_ip}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
    spawn kube-proxy "${k8s_dir}/kube-proxy" --config="${cluster_dir}/kube-proxy.yaml"
}

kubectl_() { "${k8s_dir}/kubectl" --kubeconfig "${cluster_dir}/kubeconfig" "$@"; }

apply_addons() {
    local extra_dir="$1" addons="${repo_root}/hack/cluster"
    local mod_cache to_dir
    mod_cache="$(go env GOMODCACHE)"
    to_dir="${mod_cache}/github.com/kubeflow/training-operator@$(pinned training-operator github.com/kubeflow/training-operator)"
    sed -e "s|@DNS_SERVICE_IP@|${dns_service_ip}|g" -e "s|@CLUSTER_DOMAIN@|${cluster_domain}|g" \
        -e "s|@ADDON_TAG@|${addon_tag}|g" "${addons}/coredns.yaml" | kubectl_ apply -f - >/dev/null
    sed -e "s|@LOCAL_PATH_ROOT@|${local_path_root}|g" -e "s|@HELPER_IMAGE@|${helper_image}|g" \
        -e "s|@ADDON_TAG@|${addon_tag}|g" "${addons}/local-path.yaml" | kubectl_ apply -f - >/dev/null
    # The training operator's own manifests (CRDs, RBAC, webhook, Deployment) from its module,
    # with the image built here. Its Worker pods wait for the Master's DNS name in an init
    # container (alpine by default, which no registry here serves): see nslookup_wrapper.
    # kustomize takes no absolute paths: a copy of the module's manifests sits beside the overlay.
    rm -rf "${cluster_dir}/training-operator"
    mkdir -p "${cluster_dir}/training-operator"
    cp -r "${to_dir}/manifests" "${cluster_dir}/training-operator/upstream"
    chmod -R u+w "${cluster_dir}/training-operator/upstream"
    cat >"${cluster_dir}/training-operator/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - upstream/overlays/standalone
images:
  - name: ghcr.io/kubeflow/training-v1/training-operator
    newName: localhost/alpaca/training-operator
    newTag: "${addon_tag}"
patches:
  - target: {kind: Deployment, name: training-operator}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: add
        path: /spec/template/spec/containers/0/args
        value: ["--enable-scheme=pytorchjob", "--pytorch-init-container-image=${init_image}"]
EOF
    kubectl_ apply --server-side -k "${cluster_dir}/training-operator" >/dev/null
}

cmd_up() {
    [[ ${EUID} -eq 0 ]] || die "needs root (containerd, iptables, cgroups)"
    local pkg
    for pkg in containerd runc iptables conntrack buildah; do
        command -v "${pkg}" >/dev/null || die "missing ${pkg}: apt-get install ${need_packages[*]}"
    done
    [[ -x /usr/lib/cni/bridge && -x /bin/busybox ]] || die "apt-get install ${need_packages[*]}"
    if [[ -d "${cluster_dir}/pids" ]]; then
        die "a cluster is already up in ${cluster_dir} (hack/cluster.sh down first)"
    fi
    local dirs
    dirs="$(cmd_build)"
    k8s_dir="$(sed -n 1p <<<"${dirs}")"
    local extra_dir
    extra_dir="$(sed -n 2p <<<"${dirs}")"
    local start=${SECONDS}
    mkdir -p "${cluster_dir}"
    printf '%s\n' "${k8s_dir}" >"${cluster_dir}/k8s-bin"
    # From here on a failure leaves a half-started cluster: take it all down again.
    trap 'log "start failed; logs in ${cluster_dir}/logs"; cmd_down --keep-logs' ERR
    write_certs
    write_kubeconfigs
    start_network
    addon_names "${extra_dir}"
    start_containerd
    make_addon_images "${extra_dir}"
    start_control_plane "${k8s_dir}"
    start_node "${k8s_dir}"
    wait_for "node ${node_name} Ready" 120 \
        kubectl_ wait --for=condition=Ready "node/${node_name}" --timeout=5s
    apply_addons "${extra_dir}"
    kubectl_ -n kube-system rollout status deployment/coredns --timeout=180s >&2
    kubectl_ -n local-path-storage rollout status deployment/local-path-provisioner --timeout=180s >&2
    kubectl_ -n kubeflow rollout status deployment/training-operator --timeout=240s >&2
    trap - ERR
    log "up in $((SECONDS - start))s; export KUBECONFIG=${cluster_dir}/kubeconfig"
    printf '%s\n' "${cluster_dir}/kubeconfig"
}

# --- stop ---------------------------------------------------------------------------------

stop_pid() {
    local name="$1" pid
    [[ -f "${cluster_dir}/pids/${name}" ]] || return 0
    pid="$(cat "${cluster_dir}/pids/${name}")"
    if kill -0 "${pid}" 2>/dev/null; then
        kill -TERM "${pid}" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "${pid}" 2>/dev/null || true
    fi
    rm -f "${cluster_dir}/pids/${name}"
}

remove_cgroups() {
    # Deepest first: a cgroup folder can only be removed once it has no children.
    local hierarchy
    for hierarchy in /sys/fs/cgroup/*/; do
        [[ -d "${hierarchy}kubepods" ]] || continue
        find "${hierarchy}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# Rules jumping to chains named PREFIX* are unhooked from every chain, then those chains are
# flushed and deleted: kube-proxy's KUBE-*, the portmap plugin's CNI-*.
remove_chains() {
    local table="$1" prefix="$2" rule chain
    local rules chains
    rules="$(iptables -t "${table}" -S 2>/dev/null | grep -E "^-A [A-Za-z0-9_-]+ .*-j ${prefix}" || true)"
    while read -r rule; do
        [[ -n "${rule}" ]] || continue
        # The rule as iptables printed it, with -A turned into -D; word splitting is intended.
        # shellcheck disable=SC2086
        eval "iptables -t ${table} -D ${rule#-A }" 2>/dev/null || true
    done <<<"${rules}"
    chains="$(iptables -t "${table}" -S 2>/dev/null | awk -v p="^${prefix}" '$1 == "-N" && $2 ~ p { print $2 }')"
    for chain in ${chains}; do
        iptables -t "${table}" -F "${chain}" 2>/dev/null || true
    done
    for chain in ${chains}; do
        iptables -t "${table}" -X "${chain}" 2>/dev/null || true
    done
}

remove_iptables() {
    local table
    for table in filter nat mangle; do
        remove_chains "${table}" KUBE-
    done
    remove_chains nat CNI-
    remove_chains filter CNI-
}

cmd_down() {
    local keep_logs=0 purge=0 arg
    for arg in "$@"; do
        case "${arg}" in
            --keep-logs) keep_logs=1 ;;
            --purge) purge=1 ;;
            *) die "down: unknown option ${arg} (known: --purge)" ;;
        esac
    done
    if [[ ! -d "${cluster_dir}" ]]; then
        ((purge)) && rm -rf "${containerd_root}"
        log "nothing to stop in ${cluster_dir}"
        return 0
    fi
    k8s_dir="$(cat "${cluster_dir}/k8s-bin" 2>/dev/null || true)"
    # Pods first, while the kubelet and containerd still run: their containers, mounts and
    # network namespaces go away the ordinary way.
    stop_pid kube-controller-manager
    stop_pid kube-scheduler
    if [[ -n "${k8s_dir}" ]] && kubectl_ get --raw /readyz >/dev/null 2>&1; then
        kubectl_ delete pods --all --all-namespaces --grace-period=1 --wait=true --timeout=60s \
            >/dev/null 2>&1 || true
    fi
    stop_pid kubelet
    stop_pid kube-proxy
    # Whatever the kubelet left: stop and remove every container and sandbox through the CRI.
    if [[ -S "${containerd_sock}" ]] && command -v crictl >/dev/null; then
        crictl --runtime-endpoint "unix://${containerd_sock}" rmp -fa >/dev/null 2>&1 || true
    fi
    if [[ -S "${containerd_sock}" ]]; then
        local task
        for task in $(ctr --address "${containerd_sock}" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr --address "${containerd_sock}" -n k8s.io tasks kill -s KILL "${task}" >/dev/null 2>&1 || true
        done
        sleep 1
        for task in $(ctr --address "${containerd_sock}" -n k8s.io containers ls -q 2>/dev/null); do
            ctr --address "${containerd_sock}" -n k8s.io tasks delete -f "${task}" >/dev/null 2>&1 || true
            ctr --address "${containerd_sock}" -n k8s.io containers delete "${task}" >/dev/null 2>&1 || true
        done
    fi
    stop_pid kube-apiserver
    stop_pid etcd
    stop_pid containerd
    # Shims outlive containerd by design; ours are the ones whose socket lives in our state dir.
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address ${containerd_sock}" || true); do
        kill -KILL "${pid}" 2>/dev/null || true
    done
    # Mounts under our folders (overlay rootfs, secrets, shm), deepest first.
    local mnt
    for mnt in $(awk '{ print $2 }' /proc/mounts | grep -E "^(${kubelet_root}|${containerd_root}|${containerd_state}|/run/netns/cni-|/var/run/netns/cni-)" | sort -r); do
        umount -l "${mnt}" 2>/dev/null || true
    done
    for mnt in /run/netns/cni-*; do
        [[ -e "${mnt}" ]] && { umount "${mnt}" 2>/dev/null; rm -f "${mnt}"; }
    done
    remove_cgroups
    remove_iptables
    ip link del "${bridge_name}" 2>/dev/null || true
    ip addr del "${node_ip}/32" dev lo 2>/dev/null || true
    if [[ -f "${cluster_dir}/ip_forward.saved" ]]; then
        cat "${cluster_dir}/ip_forward.saved" >/proc/sys/net/ipv4/ip_forward
    fi
    ((purge)) && rm -rf "${containerd_root}"
    rm -rf "${kubelet_root}" "${containerd_state}" "${local_path_root}" \
        /var/lib/cni/networks/alpaca /var/log/pods /var/log/containers \
        /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources /var/lib/kubelet/plugins_registry /var/lib/kubelet/plugins
    rmdir /var/lib/kubelet /var/lib/cni/networks /var/lib/cni 2>/dev/null || true
    if ((keep_logs)); then
        rm -rf "${cluster_dir:?}/pids"
    else
        rm -rf "${cluster_dir}"
    fi
    log "down"
}

cmd_status() {
    k8s_dir="$(cat "${cluster_dir}/k8s-bin")"
    kubectl_ get --raw /readyz >/dev/null
}

# Sourcing the script (for debugging one step) defines the functions and runs nothing.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) shift; cmd_down "$@" ;;
    status) cmd_status ;;
    *) sed -n "2,20p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
