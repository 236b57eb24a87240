#!/bin/bash
# The shipped /etc/mixtrald/mixtrald.conf passes mixtrald --check-config as it
# is, and so does every commented-out key and example section turned on (the
# comments show valid values); it shows every key of docs/daemon.md; and the
# quota example of docs/admin.md passes too. (The shipped file names no
# model, which --check-config requires: MODEL stands in for it.)
#
# usage: test_default_config.sh MIXTRALD CONF DAEMON-DOC ADMIN-DOC MODEL
set -u
mixtrald=$1 conf=$2 doc=$3 admin_doc=$4 model=$5
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
"$mixtrald" --config "$conf" --model "$model" --check-config || { echo "FAIL: $conf"; exit 1; }
sed -E 's/^#([a-z_]+ = |\[)/\1/' "$conf" >"$t/all.conf"
"$mixtrald" --config "$t/all.conf" --model "$model" --check-config || { echo "FAIL: $conf with every key on"; cat "$t/all.conf"; exit 1; }
# The keys in docs/daemon.md's two tables ([daemon] keys, quota keys).
keys=$(awk '/^\| `\[daemon\]` key|^\| quota key/ { on = 1; next } /^$/ { on = 0 } on' "$doc" |
        grep -o '^| `[^|]*|' | grep -o '`[a-z_]*`' | tr -d '`' | sort -u)
[ "$(wc -w <<<"$keys")" -ge 20 ] || { echo "FAIL: found only these keys in $doc: $keys"; exit 1; }
for k in $keys; do
        grep -qE "^#?$k = " "$conf" || { echo "FAIL: $conf does not show $k (docs/daemon.md)"; exit 1; }
done
# The indented example in docs/admin.md that starts with [daemon].
awk '/^    \[daemon\]$/ { on = 1 } on && !/^    / && !/^$/ { exit } on { sub(/^    /, ""); print }' "$admin_doc" >"$t/admin.conf"
grep -q '^\[quota\]' "$t/admin.conf" || { echo "FAIL: no quota example in $admin_doc"; exit 1; }
"$mixtrald" --config "$t/admin.conf" --model "$model" --check-config || { echo "FAIL: the example in $admin_doc"; cat "$t/admin.conf"; exit 1; }
# It checks the model, not just the file: a missing one is an error.
if "$mixtrald" --config "$conf" --model "$t/no-such-model" --check-config 2>"$t/err"; then
        echo "FAIL: --check-config accepted a model that does not exist"; exit 1
fi
grep -q "no-such-model" "$t/err" || { echo "FAIL: --check-config did not name the missing model: $(cat "$t/err")"; exit 1; }
if "$mixtrald" --config "$conf" --check-config 2>"$t/err"; then
        echo "FAIL: --check-config accepted a configuration with no model"; exit 1
fi
# Keys that exclude each other: quantizing as it loads, and streaming experts.
printf '[daemon]\nquantize = q4_0\nexpert_memory = 50%%\n' >"$t/q.conf"
if "$mixtrald" --config "$t/q.conf" --model "$model" --check-config 2>"$t/err"; then
        echo "FAIL: --check-config accepted quantize with expert_memory"; exit 1
fi
grep -q "q4_0.*expert memory 50%" "$t/err" || { echo "FAIL: the refusal does not name both: $(cat "$t/err")"; exit 1; }
echo "ok: the $(wc -w <<<"$keys") keys of docs/daemon.md, commented and not; the example of docs/admin.md"
