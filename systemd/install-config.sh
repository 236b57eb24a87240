#!/bin/sh
# meson install script: puts the default configuration in place only where
# there is none yet, so that installing a new version never overwrites an
# administrator's /etc/mixtrald/mixtrald.conf. The pristine copy is always
# installed beside the documentation as well.
#
# usage: install-config.sh SOURCE CONFIG-PATH   (DESTDIR comes from meson)
set -eu
src=${DESTDIR:-}$1 dst=${DESTDIR:-}$2
if [ -e "$dst" ]; then
        [ -n "${MESON_INSTALL_QUIET:-}" ] || echo "Keeping $dst (the default is in $1)"
        exit 0
fi
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst.tmp"
chmod 0644 "$dst.tmp"
mv "$dst.tmp" "$dst"
[ -n "${MESON_INSTALL_QUIET:-}" ] || echo "Installing $dst"
