#!/bin/bash
# meson install --destdir into a temporary directory: each file of the
# systemd/D-Bus integration is where meson.build says (the directories
# pkg-config gives for systemd and dbus-1), the units start the installed
# daemon, and the installed configuration passes the installed daemon's
# --check-config. A second install leaves a changed configuration alone.
#
# usage: test_install.sh MESON BUILD-DIR MODEL WHAT=PATH...
set -u
meson=$1 build=$2 model=$3
shift 3
fail() {
        echo "FAIL: $*"
        exit 1
}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
"$meson" install -C "$build" --no-rebuild --quiet --destdir "$t" >"$t.log" 2>&1 || { cat "$t.log"; rm -f "$t.log"; fail "meson install"; }
rm -f "$t.log"
declare -A at
for spec in "$@"; do
        what=${spec%%=*} path=${spec#*=}
        at[$what]=$path
        [ -f "$t$path" ] || fail "$what is not at $path"
        printf '%-22s %s\n' "$what" "$path"
done

daemon=${at[daemon]}
for unit in system-service user-service; do
        grep -q "^ExecStart=$daemon " "$t${at[$unit]}" || fail "$unit does not start $daemon"
done
grep -qx "ExecStart=$daemon --config ${at[config]} --bus system" "$t${at[system-service]}" ||
        fail "the system unit does not read ${at[config]}"
grep -qx 'ListenStream=/run/mixtrald/mixtrald.sock' "$t${at[system-socket]}" || fail "system socket path"
grep -qx 'ListenStream=%t/mixtrald.sock' "$t${at[user-socket]}" || fail "user socket path"
grep -qx "Exec=$daemon --user" "$t${at[dbus-session-service]}" || fail "session activation Exec="
grep -qx 'SystemdService=mixtrald.service' "$t${at[dbus-system-service]}" || fail "system activation SystemdService="
grep -q '^u mixtrald ' "$t${at[sysusers]}" || fail "sysusers.d file makes no user mixtrald"
[ -x "$t$daemon" ] || fail "$daemon is not executable"
"$t$daemon" --config "$t${at[config]}" --model "$model" --check-config || fail "the installed configuration"
cmp -s "$t${at[config]}" "$t${at[config-default]}" || fail "the configuration differs from its default copy"

# The sysusers.d file as systemd-sysusers applies it, to an empty root.
mkdir -p "$t/sysroot/etc"
systemd-sysusers --root="$t/sysroot" "$t${at[sysusers]}" >/dev/null 2>&1 || fail "systemd-sysusers rejected ${at[sysusers]}"
grep -qE '^mixtrald:x:[0-9]+:[0-9]+:Mixtral inference daemon:/var/lib/mixtrald:[^:]*nologin$' \
        "$t/sysroot/etc/passwd" || fail "user mixtrald: $(cat "$t/sysroot/etc/passwd")"
for g in mixtrald video render; do
        grep -q "^$g:" "$t/sysroot/etc/group" || fail "systemd-sysusers made no group $g"
done
echo "ok: systemd-sysusers makes user mixtrald and groups mixtrald, video, render"

# Installing again keeps an administrator's configuration.
echo "# changed by the administrator" >>"$t${at[config]}"
"$meson" install -C "$build" --no-rebuild --quiet --destdir "$t" >/dev/null 2>&1 || fail "meson install, again"
[ "$(tail -n1 "$t${at[config]}")" = "# changed by the administrator" ] || fail "a second install overwrote ${at[config]}"
echo "ok: $# files in place; a second install keeps the administrator's configuration"
