#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the sources inside the llama-cpp-python sdist on PyPI, once,
# into ~/.cache/alpaca-operator/bin/llama-server (the peer bench/serve_throughput.py races).
#
#   bench/build_llama_server.sh            # about 30-60 minutes on 2 cores
#
# GGML_NATIVE=OFF with AVX2/FMA/F16C: a native build also enables AVX-512/AMX code paths that fault
# in some virtual machines whose CPUs advertise them.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${ALPACA_CACHE:-$HOME/.cache/alpaca-operator}"
WORK="$CACHE/llama-cpp"
BIN="$CACHE/bin/llama-server"
PYTHON="${PYTHON:-python3}"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
mkdir -p "$WORK/src" "$CACHE/bin"
if [[ ! -f "$WORK/src/llama_cpp_python-$VERSION.tar.gz" ]]; then
  "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK/src" >&2
fi
tar -xzf "$WORK/src/llama_cpp_python-$VERSION.tar.gz" -C "$WORK/src"
SRC="$WORK/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=ON \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2
nice -n 15 cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
cp "$WORK/build/bin/llama-server" "$BIN"
echo "$BIN"
