#!/bin/sh
# The KV cache's table (bench/README.md) on the b1 shape, CPU, 2 threads:
# time to first token for a 20-token message after 0, 1k, 4k and 16k
# tokens of history, from the prefix cache and without it (the cacheless
# 16k row alone takes minutes), and 4k-token sequences per 1 GiB of KV
# before and after. Run it on a quiet machine.
#
#   bench/kv_bench.sh [BUILD_DIR [THREADS]]
set -eu
build=${1:-build}
threads=${2:-2}
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
        "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)"
exec "$build/bench/kv-bench" --synthetic b1 --threads "$threads" --history 0,1024,4096,16384 --runs 3 \
        --budget 1G --seq 4096 --shared 1024
