#!/usr/bin/env bash
# Build the project's images (images/*/Dockerfile) without a daemon or a registry, and load them
# into the test node's containerd when it runs (hack/cluster.sh up).
#
# Usage:
#   hack/images.sh [operator] [generate] [train] [serve]     # default: all four
#
# The base image is built here from Debian's packages (debootstrap bookworm: CPython 3.11 in a
# venv at /opt/python) and passed as --build-arg BASE; on a machine with a registry the same
# Dockerfiles build on their public default base. Everything is keyed by content:
#   base:   the debootstrap package list and this script's base recipe
#   images: the base, the Dockerfile, the lock file of its extra and the project's sources
# so an unchanged image is neither rebuilt nor re-imported. buildah keeps its layers (and the
# pip cache mount) between runs, and the node's image store outlives the cluster.
# Prints one line per image: NAME REFERENCE (e.g. `operator localhost/alpaca/operator:3f2a...`).
set -euo pipefail
shopt -s inherit_errexit

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
containerd_sock="${ALPACA_CONTAINERD_SOCK:-/run/alpaca-containerd/containerd.sock}"
# overlay is much faster than vfs for the multi-GB torch layers; vfs works everywhere.
storage_driver="${ALPACA_BUILDAH_DRIVER:-overlay}"

# debootstrap's --include resolves no dependencies, so the venv module (whose dependencies reach
# python3-distutils) is installed afterwards by apt inside the new root.
base_packages="python3.11,ca-certificates,passwd"
base_apt_packages="python3.11-venv"

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

bh() { buildah --storage-driver "${storage_driver}" "$@"; }

images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=(operator generate train serve)
for name in "${images[@]}"; do
    [[ -f "${repo_root}/images/${name}/Dockerfile" ]] || die "no images/${name}/Dockerfile"
done
for tool in buildah debootstrap; do
    command -v "${tool}" >/dev/null || die "missing ${tool}: apt-get install buildah debootstrap"
done

# The Debian mirror this machine's apt already uses (deb822 or one-line sources).
debian_mirror() {
    local uri
    uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [[ -n "${uri}" ]] || uri="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)"
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

image_exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

build_base() {
    local recipe key ref
    recipe="$(sed -n '/^build_base()/,/^}/p' "${BASH_SOURCE[0]}")"
    key="$(printf '%s\n%s\n%s\n' "${base_packages}" "${base_apt_packages}" "${recipe}" | sha256sum | cut -c1-12)"
    ref="localhost/alpaca/python-base:${key}"
    if image_exists "${ref}"; then
        printf '%s\n' "${ref}"
        return
    fi
    local start=${SECONDS} rootfs
    rootfs="$(mktemp -d /var/tmp/alpaca-base.XXXXXX)"
    log "debootstrap bookworm (${base_packages})"
    debootstrap --variant=minbase --include="${base_packages}" bookworm "${rootfs}" "$(debian_mirror)" >&2
    chroot "${rootfs}" apt-get install -y -qq --no-install-recommends ${base_apt_packages} >&2
    # pip and the lock's wheels go into a venv: Debian's own python refuses pip (PEP 668).
    chroot "${rootfs}" /usr/bin/python3.11 -m venv /opt/python
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
    local ctr
    ctr="$(bh from scratch)"
    bh copy "${ctr}" "${rootfs}/" / >/dev/null
    bh config --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd '["python"]' "${ctr}"
    bh commit --quiet "${ctr}" "${ref}" >/dev/null
    bh rm "${ctr}" >/dev/null
    rm -rf "${rootfs}"
    log "base ${ref} in $((SECONDS - start))s"
    printf '%s\n' "${ref}"
}

# The build context: only what the Dockerfiles copy (never .venv, .git or caches), as committed
# (HEAD): an image is then the build of a commit, whatever else the working tree holds right now.
# ALPACA_IMAGES_FROM=worktree builds the working tree instead, for trying a change unpublished.
make_context() {
    local context="$1" path
    local paths=(pyproject.toml README.md operator jobs seeds requirements images)
    if [[ "${ALPACA_IMAGES_FROM:-head}" == worktree ]]; then
        for path in "${paths[@]}"; do
            cp -a "${repo_root}/${path}" "${context}/"
        done
        find "${context}" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
        find "${context}" -name '*.egg-info' -prune -exec rm -rf {} + 2>/dev/null || true
    else
        git -C "${repo_root}" archive --format=tar HEAD -- "${paths[@]}" | tar -x -C "${context}"
    fi
}

context_hash() {
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12
}

# Once unpacked, an image's compressed or not layer blobs are needed by nobody here (no push, no
# re-pull): dropping them halves the disk the torch images take in the node, as containerd's
# own discard_unpacked_layers does for pulled images.
discard_layer_blobs() {
    local ref="$1" manifest digest
    manifest="$(ctr --address "${containerd_sock}" -n k8s.io images ls | awk -v r="${ref}" '$1 == r { print $3 }')"
    [[ -n "${manifest}" ]] || return 0
    for digest in $(ctr --address "${containerd_sock}" -n k8s.io content get "${manifest}" |
        python3 -c 'import json, sys; print(" ".join(l["digest"] for l in json.load(sys.stdin).get("layers", [])))'); do
        ctr --address "${containerd_sock}" -n k8s.io content rm "${digest}" >/dev/null 2>&1 || true
    done
}

# The image's layers whose snapshot the node already holds (unpacked by an earlier import: the
# locked dependencies, the torch layer that train and serve share), as "DIGEST SIZE" lines. The
# chain ID of layer n names its snapshot in containerd: sha256 of "chain(n-1) diff(n)".
node_held_layers() {
    local ref="$1"
    bh inspect --type image "${ref}" |
        python3 -c '
import hashlib, json, subprocess, sys
sock, graph = sys.argv[1], sys.argv[2]
diff_ids = json.load(sys.stdin)["OCIv1"]["rootfs"]["diff_ids"]
sizes = {layer["diff-digest"]: layer["diff-size"] for layer in json.load(open(graph + "/overlay-layers/layers.json")) if "diff-digest" in layer}
listing = subprocess.run(["ctr", "--address", sock, "-n", "k8s.io", "snapshots", "--snapshotter", "overlayfs", "ls"],
                         capture_output=True, text=True, check=True).stdout
held = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
chain = ""
for diff in diff_ids:
    chain = diff if not chain else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
    if chain not in held or diff not in sizes:
        break
    print(diff, sizes[diff])
' "${containerd_sock}" "$(bh info --format '{{.store.GraphRoot}}')"
}

# Into the node's containerd (namespace k8s.io), unless it holds the image already: its image
# store is a cache that outlives the cluster (hack/cluster.sh), so this costs once per image.
# Only the layers the node lacks travel: the push goes into an OCI layout where each layer the
# node holds is already "present" as a sparse file of its size (the builder then skips it and the
# manifest is the one a full push writes), and those stand-ins stay out of the archive; containerd
# unpacks a layer only when its snapshot is missing, so it never reads them.
load_into_node() {
    local ref="$1"
    [[ -S "${containerd_sock}" ]] || return 0
    if ctr --address "${containerd_sock}" -n k8s.io images ls -q | grep -qxF "${ref}"; then
        return 0
    fi
    local start=${SECONDS} layout digest size held=()
    layout="$(mktemp -d /var/tmp/alpaca-layout.XXXXXX)"
    mkdir -p "${layout}/blobs/sha256"
    while read -r digest size; do
        truncate -s "${size}" "${layout}/blobs/sha256/${digest#sha256:}"
        held+=("blobs/sha256/${digest#sha256:}")
    done < <(node_held_layers "${ref}")
    # Uncompressed: it is read once, right here, and gzip of the torch layer costs minutes.
    bh push --quiet --disable-compression "${ref}" "oci:${layout}:${ref}"
    rm -f "${held[@]/#/${layout}/}"
    tar -C "${layout}" -cf - . | ctr --address "${containerd_sock}" -n k8s.io images import - >/dev/null
    log "loaded ${ref} into the node in $((SECONDS - start))s ($(du -sh "${layout}" | cut -f1) sent, ${#held[@]} layers already there)"
    rm -rf "${layout}"
    discard_layer_blobs "${ref}"
    # Older builds of the same image: their unique layers go with them (containerd's GC), the
    # layers shared with this one (the locked dependencies) stay.
    local old config
    for old in $(ctr --address "${containerd_sock}" -n k8s.io images ls -q | grep -F "${ref%:*}:" | grep -vxF "${ref}"); do
        # The kubelet's runtime also names each image by its config digest: that name goes too.
        config="$(image_config "${old}")"
        # --sync: collect the unreferenced snapshots now, not at some later mutation.
        ctr --address "${containerd_sock}" -n k8s.io images rm --sync "${old}" ${config:+"${config}"} >/dev/null 2>&1 || true
    done
}

image_config() {
    local manifest
    manifest="$(ctr --address "${containerd_sock}" -n k8s.io images ls | awk -v r="$1" '$1 == r { print $3 }')"
    [[ -n "${manifest}" ]] || return 0
    ctr --address "${containerd_sock}" -n k8s.io content get "${manifest}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"])'
}

node_has() {
    [[ -S "${containerd_sock}" ]] &&
        ctr --address "${containerd_sock}" -n k8s.io images ls -q | grep -qxF "$1"
}

# This machine's trust store and pip settings (a TLS-inspecting proxy's CA, a package index)
# hold inside the build too: mounted for the RUN steps only, never part of an image.
build_mounts=()
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    build_mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
if [[ -f /etc/pip.conf ]]; then
    build_mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
fi

base_ref="$(build_base)"
context="$(mktemp -d /var/tmp/alpaca-context.XXXXXX)"
trap 'rm -rf "${context}"' EXIT
make_context "${context}"
sources_key="$(context_hash "${context}")"

for name in "${images[@]}"; do
    key="$(printf '%s\n%s\n%s\n' "${base_ref}" "${sources_key}" "${name}" | sha256sum | cut -c1-12)"
    ref="localhost/alpaca/${name}:${key}"
    # Built and loaded before (the node's image store outlives buildah's layers if need be).
    if node_has "${ref}"; then
        printf '%s %s\n' "${name}" "${ref}"
        continue
    fi
    if ! image_exists "${ref}"; then
        start=${SECONDS}
        log "building ${ref}"
        # --network host: RUN steps use the machine's network as it is; buildah's default would
        # make a bridge with addresses of its own choosing (10.88.0.0/16 for netavark).
        bh bud --quiet --layers --force-rm --network host --build-arg "BASE=${base_ref}" "${build_mounts[@]}" \
            -f "${context}/images/${name}/Dockerfile" -t "${ref}" "${context}" >&2
        log "built ${name} in $((SECONDS - start))s"
        # Older builds of this image: untagged, their layers shared with this one stay cached.
        for old in $(bh images --format '{{.Name}}:{{.Tag}}' | grep -F "localhost/alpaca/${name}:" | grep -vxF "${ref}"); do
            bh rmi "${old}" >/dev/null 2>&1 || true
        done
    fi
    load_into_node "${ref}"
    printf '%s %s\n' "${name}" "${ref}"
done
