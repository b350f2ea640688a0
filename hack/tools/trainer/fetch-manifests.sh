#!/usr/bin/env bash
# Copies Kubeflow Trainer's TrainJob CRD and its `torch-distributed` ClusterTrainingRuntime out of
# the Go module github.com/kubeflow/trainer/v2 at the version go.mod beside this script pins (the
# module the controller is built from, with JobSet), into manifests/, and checks each file against
# SHA256SUMS. `go mod download` verifies the module itself
# against the Go checksum database, so the files are upstream's, byte for byte.
#
#   hack/tools/trainer/fetch-manifests.sh          # fetch (network) and check
#   hack/tools/trainer/fetch-manifests.sh --check  # check the committed copies only (offline)
set -euo pipefail

MODULE=github.com/kubeflow/trainer/v2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="$(awk -v m="$MODULE" '$1 == m { print $2; exit }' "$HERE/go.mod")"
OUT="$HERE/manifests"
FILES=(
  manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml
  manifests/base/runtimes/torch_distributed.yaml
)

if [[ "${1:-}" != "--check" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  # A throwaway module, so the download neither needs nor touches any go.mod of the project.
  (cd "$scratch" && go mod init fetch.invalid >/dev/null 2>&1)
  dir="$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$OUT"
  for file in "${FILES[@]}"; do
    install -m 0644 "$dir/$file" "$OUT/$(basename "$file")"
  done
fi
cd "$OUT" && sha256sum --check --strict "$HERE/SHA256SUMS"
