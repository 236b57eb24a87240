#!/bin/sh
# The HTTP API against the protobuf socket: the same streamed requests from
# 1, 4 and 16 clients at once through each transport of one real mixtrald,
# on the demo model (the transports' own cost shows) and the b1 model (made
# here if absent; the engine's cost dominates). One JSON line per client
# count; bench/README.md keeps the results.
#
#   bench/http_bench.sh [BUILD_DIR [TOKENS [REPS [THREADS]]]]
set -eu
build=${1:-build}
tokens=${2:-32}
reps=${3:-5}
threads=${4:-$(nproc)}
run=$build/tools/mixtral-run/mixtral-run
b1=$build/b1-model
if [ ! -f "$b1/config.json" ]; then
        mkdir -p "$b1"
        "$run" --make-demo "$b1" --shape b1
fi
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)"
for model in "$build/demo-model" "$b1"; do
        echo "# $model"
        "$build/bench/http-bench" "$build/daemon/mixtrald" "$model" "$tokens" "$threads" "$reps" 1 4 16
done
