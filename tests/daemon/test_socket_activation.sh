#!/bin/bash
# Socket activation as systemd does it, with systemd-socket-activate: the
# socket exists before the daemon; the first client starts it; the daemon
# serves on the inherited socket (LISTEN_FDS), never unlinks it, and stops
# cleanly on SIGTERM.
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
grep -q "listening on the socket from systemd" "$tmp/log" || fail "the daemon did not use the inherited socket: $(cat "$tmp/log")"
timeout 20 "$client" --socket "$tmp/sock" status >/dev/null || fail "a second client was not served"

kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
[ "$rc" -eq 0 ] || fail "the daemon exited $rc after SIGTERM"
[ -S "$tmp/sock" ] || fail "the daemon removed a socket it did not create"

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed; daemon log:" >&2
        cat "$tmp/log" >&2
        exit 1
fi
echo "socket activation: ok"
