#!/bin/sh
# The daemon as a server against llama.cpp's llama-server on the same GGUF
# file, the same threads, interleaved: 1, 4 and 16 clients at once, each a
# short prompt and 32 greedy tokens (EOS ignored); aggregate tokens/s. One
# JSON line per run; bench/README.md keeps the results.
#
#   bench/serve_compare.sh BUILD_DIR MODEL.gguf [THREADS]
#
# llama-server comes from bench/build_peer.sh (PEER_DIR as there).
set -eu
build=$1 model=$2 threads=${3:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
peer=$("$here/build_peer.sh" | tail -1)
port=$((20000 + $$ % 20000))
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $threads threads," \
        "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d), $(basename "$model")"
for clients in 1 4 16; do
        echo "mixtrald: $("$build/bench/daemon-bench" "$build/daemon/mixtrald" "$model" "$clients" 32 "$threads")"
        "$peer/llama-server" -m "$model" -t "$threads" -tb "$threads" -np "$clients" -c $((clients * 512)) \
                --host 127.0.0.1 --port "$port" --no-webui >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 600); do
                curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
                sleep 0.2
        done
        python3 "$here/llama_server_load.py" "$port" 1 4 >/dev/null # warm-up: pages the weights in
        echo "llama-server: $(python3 "$here/llama_server_load.py" "$port" "$clients" 32)"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
done
