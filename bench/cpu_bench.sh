#!/bin/sh
# The CPU benchmark (bench/README.md) on the b1 shape (791 M
# parameters, bf16, random weights made here): decode at one thread and at
# every core, as a fraction of the memory bandwidth measured in the same
# run, and prefill of 512 tokens against OpenBLAS sgemm on the same shapes.
# Prints JSON lines; bench/README.md keeps the results.
#
#   bench/cpu_bench.sh [BUILD_DIR [MODEL_DIR]]
set -eu
build=${1:-build}
model=${2:-$build/b1-model}
run=$build/tools/mixtral-run/mixtral-run
if [ ! -f "$model/config.json" ]; then
        mkdir -p "$model"
        "$run" --make-demo "$model" --shape b1
fi
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)"
for t in 1 "$(nproc)"; do
        for i in 1 2 3; do
                "$run" --model "$model" --bench --max-tokens 64 --threads "$t"
        done
        if [ -x "$build/bench/prefill-bench" ]; then
                "$build/bench/prefill-bench" "$model" "$t" 512
        fi
done
