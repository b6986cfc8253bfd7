#!/usr/bin/env bash
# Builds target/debian/tollgate_<version>_<arch>.deb with plain dpkg-deb (no cargo-deb).
#
# Usage: scripts/package-deb.sh [--target TRIPLE] [--binary PATH] [--out DIR]
#   --target  x86_64-unknown-linux-gnu (default: the host), aarch64-unknown-linux-gnu,
#             armv7-unknown-linux-gnueabihf; the release binary is built unless --binary is given
#   --binary  package this already built binary instead of building one
#   --out     output directory (default: target/debian, or $CARGO_TARGET_DIR/debian)
# Prints the path of the .deb on the last line of stdout.
#
# Contents: /usr/bin/tollgate, /lib/systemd/system/tollgate{,-firstboot}.service,
# /usr/lib/sysusers.d/tollgate.conf, /usr/lib/tmpfiles.d/tollgate.conf,
# /usr/lib/tollgate/fix-permissions, /etc/tollgate/tollgate.toml (conffile), docs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
target=""
binary=""
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
out="$target_dir/debian"

while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "package-deb: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$target" ] || target=$host
case "$target" in
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) arch=armhf ;;
    *) echo "package-deb: no Debian architecture known for $target" >&2; exit 2 ;;
esac

if [ -z "$binary" ]; then
    if [ "$target" = "$host" ]; then
        cargo build --release --locked --bin tollgate --manifest-path "$ROOT/Cargo.toml" >&2
        binary="$target_dir/release/tollgate"
    else
        cargo build --release --locked --bin tollgate --target "$target" --manifest-path "$ROOT/Cargo.toml" >&2
        binary="$target_dir/$target/release/tollgate"
    fi
fi
[ -x "$binary" ] || { echo "package-deb: $binary is not an executable" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)
[ -n "$version" ] || { echo "package-deb: no version in Cargo.toml" >&2; exit 1; }

# The newest glibc symbol version the binary needs becomes the libc6 dependency.
glibc=$(readelf --version-info --wide "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
depends="systemd"
[ -z "$glibc" ] || depends="libc6 (>= $glibc), $depends"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/tollgate_${version}_${arch}"

install -D -m 0755 "$binary" "$pkg/usr/bin/tollgate"
install -D -m 0644 "$ROOT/systemd/tollgate.service" "$pkg/lib/systemd/system/tollgate.service"
install -D -m 0644 "$ROOT/image/tollgate-firstboot.service" "$pkg/lib/systemd/system/tollgate-firstboot.service"
install -D -m 0644 "$ROOT/systemd/tollgate.sysusers" "$pkg/usr/lib/sysusers.d/tollgate.conf"
install -D -m 0644 "$ROOT/systemd/tollgate.tmpfiles" "$pkg/usr/lib/tmpfiles.d/tollgate.conf"
install -D -m 0755 "$ROOT/systemd/fix-permissions.sh" "$pkg/usr/lib/tollgate/fix-permissions"
install -d -m 0750 "$pkg/etc/tollgate"
if [ -f "$ROOT/config/tollgate.toml" ]; then
    install -m 0640 "$ROOT/config/tollgate.toml" "$pkg/etc/tollgate/tollgate.toml"
else
    # Until config/tollgate.toml exists the binary's built-in defaults apply.
    printf '# tollgate configuration: see /usr/share/doc/tollgate/README.md\n' >"$pkg/etc/tollgate/tollgate.toml"
    chmod 0640 "$pkg/etc/tollgate/tollgate.toml"
fi
doc="$pkg/usr/share/doc/tollgate"
install -d -m 0755 "$doc"
copy_doc() { [ ! -f "$ROOT/$1" ] || install -m 0644 "$ROOT/$1" "$doc/$2"; }
copy_doc README.md README.md
copy_doc image/README.md image-README.md
install -d -m 0755 "$doc/examples"
if [ -d "$ROOT/config/examples" ]; then
    find "$ROOT/config/examples" -maxdepth 1 -type f -name '*.toml' -exec install -m 0644 {} "$doc/examples/" \;
fi
# The Raspberry Pi image's configuration, for installs from the package alone (README.md, "Operating tollgate").
install -m 0644 "$ROOT/image/stage-tollgate/00-install/files/tollgate.toml" "$doc/examples/appliance.toml"
install -m 0644 "$ROOT/image/stage-tollgate/00-install/files/acl" "$doc/examples/appliance.acl"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tollgate

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

install -d -m 0755 "$pkg/DEBIAN"
install -m 0755 "$ROOT/scripts/deb/postinst" "$ROOT/scripts/deb/prerm" "$ROOT/scripts/deb/postrm" "$pkg/DEBIAN/"
echo /etc/tollgate/tollgate.toml >"$pkg/DEBIAN/conffiles"
installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: tollgate
Version: $version
Architecture: $arch
Maintainer: tollgate maintainers <tollgate@localhost>
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/tollgate/tollgate
Description: secure MQTT edge gateway for Raspberry Pi class hardware
 tollgate is an MQTT 3.1.1/5 broker for the edge: TLS and mutual TLS with its
 own PKI tool, mosquitto-compatible password and ACL files, an audit trail in
 the journal, a durable bridge to a cloud broker and field-bus adapters.
 It runs as a hardened systemd service (tollgate.service) under its own user.
CONTROL

mkdir -p "$out"
deb="$out/tollgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
