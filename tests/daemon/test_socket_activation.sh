#!/bin/bash
# Socket activation as systemd does it, with systemd-socket-activate: the
# socket exists before the daemon; the first client starts it; the daemon
# serves on the inherited socket (LISTEN_FDS), never unlinks it, and stops
# cleanly on SIGTERM. With the protobuf socket alone it makes no HTTP
# socket of its own; passed the protobuf socket, the HTTP one (told apart
# by its path, http_socket) and a TCP one, it serves all three.
#
#   test_socket_activation.sh MIXTRALD MIXTRAL MIXTRAL_RUN DEMO_MODEL_DIR
set -u
daemon=$1 client=$2 run=$3 demo=$4
command -v systemd-socket-activate >/dev/null || { echo "SKIP: systemd-socket-activate is not installed"; exit 77; }
tmp=$(mktemp -d)
pid=
cleanup() {
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
        rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
fail() {
        echo "FAIL: $*" >&2
        failures=$((failures + 1))
}

printf '[daemon]\nthreads = 1\n' >"$tmp/conf"
systemd-socket-activate -l "$tmp/sock" \
        "$daemon" --model "$demo" --config "$tmp/conf" --state-directory "$tmp/state" --bus none 2>"$tmp/log" &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/sock" ] && break; sleep 0.05; done
[ -S "$tmp/sock" ] || fail "systemd-socket-activate made no socket"
grep -q "ready" "$tmp/log" && fail "the daemon started before any client came"

want=$("$run" --model "$demo" --threads 1 --prompt "Socket activation" --seed 11 --max-tokens 12)
got=$(timeout 60 "$client" --socket "$tmp/sock" --raw --seed 11 --max-tokens 12 "Socket activation")
rc=$?
[ "$rc" -eq 0 ] || fail "the first client exited $rc: $(cat "$tmp/log")"
[ "$got" = "$want" ] || fail "socket-activated output '$got' differs from mixtral-run's '$want'"
grep -q "listening on the protobuf socket from systemd" "$tmp/log" || fail "the daemon did not use the inherited socket: $(cat "$tmp/log")"
grep -q "HTTP over a Unix socket is off" "$tmp/log" || fail "the daemon did not say HTTP is off without its socket"
ls "$tmp"/*http* >/dev/null 2>&1 && fail "the daemon made an HTTP socket of its own under socket activation"
timeout 20 "$client" --socket "$tmp/sock" status >/dev/null || fail "a second client was not served"

# SIGTERM: it exits 0 and leaves the socket file it did not create.
stop_leaving() {
        kill -TERM "$pid"
        wait "$pid"
        local rc=$?
        pid=
        [ "$rc" -eq 0 ] || fail "the daemon exited $rc after SIGTERM"
        [ -S "$1" ] || fail "the daemon removed $1, which it did not create"
}
stop_leaving "$tmp/sock"

# All three sockets from "systemd", in an order that is not the usual one.
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
systemd-socket-activate -l "$tmp/http.sock" -l "127.0.0.1:$port" -l "$tmp/sock" \
        "$daemon" --model "$demo" --config "$tmp/conf" --state-directory "$tmp/state" --bus none \
        --http-socket "$tmp/http.sock" 2>"$tmp/log2" &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/sock" ] && [ -S "$tmp/http.sock" ] && break; sleep 0.05; done
# The first HTTP client starts the daemon and is told 503 (Retry-After)
# until the model is loaded.
for _ in $(seq 600); do
        curl -s --unix-socket "$tmp/http.sock" http://localhost/health | grep -q '"ok"' && break
        sleep 0.1
done
got=$(timeout 60 curl -sS --unix-socket "$tmp/http.sock" http://localhost/v1/completions \
        -d '{"prompt": "Socket activation", "seed": 11, "max_tokens": 12}')
[ "$(printf '%s' "$got" | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')" = "$want" ] ||
        fail "HTTP on the socket-activated Unix socket answered '$got', not '$want'"
key=$(timeout 20 "$client" --socket "$tmp/sock" key new activation) || fail "no API key from the protobuf socket"
code=$(timeout 20 curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/models")
[ "$code" = 200 ] || fail "the socket-activated TCP listener answered $code with a key"
code=$(timeout 20 curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models")
[ "$code" = 401 ] || fail "the socket-activated TCP listener answered $code without a key"
for what in "protobuf socket" "HTTP socket" "HTTP TCP listener"; do
        grep -q "listening on the $what from systemd" "$tmp/log2" || fail "the daemon did not take the $what: $(cat "$tmp/log2")"
done
stop_leaving "$tmp/http.sock"

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed; daemon log:" >&2
        cat "$tmp/log" "$tmp/log2" >&2 2>/dev/null
        exit 1
fi
echo "socket activation: ok"
