#!/bin/bash
# GPU checks (docs/testing.md), on a CUDA machine, with binaries built
# elsewhere and carried in build/ (plus any shared library the machine
# lacks on LD_LIBRARY_PATH; cuBLAS is found on the machine and loaded at
# run time). In under 8 minutes:
#
#   1. devices: the self-test kernel on each GPU;
#   2. correctness: the CUDA engine against the CPU engine
#      (mixtral-gpu-check) on the demo model, the two transformers
#      checkpoints of tests/data, and one and two layers of the synthetic
#      full-size Mixtral: prompt logits at every position and greedy steps
#      (relative L2 under 1e-2, ids equal), batched against alone;
#   3. compute-sanitizer memcheck on a short run;
#   4. benchmark: the synthetic Mixtral (as many layers as fit), decode at
#      batch 1, 8 and 32, prefill of 512 tokens, against a device copy and
#      a cuBLAS GEMM measured in the same run;
#   5. the KV cache (also alone: kv): time to first token for a 20-token
#      message after 0, 1k, 4k and 16k tokens of history, from the prefix
#      cache and without it, and 4k-token sequences per 8 GiB of KV, on
#      the synthetic Mixtral (bench/kv_bench.c);
#   6. expert streaming: the checks of 2 with experts streamed (budgets
#      down to the minimum, host caches down to the minimum), memcheck on
#      one, the daemon streaming, and the curve of decode speed against
#      the budget for full-size layers written to disk (synthetic Mixtral,
#      8 layers, 23 GB), against the pinned host-to-device copy bandwidth.
#
#   tests/gpu/run.sh [all|stream|kv]  (stream: 1 and 6 only, about 4 minutes;
#                                      kv: 1 and 5 only)
#
# Writes $OUT/gpu-report.md (or ./gpu-report.md), with the raw outputs
# beside it, and exits non-zero when a check fails.
set -u
mode=${1:-all}
cd "$(dirname "$0")/../.."
out=${OUT:-.}
report=$out/gpu-report.md
run=build/tools/mixtral-run/mixtral-run
check=build/tests/gpu/mixtral-gpu-check
demo=${MX_DEMO_MODEL:-build/demo-model}
status=0

# cuBLAS: the machine's own (CUDA toolkit, or the Python wheels).
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.1[23]'; then
        for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
                 $(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/*/lib 2>/dev/null); do
                if ls "$d"/libcublas.so.1[23] >/dev/null 2>&1; then
                        export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
                        break
                fi
        done
fi

section() { printf '\n## %s\n\n' "$1" >>"$report"; }
fail() { status=1; echo "- **FAIL**: $*" >>"$report"; }

{
        echo "# GPU report"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "- commit: ${MX_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
        echo "- card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
        echo "- cuBLAS: $(ldconfig -p 2>/dev/null | grep -o 'libcublas.so.1[23]' | head -1)${LD_LIBRARY_PATH:+ (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)}"
} >"$report"

section 'mixtral-run --devices'
echo '```' >>"$report"
timeout 60 "$run" --devices >>"$report" 2>&1
echo '```' >>"$report"
grep -q '^cuda:0: .*self-test passed' "$report" || fail "device self-test"

if [ "$mode" = all ]; then
section 'Correctness: CUDA against the CPU engine'
echo '| model | check | detail | error | result |' >>"$report"
echo '|---|---|---|---|---|' >>"$report"
checks=("--model $demo" "--model tests/data/hf-tiny" "--model tests/data/hf-odd"
        "--model tests/data/hf-odd --kv-type f32"
        "--synthetic b1 --layers 2" "--synthetic mixtral-8x7b --layers 1 --prompt 40")
for args in "${checks[@]}"; do
        # shellcheck disable=SC2086
        timeout 90 "$check" $args >>"$report" 2>>"$out/gpu-check.log" || fail "mixtral-gpu-check $args (exit $?)"
done

section 'compute-sanitizer memcheck'
if command -v compute-sanitizer >/dev/null; then
        for args in "--model tests/data/hf-odd" "--model $demo --prompt 12 --steps 2"; do
                # shellcheck disable=SC2086
                timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$check" $args \
                        >"$out/memcheck.log" 2>&1
                rc=$?
                # 9: memcheck found errors; 124: timeout; otherwise the checks' own verdict (above).
                if [ $rc -ne 9 ] && [ $rc -ne 124 ] && grep -q 'ERROR SUMMARY: 0 errors' "$out/memcheck.log"; then
                        echo "- mixtral-gpu-check $args: $(tail -1 "$out/memcheck.log")" >>"$report"
                else
                        fail "memcheck on mixtral-gpu-check $args: $(grep -m3 -E 'ERROR|Invalid|error' "$out/memcheck.log" | tr '\n' ' ')"
                fi
        done
else
        echo "- compute-sanitizer is not installed here" >>"$report"
fi

section 'mixtrald --device cuda: one request through mixtral, against mixtral-run on the CPU'
if [ -x build/daemon/mixtrald ] && [ -x build/client/mixtral ]; then
        sock=/tmp/mx-gpu.sock
        printf '[daemon]\nthreads=4\n' >/tmp/mx-gpu.conf
        build/daemon/mixtrald --model "$demo" --device cuda --socket $sock --config /tmp/mx-gpu.conf \
                --state-directory /tmp/mx-gpu-state --bus none 2>"$out/daemon.log" &
        pid=$!
        for _ in $(seq 100); do [ -S $sock ] && break; sleep 0.1; done
        got=$(timeout 60 build/client/mixtral --socket $sock --raw --temperature 0 -n 24 --ignore-eos "Once upon a time" 2>&1)
        want=$(timeout 60 "$run" --model "$demo" --temperature 0 -n 24 --ignore-eos --prompt "Once upon a time" 2>/dev/null)
        kill -TERM $pid; wait $pid
        echo "- daemon (cuda): \`$(printf %s "$got" | head -c 200 | tr '\n' ' ')\`" >>"$report"
        echo "- mixtral-run (cpu): \`$(printf %s "$want" | head -c 200 | tr '\n' ' ')\`" >>"$report"
        [ -n "$got" ] && [ "$got" = "$want" ] || fail "the daemon on cuda and mixtral-run on the cpu differ (daemon log: $(tail -2 "$out/daemon.log" | tr '\n' ' '))"
else
        echo "- mixtrald or mixtral not carried: skipped" >>"$report"
fi

section 'Benchmark: synthetic Mixtral-8x7B (random bf16 weights made on the GPU)'
timeout 150 "$run" --synthetic mixtral-8x7b --device cuda --bench --batch 1,8,32 -n 32 \
        >"$out/bench.json" 2>"$out/bench.log"
rc=$?
cat "$out/bench.log" | grep -v '^loading' >>"$report"
if [ $rc -ne 0 ]; then
        fail "benchmark (exit $rc): $(tail -3 "$out/bench.log")"
else
        python3 - "$out/bench.json" >>"$report" <<'PY' || fail "benchmark report"
import json, sys
d = json.load(open(sys.argv[1]))
bw, gemm = d["memcpy_GBps"], d["gemm_TFLOPs"]
print(f"engine: {d['engine']}; GPU memory in use {d['gpu_memory_used_GiB']:.1f} GiB\n")
print(f"Ceilings measured in the same run: device-to-device copy **{bw:.0f} GB/s** (read + written), "
      f"cuBLAS bf16 GEMM 8192^3 **{gemm:.0f} TFLOP/s**.\n")
print("| batch | tokens/s | step ms | bytes read per step | achieved GB/s | of copy bandwidth | step / (bytes / bandwidth) |")
print("|---|---|---|---|---|---|---|")
for b in d["batches"]:
    print(f"| {b['batch']} | {b['tokens_per_s']:.1f} | {b['step_ms']:.2f} | "
          f"{(b['weight_bytes_per_step'] + b['kv_bytes_per_step']) / 1e9:.2f} GB | {b['achieved_GBps']:.0f} | "
          f"{b['fraction_of_bandwidth']:.1%} | {b['step_over_bound']:.2f} |")
print(f"\nPrefill of {d['prompt_tokens']} tokens: {d['prefill_tokens_per_s']:.0f} tokens/s, "
      f"{d['prefill_TFLOPs']:.0f} TFLOP/s = {d['prefill_fraction_of_gemm']:.1%} of the GEMM rate.\n")
b1 = d["batches"][0]; b32 = d["batches"][-1]
print("| target | measured | met |\n|---|---|---|")
print(f"| batch-1 decode >= 80% of copy bandwidth | {b1['fraction_of_bandwidth']:.1%} | {'yes' if b1['fraction_of_bandwidth'] >= 0.8 else 'no'} |")
print(f"| prefill >= 40% of GEMM rate | {d['prefill_fraction_of_gemm']:.1%} | {'yes' if d['prefill_fraction_of_gemm'] >= 0.4 else 'no'} |")
print(f"| batch-{b32['batch']} step within 1.25x of bytes / bandwidth | {b32['step_over_bound']:.2f}x | {'yes' if b32['step_over_bound'] <= 1.25 else 'no'} |")
PY
fi

fi # mode all

if [ "$mode" = all ] || [ "$mode" = kv ]; then
section 'The KV cache: time to first token after a history, and sequences per KV budget'
# As many of the synthetic Mixtral's layers as leave room for 16k of history.
layers=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 |
         awk '{ l = int(($1 / 1024 - 12) / 2.9); print l > 32 ? 32 : l < 1 ? 1 : l }')
timeout 400 build/bench/kv-bench --synthetic mixtral-8x7b --layers "${layers:-8}" --device cuda --budget 8G \
        >"$out/kv-bench.md" 2>"$out/kv-bench.log"
rc=$?
cat "$out/kv-bench.md" >>"$report"
[ $rc -eq 0 ] || fail "kv-bench (exit $rc): $(tail -3 "$out/kv-bench.log" | tr '\n' ' ')"
fi

[ "$mode" = kv ] || . tests/gpu/stream.sh

echo >>"$report"
echo "- result: $([ $status -eq 0 ] && echo PASS || echo FAIL)" >>"$report"
# The device tool brings back eight files at most: the report, and the
# raw outputs packed in one.
if [ -n "${OUT:-}" ]; then
        (cd "$out" && ls | grep -vx -e gpu-report.md -e raw.tar.gz -e raw.list >raw.list &&
                tar czf raw.tar.gz -T raw.list && xargs rm -f <raw.list && rm -f raw.list)
fi
cat "$report"
exit $status
