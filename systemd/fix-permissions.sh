#!/bin/sh
# Installed as /usr/lib/tollgate/fix-permissions. Run as root after changing anything under
# /etc/tollgate (new certificates, keys, password or ACL files): the tollgate service user
# may read configuration, certificates and the server key, never the CA key or device keys.
#
# `tollgate pki` writes keys 0600 root:root (it runs as root), so after issuing or rotating
# the server certificate this script is what lets the service load it again.
set -eu

ETC=${TOLLGATE_ETC:-/etc/tollgate}
GROUP=${TOLLGATE_GROUP:-tollgate}

[ -d "$ETC" ] || exit 0

chown root:"$GROUP" "$ETC"
chmod 0750 "$ETC"

# Secrets the gateway never needs: the CA key and device keys handed out to devices.
find "$ETC" -mindepth 1 \( -path "$ETC/pki/devices" -o -name ca.key \) -prune \
    -exec chown -h root:root {} + -exec chmod go-rwx {} +
find "$ETC/pki/devices" ! -type l -exec chmod go-rwx {} + 2>/dev/null || true

# Everything else: group tollgate may read (and enter directories), nobody else may.
# Symbolic links are re-grouped themselves (-h), never their targets.
find "$ETC" -mindepth 1 \( -path "$ETC/pki/devices" -o -name ca.key \) -prune -o \
    -exec chgrp -h "$GROUP" {} + \
    \( ! -type l -exec chmod g+rX,g-w,o-rwx {} + \)
