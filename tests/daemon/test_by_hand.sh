#!/bin/bash
# mixtrald started by hand on a terminal: while the model loads it draws
# the same progress bar as mixtral-run (on a pseudo-terminal from script),
# and says when it is ready; --help and mixtrald(8) name every option, and
# neither sends the reader to a file outside the repository.
#
#   test_by_hand.sh MIXTRALD DEMO_MODEL_DIR MAN_PAGE
set -u
mixtrald=$1 model=$2 man=$3
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
failures=0
fail() {
        echo "FAIL: $*" >&2
        failures=$((failures + 1))
}

: >"$t/empty.conf"
command -v script >/dev/null || { echo "SKIP: no script(1) for a pseudo-terminal"; exit 77; }
MX_TEST_LOAD_SECONDS=1 script -qfec "timeout -s TERM 4 '$mixtrald' --model '$model' --socket '$t/sock' \
        --state-directory '$t/state' --config '$t/empty.conf' --bus none --threads 1" "$t/tty.log" >/dev/null 2>&1
grep -q 'Loading the model \[#' "$t/tty.log" || fail "no progress bar on a terminal: $(tail -c 600 "$t/tty.log")"
grep -q '100%' "$t/tty.log" || fail "the bar never reached 100%"
grep -q 'ready: serving' "$t/tty.log" || fail "it did not say it was ready"

help=$("$mixtrald" --help) || fail "--help"
for opt in --model --device --socket --config --state-directory --threads --max-frame-bytes --socket-mode \
        --bus --user --check-config --help --version --http-socket --http-listen; do
        grep -q -- "$opt" <<<"$help" || fail "--help does not name $opt"
        grep -q -- "${opt//-/\\\\-}" "$man" || fail "mixtrald(8) does not name $opt"
done
grep -qi 'cuda:N' "$man" || fail "mixtrald(8) does not say cuda:N"
grep -qi 'D-Bus' "$man" || fail "mixtrald(8) says nothing of D-Bus"
if grep -qiE 'DESIGN\.md|issue [0-9]' <<<"$help"; then fail "--help cites a file outside the repository"; fi
if grep -qiE 'DESIGN\.md|issue [0-9]' "$man"; then fail "$man cites a file outside the repository"; fi
[ "$failures" -eq 0 ] && echo "ok: by hand on a terminal; --help and mixtrald(8)"
exit $((failures > 0))
