#!/bin/sh
# Continuous batching on the CPU: the same requests one at a time
# and all at once through a real mixtrald on the b1 model (made here if
# absent), for several client counts. One JSON line per run; bench/README.md
# keeps the results.
#
#   bench/daemon_bench.sh [BUILD_DIR [MODEL_DIR [TOKENS]]]
set -eu
build=${1:-build}
model=${2:-$build/b1-model}
tokens=${3:-32}
run=$build/tools/mixtral-run/mixtral-run
if [ ! -f "$model/config.json" ]; then
        mkdir -p "$model"
        "$run" --make-demo "$model" --shape b1
fi
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)"
for clients in 1 4 8 16; do
        "$build/bench/daemon-bench" "$build/daemon/mixtrald" "$model" "$clients" "$tokens" "$(nproc)"
done
