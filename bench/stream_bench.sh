#!/bin/sh
# Expert streaming on the CPU: decode speed and hit rate against
# the experts' memory budget (all, 75%, 50%, 25%, the minimum) on the b1
# model, with the page cache dropped before each run (as root; the expert
# reads are O_DIRECT anyway), and the read throughput of fio's sequential
# O_DIRECT read of the same files measured in the same run (the best of eight
# passes). Time per token
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

# fio: the model's files read through once, 8 MB blocks, O_DIRECT, io_uring
# (the engine's own way), 8 and 32 in flight, one file at a time and all at
# once (the engine reads several files at once, and a virtual disk serves
# parallel streams faster); before the budget runs and again after them, as
# a virtual or shared disk drifts. The best pass is the bar the engine is
# held to. --readonly: fio lays out (overwrites) a file it finds too short.
fio_pass() {
        i=0
        if [ "$3" = each ]; then
                for f in "$model"/*.safetensors; do
                        drop
                        fio --readonly --name=seq --filename="$f" --rw=read --bs=8M --direct=1 --ioengine=io_uring \
                            --iodepth="$2" --output-format=json >"$out/fio-$1-$3-qd$2-$i.json"
                        i=$((i + 1))
                done
                return
        fi
        jobs=""
        for f in "$model"/*.safetensors; do
                jobs="$jobs --name=f$i --filename=$f"
                i=$((i + 1))
        done
        drop
        # shellcheck disable=SC2086 # one job per file, paths without spaces
        fio --readonly --rw=read --bs=8M --direct=1 --ioengine=io_uring --iodepth="$2" --group_reporting \
            --output-format=json $jobs >"$out/fio-$1-$3-qd$2-0.json"
}
fio_passes() {
        for qd in 8 32; do
                fio_pass "$1" $qd each
                fio_pass "$1" $qd all
        done
}
fio_passes before
for b in all 75% 50% 25% min; do
        drop
        "$run" --model "$model" --bench --max-tokens 32 --threads "$threads" --expert-memory "$b" >"$out/$b.json"
done
fio_passes after
/usr/bin/python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
passes = {}
for f in sorted(os.listdir(out)):
    if f.startswith("fio-"):
        passes.setdefault(f.rsplit("-", 1)[0], []).append(json.load(open(os.path.join(out, f)))["jobs"][0]["read"])
rates = {k: sum(r["io_bytes"] for r in v) / sum(r["runtime"] / 1e3 for r in v) / 1e9 for k, v in passes.items()}
fio_gbps = max(rates.values())
runs = {b: json.load(open(os.path.join(out, b + ".json"))) for b in ["all", "75%", "50%", "25%", "min"]}
compute_s = 1 / runs["all"]["decode_tokens_per_s"]
print(f"fio sequential O_DIRECT read of the model's files: **{fio_gbps:.2f} GB/s** (best of "
      + ", ".join(f"{k.removeprefix('fio-')} {v:.2f}" for k, v in rates.items()) + ")\n")
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
