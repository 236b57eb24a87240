#!/bin/sh
# Builds the peer we measure against: llama.cpp as vendored in PyPI's
# llama-cpp-python source package (pinned), CPU only, for this machine
# (native), without network features: llama-bench, llama-server,
# llama-quantize and test-backend-ops. Nothing of llama.cpp enters this
# repository: the sdist is downloaded, unpacked and built under build/peer/
# (or $PEER_DIR). Idempotent: a second run downloads, unpacks and
# configures nothing and rebuilds only what changed.
#
#   bench/build_peer.sh            then build/peer/bin/llama-bench ...
#
# Prints the directory of the binaries on its last line.
set -eu
version=0.3.36
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${PEER_DIR:-$root/build/peer}
jobs=${JOBS:-2}
sdist=$dir/llama_cpp_python-$version.tar.gz
src=$dir/llama_cpp_python-$version/vendor/llama.cpp
mkdir -p "$dir"

if [ ! -f "$sdist" ]; then
        python3 -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
                -d "$dir" "llama-cpp-python==$version" >&2
fi
if [ ! -f "$src/CMakeLists.txt" ]; then
        tar -xzf "$sdist" -C "$dir"
fi
if [ ! -f "$dir/build/CMakeCache.txt" ]; then
        cmake -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
                -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=ON \
                -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=OFF >&2
fi
cmake --build "$dir/build" -j "$jobs" --target llama-bench llama-server llama-quantize test-backend-ops >&2
echo "$dir/build/bin"
