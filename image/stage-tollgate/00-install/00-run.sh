#!/bin/bash -e
# Installs the tollgate package built for this image's architecture (scripts/package-deb.sh)
# from files/ into the image, with its dependencies, through apt inside the chroot.

arch=${ARCH:-}
if [ -z "${arch}" ]; then
    arch=$(on_chroot <<<"dpkg --print-architecture")
fi

shopt -s nullglob
debs=(files/tollgate_*_"${arch}".deb)
if [ "${#debs[@]}" -ne 1 ]; then
    echo "stage-tollgate: expected exactly one files/tollgate_*_${arch}.deb, found ${#debs[@]}." >&2
    echo "Build it with: scripts/package-deb.sh --target <triple> and copy it into $(pwd)/files/" >&2
    exit 1
fi

install -m 0644 "${debs[0]}" "${ROOTFS_DIR}/tmp/tollgate.deb"
on_chroot <<'CHROOT'
apt-get install -y --no-install-recommends /tmp/tollgate.deb
rm -f /tmp/tollgate.deb
CHROOT
