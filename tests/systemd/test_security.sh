#!/bin/bash
# systemd-analyze security --offline=true: the overall exposure of each unit
# must not exceed its bound. Prints the table of what is still exposed.
#
# usage: test_security.sh SERVICE BOUND [SERVICE BOUND]...
set -u
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze is not installed"; exit 77; }
status=0
while [ $# -ge 2 ]; do
        unit=$1 bound=$2
        shift 2
        out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1)
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        if [ -z "$score" ]; then
                echo "FAIL: no exposure level for $unit:"
                echo "$out"
                status=1
                continue
        fi
        grep '✗' <<<"$out"
        if awk -v s="$score" -v b="$bound" 'BEGIN { exit !(s <= b) }'; then
                echo "ok: $unit: exposure $score (at most $bound)"
        else
                echo "FAIL: $unit: exposure $score, more than $bound"
                status=1
        fi
done
exit $status
