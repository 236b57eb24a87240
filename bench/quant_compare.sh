#!/bin/bash
# Our matrix kernels against llama.cpp's on the same shape (an expert's w2 of
# Mixtral, 4096 x 14336), the same weight types and threads, interleaved:
# quant-bench (bench/quant_bench.c) and llama.cpp's
# `test-backend-ops perf -o MUL_MAT -b CPU` (built by bench/build_peer.sh),
# for 1 token (decode) and 512 (prefill); bf16p is our bf16 packed at
# start-up (MX_BF16P) against their bf16. Prints a markdown table of the
# best of ROUNDS rounds, ratios ours / llama.cpp (decode by time, prefill by
# GFLOP/s), and decode as a fraction of the measured read bandwidth.
#
#   bench/quant_compare.sh [THREADS [ROUNDS [BUILD_DIR]]]
#
# test-backend-ops runs the CPU backend on half the cores that get_nprocs()
# reports; a preloaded shim (compiled here from a few lines below) makes it
# report twice THREADS. Timings on shared machines are indicative only.
set -euo pipefail
threads=${1:-2}
rounds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${3:-$root/build}
peer=$("$root/bench/build_peer.sh" | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

shim=$(dirname "$peer")/nprocs_shim.so
if [ ! -f "$shim" ]; then
        cat > "$work/shim.c" <<'EOF'
#include <stdlib.h>
int get_nprocs(void) { const char *e = getenv("MX_NPROCS"); return e ? atoi(e) : 2; }
int get_nprocs_conf(void) { return get_nprocs(); }
EOF
        cc -shared -fPIC -O2 "$work/shim.c" -o "$shim"
fi

for r in $(seq "$rounds"); do
        "$build/bench/quant-bench" "$threads" 4096 14336 BF16,BF16P,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K >> "$work/ours.jsonl"
        MX_NPROCS=$((2 * threads)) LD_PRELOAD="$shim" "$peer/test-backend-ops" perf -o MUL_MAT -b CPU \
                -p 'type_a=(bf16|q8_0|q4_0|q4_K|q5_K|q6_K),type_b=f32,m=4096,n=(1|512),k=14336,' >> "$work/peer.txt"
        echo "round $r of $rounds done" >&2
done

python3 - "$work/ours.jsonl" "$work/peer.txt" "$threads" <<'EOF'
import json, re, sys
ours, peer = {}, {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if "type" not in d:  # the line of instruction ceilings
        continue
    t = d["type"].lower().replace("_k", "_K")
    o = ours.setdefault(t, {"dec": 1e9, "pre": 0.0, "read": d["read_GBps"], "bytes": d["bytes"]})
    o["dec"] = min(o["dec"], d["decode_ms"])
    o["pre"] = max(o["pre"], d["prefill512_GFLOPs"])
for line in open(sys.argv[2]):
    m = re.search(r"type_a=(\w+),type_b=f32,m=4096,n=(\d+),k=14336.*?(\d+\.\d+) us/run.*?(\d+\.\d+) GFLOPS", line)
    if m:
        p = peer.setdefault(m.group(1), {"dec": 1e9, "pre": 0.0})
        if m.group(2) == "1":
            p["dec"] = min(p["dec"], float(m.group(3)) / 1e3)
        else:
            p["pre"] = max(p["pre"], float(m.group(4)))
print("%s threads, 4096 x 14336, best of rounds" % sys.argv[3])
print("| type | decode ms (ours / llama.cpp) | decode ratio | ours GB/s (of read) | prefill(512) GFLOP/s (ours / llama.cpp) | prefill ratio |")
print("|---|---|---|---|---|---|")
for t in ["bf16", "bf16p", "q8_0", "q4_0", "q4_K", "q5_K", "q6_K"]:
    o, p = ours.get(t), peer.get("bf16" if t == "bf16p" else t)
    if not o or not p:
        continue
    gbps = o["bytes"] / o["dec"] / 1e6
    print("| %s | %.2f / %.2f | %.2fx | %.1f (%.0f%%) | %.0f / %.0f | %.2fx |"
          % (t, o["dec"], p["dec"], p["dec"] / o["dec"], gbps, 100 * gbps / o["read"], o["pre"], p["pre"],
             o["pre"] / p["pre"]))
EOF
