#!/bin/bash
# The D-Bus files as dbus-daemon itself reads them: a private bus configured
# like the system bus (default deny) that includes our policy file and lists
# our system activation file, and a session-like bus with the session
# activation file. Then, as each uid that matters:
#   root and nobody may not own org.mixtrald.Mixtral1;
#   mixtrald may own it; nobody may then call its interface, Introspectable,
#   Properties and Peer, and receives the Token signal sent to it; nobody may
#   not call another interface of the same object.
# User mixtrald comes from our sysusers.d file: where the machine has no such
# user, systemd-sysusers --root adds it to a copy of /etc/passwd and
# /etc/group, mounted over the real ones in a private mount namespace, so the
# machine's user database is never changed.
#
# usage: test_dbus_policy.sh HELPER POLICY SYSTEM-ACTIVATION SESSION-ACTIVATION SYSUSERS
set -u
helper=$(realpath "$1") policy=$(realpath "$2") system_activation=$(realpath "$3")
session_activation=$(realpath "$4") sysusers=$(realpath "$5")
name=org.mixtrald.Mixtral1

fail() {
        echo "FAIL: $*"
        exit 1
}

if [ "$(id -u)" -ne 0 ]; then
        echo "SKIP: runs bus clients as other uids, which needs root"
        exit 77
fi
for p in dbus-daemon busctl setpriv; do
        command -v "$p" >/dev/null || { echo "SKIP: $p is not installed"; exit 77; }
done

# Outside the namespace: make user mixtrald where it is missing, then run
# this script again inside a private mount namespace.
if [ -z "${MIXTRALD_TEST_ETC:-}" ] && ! getent passwd mixtrald >/dev/null; then
        etc=$(mktemp -d)
        trap 'rm -rf "$etc"' EXIT
        mkdir -p "$etc/root/etc"
        cp -p /etc/passwd /etc/group "$etc/root/etc/"
        for f in shadow gshadow; do
                [ -e /etc/$f ] && cp -p /etc/$f "$etc/root/etc/"
        done
        systemd-sysusers --root="$etc/root" "$sysusers" || fail "systemd-sysusers rejected $sysusers"
        grep -q '^mixtrald:' "$etc/root/etc/passwd" || fail "systemd-sysusers made no user mixtrald"
        if unshare -m --propagation private true 2>/dev/null; then
                MIXTRALD_TEST_ETC="$etc/root/etc" unshare -m --propagation private bash "$0" "$@"
                exit $?
        fi
        echo "note: no private mount namespace here; the checks that need user mixtrald are skipped"
        MIXTRALD_TEST_ETC=none
fi
if [ -n "${MIXTRALD_TEST_ETC:-}" ] && [ "$MIXTRALD_TEST_ETC" != none ]; then
        mount --bind "$MIXTRALD_TEST_ETC/passwd" /etc/passwd || fail "bind-mounting passwd"
        mount --bind "$MIXTRALD_TEST_ETC/group" /etc/group || fail "bind-mounting group"
fi
have_mixtrald=false
getent passwd mixtrald >/dev/null && have_mixtrald=true

t=$(mktemp -d)
chmod 755 "$t"
pids=()
cleanup() {
        for p in "${pids[@]}"; do
                kill "$p" 2>/dev/null
        done
        wait 2>/dev/null
        rm -rf "$t"
}
trap cleanup EXIT

install -m 755 "$helper" "$t/helper"
mkdir -p "$t/system-services" "$t/services"
cp "$system_activation" "$t/system-services/$name.service"
cp "$session_activation" "$t/services/$name.service"

# The default policy of Debian's /usr/share/dbus-1/system.conf.
default_policy='
        <policy context="default">
                <allow user="*"/>
                <deny own="*"/>
                <deny send_type="method_call"/>
                <allow send_type="signal"/>
                <allow send_requested_reply="true" send_type="method_return"/>
                <allow send_requested_reply="true" send_type="error"/>
                <allow receive_type="method_call"/>
                <allow receive_type="method_return"/>
                <allow receive_type="error"/>
                <allow receive_type="signal"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
                <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
        </policy>'
cat >"$t/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
        <type>system</type>
        <listen>unix:path=$t/system.sock</listen>
        <auth>EXTERNAL</auth>
        <servicedir>$t/system-services</servicedir>
        $default_policy
        <include>$policy</include>
</busconfig>
EOF
cat >"$t/session.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
        <type>session</type>
        <listen>unix:path=$t/session.sock</listen>
        <auth>EXTERNAL</auth>
        <servicedir>$t/services</servicedir>
        <policy context="default">
                <allow send_destination="*" eavesdrop="true"/>
                <allow eavesdrop="true"/>
                <allow own="*"/>
        </policy>
</busconfig>
EOF

# Starts a bus; sets $addr to its address.
start_bus() {
        local conf=$1 log=$2
        dbus-daemon --config-file="$conf" --nofork --print-address >"$log.addr" 2>"$log.err" &
        pids+=($!)
        for _ in $(seq 100); do
                [ -s "$log.addr" ] && break
                kill -0 "${pids[-1]}" 2>/dev/null || break
                sleep 0.1
        done
        addr=$(head -n1 "$log.addr")
        if [ -z "$addr" ]; then
                cat "$log.err"
                fail "dbus-daemon did not start with $conf"
        fi
        echo "bus $conf: $addr"
}

as() {
        local who=$1
        shift
        setpriv --reuid="$(id -u "$who")" --regid="$(id -g "$who")" --clear-groups "$@"
}

start_bus "$t/system.conf" "$t/system"
system_addr=$addr
start_bus "$t/session.conf" "$t/session"
session_addr=$addr

busctl --address="$system_addr" call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ListNames \
        >"$t/names" || fail "ListNames on the system-like bus"
echo "ListNames: $(cat "$t/names")"
for a in "$system_addr" "$session_addr"; do
        busctl --address="$a" call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
                ListActivatableNames >"$t/activatable" || fail "ListActivatableNames on $a"
        grep -q "\"$name\"" "$t/activatable" || fail "$name is not activatable on $a: $(cat "$t/activatable")"
done
echo "activation files: $name activatable on both buses"

out=$("$t/helper" own "$system_addr")
[ "$out" = "RequestName: org.freedesktop.DBus.Error.AccessDenied" ] || fail "root owning $name: $out"
echo "root may not own $name"
out=$(as nobody "$t/helper" own "$system_addr")
[ "$out" = "RequestName: org.freedesktop.DBus.Error.AccessDenied" ] || fail "nobody owning $name: $out"
echo "nobody may not own $name"

if $have_mixtrald; then
        as mixtrald "$t/helper" own "$system_addr" >"$t/owner" 2>&1 &
        pids+=($!)
        for _ in $(seq 100); do
                grep -q . "$t/owner" && break
                sleep 0.1
        done
        [ "$(head -n1 "$t/owner")" = owned ] || fail "mixtrald owning $name: $(cat "$t/owner")"
        echo "mixtrald owns $name"

        out=$(as nobody "$t/helper" call "$system_addr")
        [ "$out" = "$(printf 'reply pong\nsignal hello')" ] || fail "nobody calling $name: $out"
        echo "nobody may call org.mixtrald.Mixtral1 and receives its signal"
        out=$(as nobody "$t/helper" call-other "$system_addr")
        [ "$out" = "Ping: org.freedesktop.DBus.Error.AccessDenied" ] || fail "nobody calling another interface: $out"
        echo "nobody may not call another interface"
        as nobody busctl --address="$system_addr" introspect "$name" /org/mixtrald/Mixtral1 >"$t/introspect" ||
                fail "nobody introspecting $name"
        grep -q 'org.mixtrald.Mixtral1' "$t/introspect" || fail "introspection: $(cat "$t/introspect")"
        as nobody busctl --address="$system_addr" call "$name" /org/mixtrald/Mixtral1 org.freedesktop.DBus.Peer Ping ||
                fail "nobody calling Peer.Ping"
        as nobody busctl --address="$system_addr" call "$name" /org/mixtrald/Mixtral1 \
                org.freedesktop.DBus.Properties GetAll s org.mixtrald.Mixtral1 >/dev/null ||
                fail "nobody calling Properties.GetAll"
        echo "nobody may introspect, Peer.Ping and Properties.GetAll"
else
        echo "SKIPPED: the checks as user mixtrald (no such user here, and no mount namespace to make one)"
fi

# dbus-daemon reports problems with included files (an unknown user, a bad
# element, a bad service file) on stderr and goes on: there must be none.
# Expected there: the denial of call-other above, and the fd limit it
# cannot raise when it does not run as root of the machine.
if grep -hv -e '^$' -e 'Failed to set fd limit' \
        -e 'Rejected send message, .* interface="org.mixtrald.Test" member="Ping"' \
        "$t/system.err" "$t/session.err"; then
        fail "dbus-daemon complained"
fi
echo "dbus-daemon read our files without a complaint"
