#!/bin/bash
# systemd-analyze verify on the units exactly as meson installs them, except
# that ExecStart= names the daemon built here (verify checks that the binary
# exists). Offline: no systemd needs to run (--man=no: the man pages are not
# installed here; --generators=no: generators need a running system). The
# system and the user units are checked in directories of their own, each
# with its socket, so Requires=/Also=/Service= resolve. Any output fails.
#
# usage: test_verify.sh BUILT-BINARY INSTALLED-BINARY SYSTEM-SERVICE SYSTEM-SOCKET USER-SERVICE USER-SOCKET
set -u
built=$(realpath "$1") installed=$2
command -v systemd-analyze >/dev/null || { echo "SKIP: systemd-analyze is not installed"; exit 77; }
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/system" "$t/user" "$t/runtime" "$t/bad"
chmod 700 "$t/runtime"

copy_unit() {
        grep -q "^ExecStart=$installed\b" "$1" || { echo "FAIL: $1 does not start $installed"; exit 1; }
        sed "s|^ExecStart=$installed\b|ExecStart=$built|" "$1" >"$2/$(basename "$1")"
}
copy_unit "$3" "$t/system"
cp "$4" "$t/system/"
copy_unit "$5" "$t/user"
cp "$6" "$t/user/"

status=0
check() {
        local what=$1 out rc
        shift
        out=$(XDG_RUNTIME_DIR=$t/runtime systemd-analyze verify --man=no --generators=no "$@" 2>&1)
        rc=$?
        if [ $rc -ne 0 ] || [ -n "$out" ]; then
                echo "FAIL: $what: systemd-analyze verify exited $rc:"
                echo "$out"
                status=1
        else
                echo "ok: $what: systemd-analyze verify says nothing"
        fi
}
check "system units" "$t/system/mixtrald.service" "$t/system/mixtrald.socket"
check "user units" --user "$t/user/mixtrald.service" "$t/user/mixtrald.socket"

# The check itself works: an unknown key and a missing socket are reported.
sed 's/^UMask=/NoSuchKey=1\nUMask=/; s/^Requires=mixtrald.socket/Requires=no-such.socket/' \
        "$t/system/mixtrald.service" >"$t/bad/mixtrald.service"
out=$(systemd-analyze verify --man=no --generators=no "$t/bad/mixtrald.service" 2>&1)
if ! grep -q NoSuchKey <<<"$out" || ! grep -q no-such.socket <<<"$out"; then
        echo "FAIL: verify did not report a broken unit: $out"
        status=1
else
        echo "ok: a broken unit is reported"
fi
exit $status
