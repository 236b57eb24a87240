# Expert streaming on the GPU: sourced by tests/gpu/run.sh (its variables:
# report, out, run, check, demo, and section/fail).

section 'Expert streaming: CUDA with streamed experts against the CPU engine'
syn=/tmp/mx-syn-b1
rm -rf "$syn" && mkdir -p "$syn"
timeout 60 "$run" --synthetic b1 --layers 2 --make-demo "$syn" 2>>"$out/stream.log" || fail "writing the synthetic b1 checkpoint"
echo '| model | check | detail | error | result |' >>"$report"
echo '|---|---|---|---|---|' >>"$report"
stream_checks=("--model $demo" "--model tests/data/hf-odd" "--model $syn --prompt 40"
               "--model $demo --expert-memory min" "--model tests/data/hf-tiny --expert-memory 50% --host-cache min"
               "--model tests/data/hf-odd --expert-memory 25%" "--model tests/data/hf-odd --expert-memory 100%"
               "--model $syn --expert-memory 25% --prompt 40" "--model $syn --expert-memory min --host-cache min --prompt 70")
for args in "${stream_checks[@]}"; do
        # shellcheck disable=SC2086
        timeout 60 "$check" $args >>"$report" 2>>"$out/gpu-check.log" || fail "mixtral-gpu-check $args (exit $?)"
done
if command -v compute-sanitizer >/dev/null; then
        args="--model tests/data/hf-odd --expert-memory 25% --steps 3"
        # shellcheck disable=SC2086
        timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$check" $args >"$out/memcheck-stream.log" 2>&1
        rc=$?
        if [ $rc -ne 9 ] && [ $rc -ne 124 ] && grep -q 'ERROR SUMMARY: 0 errors' "$out/memcheck-stream.log"; then
                echo "- memcheck, mixtral-gpu-check $args: $(tail -1 "$out/memcheck-stream.log")" >>"$report"
        else
                fail "memcheck on mixtral-gpu-check $args: $(grep -m3 -E 'ERROR|Invalid|error' "$out/memcheck-stream.log" | tr '\n' ' ')"
        fi
fi

section 'mixtrald --device cuda with expert_memory = min, against mixtral-run on the CPU'
if [ -x build/daemon/mixtrald ] && [ -x build/client/mixtral ]; then
        sock=/tmp/mx-gpu-stream.sock
        psi=/tmp/mx-gpu-psi
        echo 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0' >$psi
        printf '[daemon]\nthreads=4\nexpert_memory=min\nmemory_pressure=%s\n' $psi >/tmp/mx-gpu-stream.conf
        build/daemon/mixtrald --model "$demo" --device cuda --socket $sock --config /tmp/mx-gpu-stream.conf \
                --state-directory /tmp/mx-gpu-stream-state --bus none 2>"$out/daemon-stream.log" &
        pid=$!
        for _ in $(seq 100); do [ -S $sock ] && break; sleep 0.1; done
        got=$(timeout 60 build/client/mixtral --socket $sock --raw --temperature 0 -n 24 --ignore-eos "Once upon a time" 2>&1)
        st=$(timeout 10 build/client/mixtral --socket $sock status 2>&1 | grep -E '^(experts|host cache):')
        # Host memory pressure: on a GPU the host cache gives memory back.
        echo 'some avg10=60.00 avg60=10.00 avg300=1.00 total=1' >$psi
        for _ in 1 2 3 4; do
                sleep 1
                timeout 20 build/client/mixtral --socket $sock --raw -n 1 "go" >/dev/null 2>&1
        done
        st2=$(timeout 10 build/client/mixtral --socket $sock status 2>&1 | grep -E '^host cache:')
        echo 'some avg10=0.00 avg60=0.00 avg300=0.00 total=1' >$psi
        want=$(timeout 60 "$run" --model "$demo" --temperature 0 -n 24 --ignore-eos --prompt "Once upon a time" 2>/dev/null)
        kill -TERM $pid; wait $pid
        echo "- daemon (cuda, streamed): \`$(printf %s "$got" | head -c 200 | tr '\n' ' ')\`" >>"$report"
        echo "- mixtral status: \`$(printf %s "$st" | tr '\n' ' ')\`" >>"$report"
        [ -n "$got" ] && [ "$got" = "$want" ] || fail "the streaming daemon on cuda and mixtral-run on the cpu differ (daemon log: $(tail -2 "$out/daemon-stream.log" | tr '\n' ' '))"
        printf %s "$st" | grep -q 'host cache:' || fail "mixtral status shows no host cache"
        echo "- under memory pressure: \`$st2\`" >>"$report"
        size() { sed -n 's/^host cache: *\(.*\) page-locked.*/\1/p'; }
        before=$(printf '%s\n' "$st" | size); after=$(printf '%s\n' "$st2" | size)
        [ -n "$after" ] && [ "$after" != "$before" ] ||
                fail "memory pressure did not shrink the host cache ($(grep -m2 'pressure\|host cache' "$out/daemon-stream.log" | tr '\n' ' '))"
fi

section 'Benchmark: streamed experts, full-size layers from disk (synthetic Mixtral-8x7B, 8 layers)'
big=/tmp/mx-syn-8l
if [ "$(df --output=avail -B1G /tmp | tail -1)" -lt 30 ]; then
        echo "- under 30 GB free in /tmp: skipped" >>"$report"
else
        rm -rf "$big" && mkdir -p "$big"
        t0=$(date +%s)
        timeout 150 "$run" --synthetic mixtral-8x7b --layers 8 --make-demo "$big" 2>>"$out/stream.log" ||
                fail "writing the 8-layer checkpoint"
        echo "- wrote $(du -sh "$big" | cut -f1) in $(( $(date +%s) - t0 )) s" >>"$report"
        for b in all 100% 75% 50% 25% min; do
                em=(--expert-memory "$b"); [ "$b" = all ] && em=()
                timeout 90 "$run" --model "$big" --device cuda "${em[@]}" --host-cache all --bench -n 24 --batch 1,8 \
                        >"$out/stream-${b%\%}.json" 2>>"$out/stream.log" || fail "streamed benchmark at $b (exit $?)"
        done
        # The disk's own rate, for the disk-bound run: fio where it is
        # installed, else one dd per layer's shard at once (O_DIRECT).
        t0=$(date +%s.%N)
        if command -v fio >/dev/null; then
                fio --name=seq --readonly --direct=1 --ioengine=io_uring --rw=read --bs=8M --iodepth=32 \
                        --filename="$(ls "$big"/model-*.safetensors | tail -n +2 | paste -sd:)" --output-format=json \
                        >"$out/fio.json" 2>&1
                python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["read"]["bw_bytes"]/1e9)' \
                        "$out/fio.json" >"$out/disk-GBps" || fail "fio"
                how="fio, 8 MB reads, 32 in flight, O_DIRECT, io_uring"
        else
                bytes=0
                for f in $(ls "$big"/model-*.safetensors | tail -n +2); do
                        dd if="$f" of=/dev/null bs=8M iflag=direct status=none &
                        bytes=$((bytes + $(stat -c %s "$f")))
                done
                wait
                python3 -c "import sys; print($bytes / ($(date +%s.%N) - $t0) / 1e9)" >"$out/disk-GBps"
                how="one dd per shard at once, 8 MB reads, O_DIRECT"
        fi
        echo "- the disk, read sequentially ($how): $(cat "$out/disk-GBps") GB/s" >>"$report"
        # Disk-bound: a host cache of the minimum, so misses are read from the files.
        timeout 90 "$run" --model "$big" --device cuda --expert-memory 25% --host-cache min --bench -n 8 \
                >"$out/stream-disk.json" 2>>"$out/stream.log" || fail "streamed benchmark from disk (exit $?)"
        python3 - "$out" >>"$report" <<'PY' || fail "streaming benchmark report"
import json, os, sys
out = sys.argv[1]
runs = {}
for b in ["all", "100%", "75%", "50%", "25%", "min", "disk"]:
    p = os.path.join(out, f"stream-{b.rstrip('%')}.json")
    if os.path.exists(p) and os.path.getsize(p):
        runs[b] = json.load(open(p))
base = runs.get("all")
up = next((d["upload_GBps"] for d in runs.values() if d.get("upload_GBps")), 0)
print(f"Pinned host-to-device copy, measured: **{up:.1f} GB/s**; device copy {base['memcpy_GBps']:.0f} GB/s.\n" if base else "")
print("| device budget | batch | experts per layer | tokens/s | device hit rate | uploaded per step | upload GB/s | of pinned copy | step / max(compute, upload) | guesses right |")
print("|---|---|---|---|---|---|---|---|---|---|")
for b, d in runs.items():
    x = d.get("experts")
    for i, s in enumerate(d["batches"]):
        compute = base["batches"][i]["step_ms"] / 1e3 if base and i < len(base["batches"]) else s["step_ms"] / 1e3
        upl = s.get("expert_bytes_uploaded_per_step", 0)
        step = s["step_ms"] / 1e3
        bound = max(compute, upl / (up * 1e9) if up else 0)
        print(f"| {b if b != 'disk' else '25%, host cache min (disk)'} | {s['batch']} | {x['slots_per_layer'] if x else 8} | "
              f"{s['tokens_per_s']:.1f} | {s['expert_hit_rate']:.1%} | {upl / 1e6:.0f} MB | {upl / step / 1e9:.1f} | "
              f"{(upl / step / 1e9) / up if up else 0:.0%} | {step / bound:.2f} | "
              f"{x['prediction_accuracy']:.0%} |" if x else
              f"| {b} (resident) | {s['batch']} | 8 | {s['tokens_per_s']:.1f} | 100% | 0 | - | - | 1.00 | - |")
disk = runs.get("disk")
bw = float(open(os.path.join(out, "disk-GBps")).read()) if os.path.exists(os.path.join(out, "disk-GBps")) else 0
if disk and bw:
    s = disk["batches"][0]
    rd, step = s.get("expert_bytes_read_per_step", 0), s["step_ms"] / 1e3
    compute = base["batches"][0]["step_ms"] / 1e3 if base else step
    print(f"\nFrom disk (25%, host cache min, batch 1): {rd / 1e6:.0f} MB read per step at {rd / step / 1e9:.2f} GB/s "
          f"= {rd / step / 1e9 / bw:.0%} of the disk's {bw:.2f} GB/s; step / max(compute, read / disk) = "
          f"{step / max(compute, rd / (bw * 1e9)):.2f}; waiting on reads {s.get('read_wait_ms_per_step', 0):.0f} ms of {step * 1e3:.0f} ms per step.")
for b, d in runs.items():
    if d.get("experts"):
        print(f"\n- {b}: {d['engine']}; {d['experts']['how']}")
PY
        rm -rf "$big"
fi
