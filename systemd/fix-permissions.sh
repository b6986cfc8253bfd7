#!/bin/sh
# Installed as /usr/lib/tollgate/fix-permissions. Run as root after changing anything under
# /etc/tollgate (new certificates, keys, password or ACL files). The rules:
#   - configuration, ACL, password files, certificates: root:tollgate, group-readable (0640/0750);
#   - private keys the gateway uses (*.key, e.g. pki/server.key): owned by the tollgate user,
#     0600, because tollgate refuses keys that group or others can read (like ssh does);
#   - the CA key and device keys (pki/ca.key, pki/devices/): root only; the gateway never needs them.
# `tollgate pki` writes every key 0600 root:root (it runs as root), so after issuing or rotating
# the server certificate this script is what lets the service load it again.
set -eu

ETC=${TOLLGATE_ETC:-/etc/tollgate}
USER_NAME=${TOLLGATE_USER:-tollgate}
GROUP=${TOLLGATE_GROUP:-tollgate}

[ -d "$ETC" ] || exit 0

chown root:"$GROUP" "$ETC"
chmod 0750 "$ETC"

# Secrets the gateway never needs: the CA key and device keys handed out to devices.
find "$ETC" -mindepth 1 \( -path "$ETC/pki/devices" -o -name ca.key \) -prune \
    -exec chown -h root:root {} + -exec chmod go-rwx {} +
if [ -d "$ETC/pki/devices" ]; then
    find "$ETC/pki/devices" ! -type l -exec chmod go-rwx {} +
fi

# Everything else: group tollgate may read (and enter directories), nobody else may.
# Symbolic links are re-grouped themselves (-h), never their targets.
find "$ETC" -mindepth 1 \( -path "$ETC/pki/devices" -o -name ca.key \) -prune -o \
    -exec chgrp -h "$GROUP" {} + \
    \( ! -type l -exec chmod g+rX,g-w,o-rwx {} + \)

# Private keys the gateway loads: the service user's own, nobody else's.
find "$ETC" -mindepth 1 \( -path "$ETC/pki/devices" -o -name ca.key \) -prune -o \
    -type f -name '*.key' -exec chown "$USER_NAME:$GROUP" {} + -exec chmod 0600 {} +
