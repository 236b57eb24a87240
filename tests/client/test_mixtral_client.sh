#!/bin/bash
# mixtral, the thin client, as a user types it: usage and exit statuses
# without a daemon; against fake-mixtrald, what the real daemon does not do
# on cue (a status while loading, a connection broken mid-answer, a daemon
# that does not come back) and exactly what chat sends (multi-line messages,
# pastes on a pseudo-terminal); then against the real mixtrald serving the
# demo model: the same text as mixtral-run token for token (raw, chat
# template, system prompt, piped input, a conversation, one across a daemon
# restart), JSON events, status, quota and its notes, the daemon's errors as
# exit statuses, input too large, and Ctrl-C.
#
#   test_mixtral_client.sh MIXTRAL MIXTRALD MIXTRAL_RUN DEMO_MODEL_DIR FAKE_MIXTRALD
#
# Exits 77 (skipped) after the client-only checks when MIXTRALD is not built.
set -u
client=$1 daemon=$2 run=$3 demo=$4 fake=$5
pty_chat=$(dirname "$0")/pty_chat.py
tmp=$(mktemp -d)
failures=0
daemon_pids=()
fake_pids=()
unset MIXTRALD_SOCKET XDG_STATE_HOME
export HOME=$tmp/home

fail() {
        echo "FAIL: $*" >&2
        failures=$((failures + 1))
}

# expect CODE NEEDLE -- COMMAND...: exit status CODE, NEEDLE in stdout+stderr;
# standard input is empty unless the caller redirects it.
expect() {
        local code=$1 needle=$2
        shift 3
        local out
        out=$(timeout 60 "$@" 2>&1 </dev/null)
        local got=$?
        [ "$got" -eq "$code" ] || fail "$* exited $got, expected $code: $out"
        case "$out" in *"$needle"*) ;; *) fail "$*: output lacks '$needle': $out" ;; esac
}

# stop_daemon PID: SIGTERM, and it must exit 0 within 20 s.
stop_daemon() {
        local pid=$1
        if ! kill -TERM "$pid" 2>/dev/null; then
                wait "$pid"
                fail "mixtrald (pid $pid) ended before SIGTERM, with status $?"
                return
        fi
        for _ in $(seq 200); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
                fail "mixtrald (pid $pid) still runs 20 s after SIGTERM"
                kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid"
        local rc=$?
        [ "$rc" -eq 0 ] || fail "mixtrald (pid $pid) exited $rc after SIGTERM, expected 0"
}

cleanup() {
        for pid in "${daemon_pids[@]}"; do
                stop_daemon "$pid"
        done
        daemon_pids=()
        for pid in "${fake_pids[@]}"; do
                kill "$pid" 2>/dev/null
                wait "$pid" 2>/dev/null
        done
        rm -rf "$tmp"
        if [ "$failures" -gt 0 ]; then
                echo "$failures failure(s)" >&2
                exit 1
        fi
}
trap cleanup EXIT

# --- without a daemon ----------------------------------------------------------
expect 0 "Exit status" -- "$client" --help
out=$("$client" -h)
for code in "0  success" "2  usage error" "3  the daemon cannot be reached" "4  INVALID_ARGUMENT" \
        "5  QUOTA_EXCEEDED" "6  BUSY" "7  TOO_LONG" "8  CANCELLED" "9  the connection" \
        "10  the input is larger than the daemon accepts" "130  interrupted"; do
        grep -qF -- "$code" <<<"$out" || fail "--help does not list exit status '$code'"
done
for opt in --system --temperature --top-k --top-p --min-p --repeat-penalty --seed --max-tokens --stop \
        --raw --json --ids --socket --reconnect --version max_frame_bytes '"""' 'a trailing \' paste; do
        grep -qF -- "$opt" <<<"$out" || fail "--help does not mention $opt"
done
grep -q "at most 64 MiB)" <<<"$out" && fail "--help still promises 64 MiB of input to the daemon"
expect 0 "mixtral " -- "$client" --version
expect 2 "unknown option '--frobnicate'" -- "$client" --frobnicate x
expect 2 "unknown option '-x'" -- "$client" -x y
expect 2 "needs an argument" -- "$client" --temperature
expect 2 "--temperature: 'abc' is not a number" -- "$client" --temperature abc x
expect 2 "--temperature: 'nan' is not a number" -- "$client" --temperature nan x
expect 2 "--top-k: '-1' is not" -- "$client" --top-k -1 x
expect 2 "--top-k: '4294967296' is out of range" -- "$client" --top-k 4294967296 x
expect 2 "--seed: 'x' is not" -- "$client" --seed x y
expect 2 "-n: '1.5' is not" -- "$client" -n 1.5 y
expect 2 "--max-tokens: '-3' is not" -- "$client" --max-tokens -3 y
expect 2 "no prompt" -- "$client"
expect 2 "no prompt" -- "$client" --socket "$tmp/none" --seed 1
expect 2 "status takes none" -- "$client" status now
expect 2 "--temperature does not apply to quota" -- "$client" quota --temperature 1
expect 2 "--raw does not apply to chat" -- "$client" chat --raw
expect 2 "--system needs the chat template" -- "$client" --raw --system s x
expect 2 "--reconnect applies to chat only" -- "$client" --reconnect 5 x
expect 2 "--reconnect: 'soon' is not" -- "$client" chat --reconnect soon
# Piped text that is not text.
printf 'a\0b' | timeout 20 "$client" --socket "$tmp/none" x >/dev/null 2>&1
[ $? -eq 2 ] || fail "a NUL byte on standard input is not a usage error"
# More than mixtral reads: the too-large status, before any daemon is asked.
out=$(head -c $((64 * 1024 * 1024 + 1)) /dev/zero | tr '\0' a | timeout 60 "$client" --socket "$tmp/none" x 2>&1)
rc=$?
[ "$rc" -eq 10 ] || fail "65 MiB on standard input exited $rc, expected 10: $out"
case "$out" in *"standard input is larger than 64 MiB"*) ;; *) fail "65 MiB on standard input: $out" ;; esac

# Nobody listening: exit 3 and one line that says how to start a daemon
# there: systemd's for the system socket and the per-user one, by hand for
# any other; with --json an error event too.
for cmd in "x" "status" "quota" "chat"; do
        out=$(timeout 20 "$client" --socket "$tmp/none" $cmd 2>&1 </dev/null)
        rc=$?
        [ "$rc" -eq 3 ] || fail "mixtral $cmd without a daemon exited $rc, expected 3: $out"
        [ "$(wc -l <<<"$out")" -eq 1 ] || fail "mixtral $cmd without a daemon: not one line: $out"
        case "$out" in
        *"cannot reach mixtrald at $tmp/none: No such file or directory"*"mixtrald --model DIR --socket $tmp/none"*) ;;
        *) fail "mixtral $cmd without a daemon: unhelpful message: $out" ;;
        esac
        case "$out" in *systemctl*) fail "mixtral $cmd: systemctl hint for a socket of no unit: $out" ;; esac
        timeout 20 "$client" --json --socket "$tmp/none" $cmd </dev/null >"$tmp/events" 2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 3 ] || fail "mixtral --json $cmd without a daemon exited $rc, expected 3"
        /usr/bin/python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
e = json.loads(lines[0])
assert e["event"] == "error" and e["code"] == "UNREACHABLE", e
assert "mixtral: " + e["message"] == open(sys.argv[2]).read().rstrip("\n"), e
' "$tmp/events" "$tmp/err" || fail "mixtral --json $cmd without a daemon: $(cat "$tmp/events" "$tmp/err")"
done
if [ ! -e /run/mixtrald/mixtrald.sock ]; then
        out=$(XDG_RUNTIME_DIR=$tmp/xdg timeout 20 "$client" status 2>&1 </dev/null)
        case "$out" in
        *"at $tmp/xdg/mixtrald.sock"*'"systemctl --user start mixtrald"'*'"mixtrald --user"'*) ;;
        *) fail "no per-user daemon: unhelpful message: $out" ;;
        esac
        case "$out" in *sudo*) fail "no per-user daemon: a hint for the system's: $out" ;; esac
        out=$(timeout 20 "$client" --socket /run/mixtrald/mixtrald.sock status 2>&1 </dev/null)
        case "$out" in
        *'"sudo systemctl start mixtrald"'*) ;;
        *) fail "no system daemon: unhelpful message: $out" ;;
        esac
fi
MIXTRALD_SOCKET=$tmp/from-env expect 3 "$tmp/from-env" -- "$client" hello
MIXTRALD_SOCKET=$tmp/from-env expect 3 "$tmp/from-option" -- "$client" --socket "$tmp/from-option" hello
: >"$tmp/plain-file"
expect 3 "Connection refused" -- "$client" --socket "$tmp/plain-file" hello
expect 3 "cannot reach" -- "$client" --socket "$tmp/$(printf 'x%.0s' {1..120})" hello

# --- against fake-mixtrald -----------------------------------------------------
# start_fake NAME MODE: on $tmp/NAME.sock, logging what it is sent to $tmp/NAME.log.
start_fake() {
        "$fake" "$tmp/$1.sock" "$tmp/$1.log" "$2" 2>>"$tmp/fake.err" &
        fake_pids+=($!)
        for _ in $(seq 100); do
                timeout 10 "$client" --socket "$tmp/$1.sock" status >/dev/null 2>&1 </dev/null && return 0
                sleep 0.05
        done
        fail "fake-mixtrald $2 did not come up: $(cat "$tmp/fake.err")"
        return 1
}
# same_lines NAME EXPECTED ACTUAL: the files are equal.
same_lines() {
        diff -u "$2" "$3" >"$tmp/diff" || fail "$1: $(cat "$tmp/diff")"
}
# last_questions LOG: the last user message of each request the fake was sent.
last_questions() {
        sed -E 's/.* (user=)/\1/' "$1"
}

# status while the daemon loads its model.
if start_fake loading loading; then
        out=$(timeout 20 "$client" --socket "$tmp/loading.sock" status 2>&1 </dev/null)
        grep -q "^state: *loading (42%)$" <<<"$out" || fail "status while loading: $out"
        timeout 20 "$client" --socket "$tmp/loading.sock" status --json </dev/null >"$tmp/status.json"
        /usr/bin/python3 -c '
import json, sys
s = json.loads(open(sys.argv[1]).read())
assert s["state"] == "loading" and s["load_progress"] == 0.42, s
' "$tmp/status.json" || fail "status --json while loading: $(cat "$tmp/status.json")"
fi

# chat's messages from a pipe: """ blocks, a trailing \, // and commands.
if start_fake lines serving; then
        printf '%s\n' '"""' 'first' '' 'second"""' 'one\' 'two' '"""inline"""' '/system be\' 'brief' '//slash' \
                'plain' '"""' 'unclosed' | timeout 20 "$client" --socket "$tmp/lines.sock" chat >/dev/null 2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 0 ] || fail "chat with multi-line messages exited $rc: $(cat "$tmp/err")"
        printf '%s\n' 'user=first\n\nsecond' 'user=one\ntwo' 'user=inline' 'user=/slash' 'user=plain' 'user=unclosed' \
                >"$tmp/want"
        last_questions "$tmp/lines.log" >"$tmp/got"
        same_lines "multi-line messages from a pipe" "$tmp/want" "$tmp/got"
        grep -qF ' system=be\nbrief user=' "$tmp/lines.log" || fail "/system continued with \\: $(cat "$tmp/lines.log")"
fi

# On a terminal: a paste is one message, however many lines; typed """ and
# \ as from a pipe; Ctrl-C drops a message begun; bracketed paste on for
# the chat, off while stopped (Ctrl-Z) and at the end.
if start_fake pty serving; then
        /usr/bin/python3 "$pty_chat" "$tmp/transcript" "$tmp/out" \
                '>\x1b[200~line one\rline two\rline three\x1b[201~\r' \
                '>explain: \x1b[200~a = 1\r\tb = 2\r\x1b[201~\r' \
                '>\x1b[200~"""x\rend\\\r/reset\x1b[201~ more\r' \
                '>"""\r' '.dropped\r' '.!INT' '>kept\r' \
                '>"""\rfirst\r\rsecond"""\r' '>one\\\rtwo\r' \
                '>!TSTP' '>after the stop\r' \
                -- "$client" --socket "$tmp/pty.sock" chat 2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 0 ] || fail "chat on a terminal exited $rc: $(cat "$tmp/err") $(cat -v "$tmp/transcript")"
        printf '%s\n' 'user=line one\nline two\nline three' $'user=explain: a = 1\\n\tb = 2' \
                'user="""x\nend\\\n/reset more' 'user=kept' 'user=first\n\nsecond' 'user=one\ntwo' \
                'user=after the stop' >"$tmp/want"
        last_questions "$tmp/pty.log" >"$tmp/got"
        same_lines "messages typed and pasted on a terminal" "$tmp/want" "$tmp/got"
        /usr/bin/python3 -c '
import re, sys
t = open(sys.argv[1], "rb").read()
modes = re.findall(rb"\x1b\[\?2004([hl])", t)
assert modes and modes[0] == b"h" and modes[-1] == b"l", modes
assert modes == [b"h", b"l"] * (len(modes) // 2), modes
assert len(modes) >= 4, "not off while stopped: %r" % modes
assert t.index(b"\x1b[?2004h") < t.index(b">>> "), "bracketed paste is not on at the first prompt"
' "$tmp/transcript" || fail "bracketed paste mode: $(cat -v "$tmp/transcript")"
fi

# The connection breaks mid-answer: said once, and the question is asked
# again once the daemon is back; the broken answer is not remembered.
if start_fake broken break-first; then
        printf 'hi\nthere\n' | timeout 30 "$client" --socket "$tmp/broken.sock" chat >"$tmp/out" 2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 0 ] || fail "chat across a broken connection exited $rc: $(cat "$tmp/err")"
        printf 'partial\nanswer 2\nanswer 3\n' >"$tmp/want"
        same_lines "the answers across a broken connection" "$tmp/want" "$tmp/out"
        printf '%s\n' 'generate: user=hi' 'generate: user=hi' 'generate: user=hi assistant=answer 2 user=there' \
                >"$tmp/want"
        same_lines "what chat sent across a broken connection" "$tmp/want" "$tmp/broken.log"
        said="mixtral: lost the connection to mixtrald (mixtrald closed the connection); waiting up to 60 s"
        [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^$said" "$tmp/err" ||
                fail "a broken connection is not said once: $(cat "$tmp/err")"
fi
if start_fake broken-json break-first; then
        printf 'hi\n' | timeout 30 "$client" --json --socket "$tmp/broken-json.sock" chat >"$tmp/events" 2>/dev/null ||
                fail "chat --json across a broken connection exited $?"
        /usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
kinds = [e["event"] for e in ev]
assert kinds == ["accepted", "chunk", "reconnecting", "accepted", "chunk", "finished"], kinds
assert "lost the connection" in ev[2]["message"], ev[2]
' "$tmp/events" || fail "chat --json across a broken connection: $(cat "$tmp/events")"
fi

# A daemon that does not come back: the chat ends, status 9, after saying
# so; Ctrl-C ends the wait sooner, back at the prompt.
if start_fake vanish vanish; then
        start=$(date +%s)
        printf 'hi\n' | timeout 30 "$client" --json --reconnect 1 --socket "$tmp/vanish.sock" chat >"$tmp/events" \
                2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 9 ] || fail "chat with a daemon gone for good exited $rc, expected 9: $(cat "$tmp/err")"
        [ $(($(date +%s) - start)) -lt 10 ] || fail "chat waited more than --reconnect 1 for a daemon gone"
        grep -q "^mixtral: mixtrald did not come back within 1 s ($tmp/vanish.sock: " "$tmp/err" ||
                fail "a daemon gone for good: $(cat "$tmp/err")"
        /usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert [e["event"] for e in ev][-2:] == ["reconnecting", "error"] and ev[-1]["code"] == "CONNECTION_LOST", ev
' "$tmp/events" || fail "chat --json with a daemon gone for good: $(cat "$tmp/events")"
fi
if start_fake vanish-pty vanish; then
        /usr/bin/python3 "$pty_chat" "$tmp/transcript" "$tmp/out" '>hi\r' '~lost the connection' '-!INT' \
                -- "$client" --socket "$tmp/vanish-pty.sock" chat
        rc=$?
        [ "$rc" -eq 0 ] ||
                fail "Ctrl-C while chat waits for the daemon: exit $rc: $(cat -v "$tmp/transcript" | tr "\n" " ")"
fi

if [ ! -x "$daemon" ]; then
        echo "SKIP: daemon not built ($daemon)"
        [ "$failures" -eq 0 ] && exit 77
        exit 1
fi

# --- with a daemon -------------------------------------------------------------
started_pid=
# start_daemon DIR: DIR/conf is its configuration; it listens on DIR/sock.
start_daemon() {
        local d=$1
        mkdir -p "$d/state"
        "$daemon" --model "$demo" --socket "$d/sock" --config "$d/conf" --state-directory "$d/state" --bus none \
                2>"$d/daemon.log" &
        started_pid=$!
        daemon_pids+=("$started_pid")
        for _ in $(seq 300); do
                if [ -S "$d/sock" ] && timeout 10 "$client" status --socket "$d/sock" >/dev/null 2>&1 </dev/null; then
                        return 0
                fi
                kill -0 "$started_pid" 2>/dev/null || break
                sleep 0.1
        done
        fail "mixtrald did not come up on $d/sock: $(tail -5 "$d/daemon.log")"
        return 1
}

mkdir -p "$tmp/main" "$HOME"
cat >"$tmp/main/conf" <<'EOF'
[daemon]
threads=1
max_batch=8
max_queue=16

[quota]
tokens_per_hour=1000000
tokens_per_day=0
max_concurrent=4
max_queued=8
max_context=4096
max_tokens=0
EOF
start_daemon "$tmp/main" || exit 1
main_pid=$started_pid
S=$tmp/main/sock
m() {
        timeout 60 "$client" --socket "$S" "$@"
}
r() {
        timeout 60 "$run" --model "$demo" --threads 1 "$@"
}

# same NAME EXPECTED_FILE ACTUAL_FILE
same() {
        cmp -s "$2" "$3" || fail "$1: mixtral printed '$(cat "$3")', mixtral-run '$(cat "$2")'"
}

# The daemon gives the text mixtral-run gives, token for token.
m --raw --seed 7 --max-tokens 24 --temperature 0.7 "Once upon a time" </dev/null >"$tmp/a" ||
        fail "raw generation exited $?"
r --prompt "Once upon a time" --seed 7 --max-tokens 24 --temperature 0.7 >"$tmp/b"
[ -s "$tmp/b" ] || fail "mixtral-run printed nothing"
same "--raw" "$tmp/b" "$tmp/a"

m --seed 3 -n 16 "Hello" </dev/null >"$tmp/a" || fail "chat-templated generation exited $?"
r --chat Hello --seed 3 -n 16 >"$tmp/b"
same "the chat template" "$tmp/b" "$tmp/a"

m --system "Be brief." --seed 3 -n 16 "Hello" </dev/null >"$tmp/a" || fail "--system exited $?"
r --system "Be brief." --chat Hello --seed 3 -n 16 >"$tmp/b"
same "--system" "$tmp/b" "$tmp/a"

m --seed 5 -n 12 --top-k 5 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.3 two words </dev/null >"$tmp/a" ||
        fail "sampling options exited $?"
r --chat "two words" --seed 5 -n 12 --top-k 5 --top-p 0.9 --min-p 0.01 --repeat-penalty 1.3 >"$tmp/b"
same "sampling options" "$tmp/b" "$tmp/a"

# Piped input: PROMPT, a blank line, then the input exactly as read.
echo body | m --raw --seed 1 -n 8 head >"$tmp/a" || fail "piped input exited $?"
printf 'head\n\nbody\n' >"$tmp/prompt"
r --prompt-file "$tmp/prompt" --seed 1 -n 8 >"$tmp/b"
same "PROMPT and piped input" "$tmp/b" "$tmp/a"
echo body | m --raw --seed 1 -n 8 >"$tmp/a" || fail "piped input alone exited $?"
r --prompt "body
" --seed 1 -n 8 >"$tmp/b"
same "piped input alone" "$tmp/b" "$tmp/a"
echo body | m --seed 1 -n 8 head >"$tmp/a" || fail "piped input, chat template exited $?"
p=$(printf 'head\n\nbody\nX')
r --chat "${p%X}" --seed 1 -n 8 >"$tmp/b"
same "piped input in the chat template" "$tmp/b" "$tmp/a"

# --stop: the text up to the stop string, as mixtral-run cuts it.
text=$(r --prompt "Once upon a time" --seed 7 -n 24 --temperature 0)
stop=${text:4:2}
m --raw --seed 7 -n 24 --temperature 0 --stop "$stop" --stop "zzz-never" "Once upon a time" </dev/null >"$tmp/a"
r --prompt "Once upon a time" --seed 7 -n 24 --temperature 0 --stop "$stop" --stop "zzz-never" >"$tmp/b"
same "--stop '$stop'" "$tmp/b" "$tmp/a"

# --json: one object per line; the chunks' text is the text; finished last.
check_json=$(
        cat <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
ev = [json.loads(l) for l in lines]
for l in lines:
    assert l == l.strip() and ": " not in l.split('"text"')[0], "not compact: " + l
assert ev[0]["event"] == "accepted", ev[0]
for k in ("request_id", "prompt_tokens", "max_tokens", "queue_position"):
    assert isinstance(ev[0][k], int), k
assert ev[-1]["event"] == "finished", ev[-1]
assert ev[-1]["reason"] in ("eos", "length", "stop", "context"), ev[-1]
u = ev[-1]["usage"]
for k in ("prompt_tokens", "completion_tokens", "time_to_first_token_s", "tokens_per_second", "total_s", "queued_s"):
    assert k in u, k
assert u["completion_tokens"] > 0 and u["prompt_tokens"] > 0, u
chunks = [e for e in ev[1:-1]]
assert all(e["event"] == "chunk" for e in chunks), chunks
ids = sys.argv[2] == "ids"
for e in chunks:
    assert ("token_ids" in e) == ids, e
    if ids:
        assert all(isinstance(i, int) for i in e["token_ids"]), e
text = "".join(e["text"] for e in chunks)
out = open(sys.argv[3], "w")
out.write(text + ("\n" if text and not text.endswith("\n") else ""))
if ids:
    open(sys.argv[4], "w").write(" ".join(str(i) for e in chunks for i in e["token_ids"]) + "\n")
EOF
)
m --json --raw --seed 7 --max-tokens 24 --temperature 0.7 "Once upon a time" </dev/null >"$tmp/events" ||
        fail "--json exited $?"
/usr/bin/python3 -c "$check_json" "$tmp/events" noids "$tmp/a" || fail "--json events: $(cat "$tmp/events")"
r --prompt "Once upon a time" --seed 7 --max-tokens 24 --temperature 0.7 >"$tmp/b"
same "the text of the --json chunks" "$tmp/b" "$tmp/a"
m --json --ids --raw --seed 7 --max-tokens 12 "Once upon a time" </dev/null >"$tmp/events" ||
        fail "--json --ids exited $?"
/usr/bin/python3 -c "$check_json" "$tmp/events" ids "$tmp/a" "$tmp/ids" ||
        fail "--json --ids events: $(cat "$tmp/events")"
r --prompt "Once upon a time" --seed 7 --max-tokens 12 --print-ids >"$tmp/b"
# The daemon's ids end with the EOS that ended the answer (it was computed
# and is counted); mixtral-run prints the answer's ids without it.
sed -i 's/ 2$//' "$tmp/ids"
same "the token ids of --json --ids" "$tmp/b" "$tmp/ids"
# --ids without --json changes nothing.
m --ids --raw --seed 7 --max-tokens 12 "Once upon a time" </dev/null >"$tmp/a"
r --prompt "Once upon a time" --seed 7 --max-tokens 12 >"$tmp/b"
same "--ids in text mode" "$tmp/b" "$tmp/a"

# status and quota
expect 0 "serving" -- "$client" status --socket "$S"
out=$(m status </dev/null)
for line in "model:" "device:" "state:" "queue:" "memory:" "uptime:"; do
        grep -q "^$line" <<<"$out" || fail "status lacks '$line': $out"
done
grep -q "(max batch 8, queue 16)" <<<"$out" || fail "status does not show the configured batch and queue: $out"
m status --json </dev/null >"$tmp/status.json" || fail "status --json exited $?"
/usr/bin/python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
s = json.loads(lines[0])
assert s["state"] == "serving" and s["max_batch"] == 8 and s["max_queue"] == 16, s
assert isinstance(s["requests"], list) and s["uptime_s"] >= 0, s
for k in ("version", "model", "device", "weight_bytes", "kv_bytes", "rss_bytes", "queued", "running",
          "connections", "requests_total", "tokens_total", "context_length"):
    assert k in s, k
' "$tmp/status.json" || fail "status --json: $(cat "$tmp/status.json")"
grep -q "^experts:" <<<"$out" && fail "status shows streaming where every expert is mapped: $out"

# A daemon loading its model: status says how far; a question asked
# meanwhile waits for it, and gets the same answer.
mkdir -p "$tmp/load"
printf '[daemon]\nthreads=1\n' >"$tmp/load/conf"
if MX_TEST_LOAD_SECONDS=3 start_daemon "$tmp/load"; then
        out=$(timeout 20 "$client" --socket "$tmp/load/sock" status </dev/null)
        grep -Eq "^state: +loading \([0-9]+%\)$" <<<"$out" || fail "status of a daemon loading its model: $out"
        got=$(timeout 60 "$client" --socket "$tmp/load/sock" --raw --temperature 0 -n 8 "Once upon a time" </dev/null)
        want=$(r --prompt "Once upon a time" --temperature 0 --max-tokens 8)
        [ -n "$got" ] && [ "$got" = "$want" ] || fail "a question while loading: '$got', mixtral-run '$want'"
fi

# A daemon streaming its experts: status says so, the answer is the same.
mkdir -p "$tmp/stream"
printf '[daemon]\nthreads=1\nexpert_memory=min\nmemory_pressure=off\n' >"$tmp/stream/conf"
if start_daemon "$tmp/stream"; then
        got=$(timeout 60 "$client" --socket "$tmp/stream/sock" --raw --temperature 0 -n 12 --ignore-eos "Once upon a time" </dev/null)
        want=$(r --prompt "Once upon a time" --temperature 0 --max-tokens 12 --ignore-eos)
        [ -n "$got" ] && [ "$got" = "$want" ] || fail "streaming daemon answered '$got', mixtral-run '$want'"
        out=$(timeout 60 "$client" --socket "$tmp/stream/sock" status </dev/null)
        grep -Eq "^experts: +streamed, .* held \(budget .*, 2 per layer\); hit rate [0-9.]+%, .* read at [0-9.]+ GB/s" <<<"$out" ||
                fail "status of a streaming daemon: $out"
        timeout 60 "$client" --socket "$tmp/stream/sock" status --json </dev/null >"$tmp/stream.json"
        /usr/bin/python3 -c '
import json, sys
s = json.loads(open(sys.argv[1]).read())
x = s["experts"]
assert x["slots_per_layer"] == 2 and x["misses"] > 0 and x["bytes_read"] > 0 and x["budget_bytes"] > 0, x
' "$tmp/stream.json" || fail "status --json of a streaming daemon: $(cat "$tmp/stream.json")"
fi
out=$(m quota </dev/null) || fail "quota exited $?"
for line in "tokens per hour: 1000000" "tokens per day:  unlimited" "concurrent:      4" "queued:          8" \
        "max context:     4096 tokens" "max tokens:      unlimited"; do
        grep -qF -- "$line" <<<"$out" || fail "quota lacks '$line': $out"
done
if [ "$(id -u)" -eq 0 ]; then
        grep -qF "exempt (root or admin group)" <<<"$out" || fail "quota does not say root is exempt: $out"
fi
m quota --json </dev/null >"$tmp/quota.json" || fail "quota --json exited $?"
/usr/bin/python3 -c '
import json, sys, os
q = json.loads(open(sys.argv[1]).read())
l = q["limits"]
assert l == {"tokens_per_hour": 1000000, "tokens_per_day": 0, "max_concurrent": 4, "max_queued": 8,
             "max_context": 4096, "max_tokens": 0}, l
assert q["uid"] == os.getuid() and q["exempt"] == (os.getuid() == 0), q
for k in ("used_hour", "used_day", "hour_resets_unix", "day_resets_unix", "running", "queued"):
    assert k in q, k
' "$tmp/quota.json" || fail "quota --json: $(cat "$tmp/quota.json")"

# The daemon's errors, as exit statuses.
expect 4 "INVALID_ARGUMENT" -- "$client" --socket "$S" --temperature -1 hello
expect 4 "INVALID_ARGUMENT" -- "$client" --socket "$S" --top-p 0 hello
long=$(printf 'word %.0s' $(seq 6000))
expect 7 "TOO_LONG" -- "$client" --socket "$S" --raw "$long"
m --json --raw "$long" </dev/null >"$tmp/events" 2>/dev/null
[ $? -eq 7 ] || fail "--json TOO_LONG: wrong exit status"
/usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert ev[-1]["event"] == "error" and ev[-1]["code"] == "TOO_LONG" and ev[-1]["message"], ev
' "$tmp/events" || fail "--json error event: $(cat "$tmp/events")"

# Input over the daemon's frame limit (1 MiB by default): its own status,
# and both sizes in plain words; the event says them too.
head -c 4000000 /dev/zero | tr '\0' a | m -n 4 summarise >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -eq 10 ] || fail "a 4 MB prompt exited $rc, expected 10: $(cat "$tmp/err")"
said="mixtral: the input is 3.8 MiB; this daemon accepts requests up to 1.0 MiB (max_frame_bytes in its"
said+=" configuration): send less, or ask its administrator to raise max_frame_bytes"
[ "$(cat "$tmp/err")" = "$said" ] || fail "a 4 MB prompt: $(cat "$tmp/err")"
head -c 4000000 /dev/zero | tr '\0' a | m --json -n 4 summarise >"$tmp/events" 2>/dev/null
[ $? -eq 10 ] || fail "--json, a 4 MB prompt: wrong exit status"
/usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
e = ev[-1]
assert len(ev) == 1 and e["event"] == "error" and e["code"] == "TOO_LARGE", ev
assert e["max_frame_bytes"] == 1 << 20 and 4000000 < e["request_bytes"] < 4000100, e
assert e["message"].startswith("the input is 3.8 MiB;"), e
' "$tmp/events" || fail "--json, a 4 MB prompt: $(cat "$tmp/events")"
# In a chat, the conversation is too large; a person may go on (/reset).
big=$(head -c 1100000 /dev/zero | tr '\0' a)
printf '%s\n' "$big" | m chat -n 4 >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -eq 10 ] || fail "a 1.1 MB chat message exited $rc, expected 10: $(cat "$tmp/err")"
said="^mixtral: the conversation is 11000[0-9][0-9] bytes; this daemon accepts requests up to 1048576 bytes"
grep -q "$said .*/reset starts a new conversation" "$tmp/err" ||
        fail "a 1.1 MB chat message: $(cat "$tmp/err")"

# chat: each line a turn, /reset forgets, the answers as mixtral-run's.
printf 'hi\n/reset\nthere\n/quit\nnever sent\n' | m chat --seed 1 -n 8 >"$tmp/a"
rc=$?
[ "$rc" -eq 0 ] || fail "chat exited $rc"
{
        r --chat hi --seed 1 -n 8
        r --chat there --seed 1 -n 8
} >"$tmp/b"
same "chat with /reset" "$tmp/b" "$tmp/a"
printf '\n/system Be brief.\nhi\n' | m chat --seed 1 -n 8 >"$tmp/a" || fail "chat with /system exited $?"
r --system "Be brief." --chat hi --seed 1 -n 8 >"$tmp/b"
same "chat with /system" "$tmp/b" "$tmp/a"
# The second turn sends the first question and answer along.
# second_turn EVENTS: from the events of a chat of "hi" and "there", the
# conversation the second turn answers ($tmp/conv.json) and that answer
# ($tmp/a).
second_turn() {
        /usr/bin/python3 -c '
import json, sys
turns, text = [], ""
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e["event"] == "chunk":
        text += e["text"]
    elif e["event"] == "finished":
        turns.append(text)
        text = ""
assert len(turns) == 2, turns
json.dump([{"role": "user", "content": "hi"}, {"role": "assistant", "content": turns[0]},
           {"role": "user", "content": "there"}], open(sys.argv[2], "w"))
open(sys.argv[3], "w").write(turns[1] + ("\n" if turns[1] and not turns[1].endswith("\n") else ""))
' "$1" "$tmp/conv.json" "$tmp/a"
}
printf 'hi\nthere\n' | m chat --json --seed 1 -n 8 >"$tmp/events" || fail "chat --json exited $?"
second_turn "$tmp/events" || fail "chat --json: $(cat "$tmp/events")"
r --messages "$tmp/conv.json" --seed 1 -n 8 >"$tmp/b"
same "the second turn of a chat" "$tmp/b" "$tmp/a"

# The daemon restarts between two turns: the chat says so once, and the
# new daemon gets the whole conversation, once.
forget_daemon() {
        local pid kept=()
        for pid in "${daemon_pids[@]}"; do
                [ "$pid" = "$1" ] || kept+=("$pid")
        done
        daemon_pids=("${kept[@]}")
}
mkfifo "$tmp/chat.in"
timeout 120 "$client" --socket "$S" chat --json --seed 1 -n 8 <"$tmp/chat.in" >"$tmp/events" 2>"$tmp/err" &
chat_pid=$!
exec 7>"$tmp/chat.in"
echo hi >&7
for _ in $(seq 300); do
        grep -q '"finished"' "$tmp/events" && break
        sleep 0.1
done
stop_daemon "$main_pid"
forget_daemon "$main_pid"
# Not holding the chat's input open, lest it never end.
start_daemon "$tmp/main" 7>&- || exit 1
main_pid=$started_pid
echo there >&7
exec 7>&-
wait "$chat_pid"
rc=$?
[ "$rc" -eq 0 ] || fail "chat across a daemon restart exited $rc: $(cat "$tmp/err")"
[ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^mixtral: lost the connection to mixtrald" "$tmp/err" ||
        fail "a daemon restart is not said once: $(cat "$tmp/err")"
[ "$(grep -c "accepted:" "$tmp/main/daemon.log")" -eq 1 ] ||
        fail "the restarted daemon was not asked once: $(cat "$tmp/main/daemon.log")"
second_turn "$tmp/events" || fail "chat --json across a daemon restart: $(cat "$tmp/events")"
r --messages "$tmp/conv.json" --seed 1 -n 8 >"$tmp/b"
same "the turn after a daemon restart" "$tmp/b" "$tmp/a"

# Three lines pasted on a terminal are one request, one answer.
before=$(grep -c "accepted:" "$tmp/main/daemon.log")
/usr/bin/python3 "$pty_chat" "$tmp/transcript" "$tmp/events" '>\x1b[200~line one\rline two\rline three\x1b[201~\r' \
        -- "$client" --socket "$S" chat --json --seed 1 -n 8
rc=$?
[ "$rc" -eq 0 ] || fail "a paste in a chat on a terminal: exit $rc: $(cat -v "$tmp/transcript")"
after=$(grep -c "accepted:" "$tmp/main/daemon.log")
[ $((after - before)) -eq 1 ] || fail "three pasted lines made $((after - before)) requests"
/usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert [e["event"] for e in ev if e["event"] != "chunk"] == ["accepted", "finished"], ev
text = "".join(e["text"] for e in ev if e["event"] == "chunk")
open(sys.argv[2], "w").write(text + ("\n" if text and not text.endswith("\n") else ""))
' "$tmp/events" "$tmp/a" || fail "a paste in a chat on a terminal: $(cat "$tmp/events")"
r --chat "line one
line two
line three" --seed 1 -n 8 >"$tmp/b"
same "three pasted lines" "$tmp/b" "$tmp/a"

# Ctrl-C: the request is cancelled in the daemon, the client exits 130.
# Sent as soon as output shows the generation under way: the demo model
# fills its 4096 positions in well under a second.
: >"$tmp/out"
"$client" --socket "$S" -n 100000 --ignore-eos --raw "x" </dev/null >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 500); do
        [ -s "$tmp/out" ] && break
        sleep 0.01
done
if kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"
        wait "$pid"
        rc=$?
        [ "$rc" -eq 130 ] || fail "Ctrl-C: exit status $rc, expected 130: $(cat "$tmp/err")"
        [ ! -s "$tmp/err" ] || fail "Ctrl-C: unexpected complaint: $(cat "$tmp/err")"
        [ "$(tail -c 1 "$tmp/out" | od -An -c | tr -d ' ')" = '\n' ] || fail "Ctrl-C: the output does not end a line"
        idle=no
        for _ in $(seq 30); do
                if m status --json </dev/null | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if not s["requests"] and s["running"] == 0 and s["queued"] == 0 else 1)'; then
                        idle=yes
                        break
                fi
                sleep 0.1
        done
        [ "$idle" = yes ] || fail "Ctrl-C: the request still runs in the daemon: $(m status </dev/null)"
else
        wait "$pid"
        fail "Ctrl-C: the generation ended (status $?) before Ctrl-C could interrupt it"
fi

# --- quotas, with a second daemon ---------------------------------------------
# Root and the admin group are exempt: quotas are tried as nobody then.
as_user() {
        "$@"
}
if [ "$(id -u)" -eq 0 ]; then
        as_user() {
                setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
        }
        chmod 0755 "$tmp"
fi
mkdir -p "$tmp/q"
chmod 0755 "$tmp/q"
cat >"$tmp/q/conf" <<'EOF'
[daemon]
threads=1
max_batch=8
max_queue=16

[quota]
tokens_per_hour=60
tokens_per_day=0
max_concurrent=2
max_queued=2
max_context=64
max_tokens=16
EOF
# quota_checks SOCKET: as a user the quotas apply to.
quota_checks() {
        local q=$1 out rc i got5=no
        out=$(as_user timeout 60 "$client" --socket "$q" --raw "$(printf 'word %.0s' $(seq 100))" 2>&1 </dev/null)
        rc=$?
        [ "$rc" -eq 7 ] || fail "a prompt longer than max_context exited $rc, expected 7: $out"
        # Cut short by the quota rather than by the request: a note says
        # so, on stderr and in the finished event; not otherwise.
        local cut="the answer was cut short by your max_tokens limit"
        as_user timeout 60 "$client" --socket "$q" --raw --ignore-eos x </dev/null >/dev/null 2>"$tmp/err"
        rc=$?
        [ "$rc" -eq 0 ] && [ "$(cat "$tmp/err")" = "mixtral: $cut" ] ||
                fail "max_tokens note: exit $rc: $(cat "$tmp/err")"
        as_user timeout 60 "$client" --socket "$q" --json --raw --ignore-eos x </dev/null >"$tmp/events" 2>/dev/null ||
                fail "max_tokens note, --json: exit $?"
        local p
        p=$(/usr/bin/python3 -c '
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert ev[-1]["event"] == "finished" and ev[-1]["reason"] == "length" and ev[-1]["note"] == sys.argv[2], ev
print(ev[0]["prompt_tokens"])
' "$tmp/events" "$cut") || fail "max_tokens note, --json: $(cat "$tmp/events")"
        # Leave the hour's budget a little short of the next request's.
        local used n
        used=$(as_user "$client" --socket "$q" quota --json </dev/null |
                /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["used_hour"])')
        n=$((60 - used - 2 * p - 5))
        if [ "$n" -ge 1 ] && [ "$n" -le 16 ]; then
                as_user timeout 60 "$client" --socket "$q" --raw --ignore-eos -n "$n" x </dev/null >/dev/null \
                        2>"$tmp/err" || fail "-n $n under the quota: exit $?"
                [ -s "$tmp/err" ] && fail "a note where the request set the end: $(cat "$tmp/err")"
                as_user timeout 60 "$client" --socket "$q" --raw --ignore-eos -n 16 x </dev/null >/dev/null 2>"$tmp/err"
                rc=$?
                [ "$rc" -eq 0 ] && [ "$(cat "$tmp/err")" = "mixtral: the answer was cut short by your token quota" ] ||
                        fail "token quota note: exit $rc: $(cat "$tmp/err")"
        else
                fail "quota notes: $used tokens used and $p in the prompt leave no room for the check"
        fi
        for i in $(seq 12); do
                out=$(as_user timeout 60 "$client" --socket "$q" --seed "$i" -n 16 hello 2>&1 </dev/null)
                rc=$?
                if [ "$rc" -eq 5 ]; then
                        got5=yes
                        case "$out" in
                        *"QUOTA_EXCEEDED"*"; retry after "*) ;;
                        *) fail "QUOTA_EXCEEDED message: $out" ;;
                        esac
                        break
                fi
                if [ "$rc" -ne 0 ]; then
                        fail "request $i under the quota exited $rc: $out"
                        return
                fi
        done
        [ "$got5" = yes ] || fail "tokens_per_hour=60 never ran out (exit 5)"
        as_user timeout 60 "$client" --socket "$q" --json -n 4 hello </dev/null >"$tmp/events" 2>/dev/null
        rc=$?
        [ "$rc" -eq 5 ] || fail "--json over the quota exited $rc, expected 5"
        /usr/bin/python3 -c '
import json, sys
e = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert e["event"] == "error" and e["code"] == "QUOTA_EXCEEDED" and e["retry_at_unix"] > 0, e
' "$tmp/events" || fail "--json QUOTA_EXCEEDED event: $(cat "$tmp/events")"
        out=$(as_user timeout 60 "$client" --socket "$q" quota 2>&1 </dev/null) || fail "quota exited $?"
        case "$out" in
        *"tokens per hour: 60 (used "*", resets at "*) ;;
        *) fail "quota does not show the hour's use: $out" ;;
        esac
}
if ! as_user "$client" --version >/dev/null 2>&1; then
        echo "SKIP: quotas: cannot run mixtral as an unprivileged user"
elif start_daemon "$tmp/q"; then
        quota_checks "$tmp/q/sock"
fi

echo "all mixtral client checks done"
