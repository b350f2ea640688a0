#!/usr/bin/env bash
# Rewrite the lock: requirements/<extra>.txt, the exact versions (with hashes) that a fresh
# machine, the test command and the images install for each extra of pyproject.toml.
#
#   hack/lock.sh             # after editing pyproject.toml: keep every pin that still fits
#   hack/lock.sh --upgrade   # move every pin to the newest version the ranges allow
#
# test.txt is resolved first; every other file is resolved under it as a constraint, so one
# package has one version everywhere (an image runs what the tests ran). The lock is universal
# (markers for each platform and Python >= 3.11), so it serves Linux images and laptops alike.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=.venv/bin/uv
if [[ ! -x "${uv}" ]]; then
    echo "lock: ${uv} is missing; run hack/test.sh once (it installs the test extra, which has uv)" >&2
    exit 1
fi

upgrade=()
[[ "${1:-}" == "--upgrade" ]] && upgrade=(--upgrade)

compile() {
    local extra="$1"; shift
    UV_CUSTOM_COMPILE_COMMAND="hack/lock.sh" "${uv}" pip compile pyproject.toml --quiet \
        --extra "${extra}" --universal --python-version 3.11 --generate-hashes \
        --annotation-style line "$@" -o "requirements/${extra}.txt"
}

mkdir -p requirements
compile test "${upgrade[@]}"
for extra in operator generate train serve all; do
    compile "${extra}" --constraint requirements/test.txt
done
echo "lock: requirements/*.txt rewritten; install with: pip install --no-deps --require-hashes -r requirements/<extra>.txt" >&2
