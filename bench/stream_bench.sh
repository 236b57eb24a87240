#!/bin/sh
# Expert streaming on the CPU (issue 7): decode speed and hit rate against
# the experts' memory budget (all, 75%, 50%, 25%, the minimum) on the b1
# model, with the page cache dropped before each run (as root; the expert
# reads are O_DIRECT anyway), and the read throughput of fio's sequential
# O_DIRECT read of the same files measured in the same run. Time per token
# is compared with max(compute time, missed bytes / fio's bandwidth): the
# compute time is the all-in-memory run's, the missed bytes what the run
# read per token. Prints a Markdown table; bench/README.md keeps results.
#
#   bench/stream_bench.sh [BUILD_DIR [MODEL_DIR [THREADS]]]
set -eu
build=${1:-build}
model=${2:-$build/b1-model}
threads=${3:-$(nproc)}
run=$build/tools/mixtral-run/mixtral-run
command -v fio >/dev/null || { echo "fio is needed (apt-get install fio)" >&2; exit 1; }
if [ ! -f "$model/config.json" ]; then
        mkdir -p "$model"
        "$run" --make-demo "$model" --shape b1
fi
drop() { sync; [ "$(id -u)" -eq 0 ] && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# fio: each file read through once, 8 MB blocks, 8 in flight, O_DIRECT,
# io_uring (the engine's own way, at its best).
i=0
for f in "$model"/*.safetensors; do
        drop
        fio --name=seq --filename="$f" --rw=read --bs=8M --direct=1 --ioengine=io_uring --iodepth=8 \
            --output-format=json >"$out/fio$i.json"
        i=$((i + 1))
done
for b in all 75% 50% 25% min; do
        drop
        "$run" --model "$model" --bench --max-tokens 32 --threads "$threads" --expert-memory "$b" >"$out/$b.json"
done
/usr/bin/python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
reads = [json.load(open(os.path.join(out, f)))["jobs"][0]["read"] for f in sorted(os.listdir(out)) if f.startswith("fio")]
fio_gbps = sum(r["io_bytes"] for r in reads) / sum(r["runtime"] / 1e3 for r in reads) / 1e9
runs = {b: json.load(open(os.path.join(out, b + ".json"))) for b in ["all", "75%", "50%", "25%", "min"]}
compute_s = 1 / runs["all"]["decode_tokens_per_s"]
print(f"fio sequential O_DIRECT read of the model's files: **{fio_gbps:.2f} GB/s**\n")
print("| budget | experts per layer | tokens/s | hit rate | read per token | streamed GB/s | of fio's | waiting on reads per token | next-layer guesses right | time per token / max(compute, read) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for b, d in runs.items():
    x = d.get("experts")
    step = d["batches"][0]
    per_tok = step["step_ms"] / 1e3
    read = step["expert_bytes_read_per_step"]
    bound = max(compute_s, read / (fio_gbps * 1e9))
    wait = step["read_wait_ms_per_step"]
    streamed = read / per_tok / 1e9
    print(f"| {b} | {x['slots_per_layer'] if x else 8} | {d['decode_tokens_per_s']:.1f} | "
          f"{step['expert_hit_rate']:.1%} | {read / 1e6:.1f} MB | {streamed:.2f} | {streamed / fio_gbps:.0%} | "
          f"{wait:.1f} ms | {x['prediction_accuracy']:.0%} | {per_tok / bound:.2f} |" if x else
          f"| {b} | 8 (mapped) | {d['decode_tokens_per_s']:.1f} | 100% | 0 | - | - | 0 | - | {per_tok / bound:.2f} |")
print(f"\nreads: {runs['min']['experts']['how']}; engine: {runs['min']['engine']}")
PY
