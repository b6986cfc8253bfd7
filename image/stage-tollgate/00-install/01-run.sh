#!/bin/bash -e
# Turns the installed package into an appliance: the mutual-TLS configuration and ACL from
# files/, /etc/tollgate restricted to root and the service group, and both units enabled.
# tollgate-firstboot.service creates /etc/tollgate/pki (CA + server certificate for the
# hostname) on the first boot, before tollgate.service starts.

install -d -m 0750 "${ROOTFS_DIR}/etc/tollgate"
install -m 0640 files/tollgate.toml "${ROOTFS_DIR}/etc/tollgate/tollgate.toml"
install -m 0640 files/acl "${ROOTFS_DIR}/etc/tollgate/acl"

on_chroot <<'CHROOT'
chown root:tollgate /etc/tollgate /etc/tollgate/tollgate.toml /etc/tollgate/acl
systemctl enable tollgate-firstboot.service tollgate.service
CHROOT
