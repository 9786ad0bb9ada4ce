#!/usr/bin/env bash
# Builds Skiff's sample image, an OCI layout of one layer made from Debian's busybox-static
# (busybox and its applets, /etc/passwd, /etc/motd; cmd /bin/sh), at LAYOUT:TAG. Used by the
# quick start (which pushes it to its local registry) and packaging/test-packages.sh (which
# loads it with `skiff image load`): no image can be pulled from the internet on every box.
#
#   packaging/sample-image.sh LAYOUT [TAG]     (TAG: 1.0)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 LAYOUT [TAG]" >&2; exit 2; }
layout=$1 tag=${2:-1.0}
[ -x /bin/busybox ] || { echo "sample-image.sh: no /bin/busybox: apt-get install busybox-static" >&2; exit 1; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/etc"
cp /bin/busybox "$rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$rootfs/etc/passwd"
echo 'Hello from a Skiff sample image' > "$rootfs/etc/motd"
[ -d "$layout" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
# (umoci 0.4's `insert` writes a truncated tar; a layer made by GNU tar is added instead)
tar -C "$rootfs" --numeric-owner -cf "$rootfs.tar" .
umoci raw add-layer --image "$layout:$tag" "$rootfs.tar"
rm -f "$rootfs.tar"
umoci config --image "$layout:$tag" --config.cmd /bin/sh --config.env PATH=/bin
