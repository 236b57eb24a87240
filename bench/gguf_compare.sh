#!/bin/sh
# The engine against llama.cpp's llama-bench on the same GGUF files, end to
# end: the b1 shape (bench/README.md) written by mixtral-run --save as
# bf16, and quantized by mixtral-run --quantize TYPE --save as q8_0, q4_0
# and q4_k_m. For each file and round, interleaved: ours (mixtral-run
# --bench: a 512-token prefill, then 64 greedy tokens after the same 512
# tokens, --depth 512) and llama-bench on the same threads (pp512 from an
# empty context; tg64 at a depth of 512, where ours decodes). Prints one JSON line per run, then a
# table of the best of the rounds with the ratios, and decode as a
# fraction of the read bandwidth mixtral-run measures in the same run.
#
#   bench/gguf_compare.sh [THREADS [ROUNDS]]      (default 2 threads, 3 rounds)
#
# The peer comes from bench/build_peer.sh (PEER_DIR to reuse a build);
# the files go to BUILD/b1-gguf (BUILD: build, or $BUILD).
set -eu
threads=${1:-2}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
run=$build/tools/mixtral-run/mixtral-run
model=$build/b1-model
files=$build/b1-gguf
types="bf16 q8_0 q4_0 q4_k_m"
peer=$("$root/bench/build_peer.sh" | tail -n 1)
export LD_LIBRARY_PATH="$peer${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

[ -f "$model/config.json" ] || "$run" --make-demo "$model" --shape b1
mkdir -p "$files"
for t in $types; do
        f=$files/b1-$t.gguf
        [ -f "$f" ] && continue
        if [ "$t" = bf16 ]; then
                "$run" --model "$model" --save "$f"
        else
                "$run" --model "$model" --quantize "$t" --save "$f" --threads "$threads"
        fi
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $threads threads," \
        "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d)"
for r in $(seq "$rounds"); do
        for t in $types; do
                f=$files/b1-$t.gguf
                ours=$("$run" --model "$f" --bench --max-tokens 64 --depth 512 --threads "$threads")
                echo "{\"round\": $r, \"type\": \"$t\", \"who\": \"ours\", \"run\": $ours}" | tee -a "$log"
                pp=$("$peer/llama-bench" -m "$f" -t "$threads" -p 512 -n 0 -r 1 -o jsonl 2>/dev/null)
                tg=$("$peer/llama-bench" -m "$f" -t "$threads" -p 0 -n 64 -d 512 -r 1 -o jsonl 2>/dev/null)
                echo "{\"round\": $r, \"type\": \"$t\", \"who\": \"llama.cpp\", \"pp\": $pp, \"tg\": $tg}" |
                        tee -a "$log"
        done
done

python3 - "$log" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    b = best.setdefault(d["type"], {"pp": 0, "tg": 0, "ppp": 0, "ptg": 0, "frac": 0})
    if d["who"] == "ours":
        run = d["run"]
        b["pp"] = max(b["pp"], run["prefill_tokens_per_s"])
        if run["decode_tokens_per_s"] > b["tg"]:
            b["tg"], b["frac"] = run["decode_tokens_per_s"], run["fraction_of_bandwidth"]
            b["bytes"] = run["weight_bytes_per_token"]
    else:
        b["ppp"] = max(b["ppp"], d["pp"]["avg_ts"])
        b["ptg"] = max(b["ptg"], d["tg"]["avg_ts"])
print("| weights | prefill(512) tok/s ours / llama.cpp | ratio | decode tok/s ours / llama.cpp | ratio "
      "| weight MB per token | decode of read bandwidth |")
print("|---|---|---|---|---|---|---|")
for t, b in best.items():
    print("| %s | %.0f / %.0f | %.2fx | %.1f / %.1f | %.2fx | %.0f | %.2f |"
          % (t, b["pp"], b["ppp"], b["pp"] / b["ppp"], b["tg"], b["ptg"], b["tg"] / b["ptg"],
             b["bytes"] / 1e6, b["frac"]))
PY
