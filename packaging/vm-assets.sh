#!/usr/bin/env bash
# Builds what skiffd boots a task microVM with (requiresCompatibilities FARGATE): a kernel and
# an initramfs whose /init is Skiff's guest agent, skiff-agent, with the virtio modules it
# loads (Debian's cloud kernel builds virtio-mmio, -blk, -console, -net and virtiofs as
# modules). Point skiffd.toml's [vm] kernel and initrd at the results.
#
#   packaging/vm-assets.sh [--agent PATH] [--out DIR] [--cache DIR]
#
#   --agent  the skiff-agent binary (default: /usr/bin/skiff-agent, else the workspace build)
#   --out    where vmlinuz and initrd.img go (default: /var/lib/skiff/vm)
#   --cache  where Debian's kernel package is kept, extracted (default: /var/cache/skiff-vm)
#
# The kernel comes from apt (linux-image-cloud-amd64 or -arm64, downloaded and extracted, never
# installed). Prints the two paths.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "vm-assets.sh: $*" >&2; exit 2; }
agent='' out=/var/lib/skiff/vm cache=/var/cache/skiff-vm
while (($#)); do
  case "$1" in
    --agent) agent=${2:?--agent needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --cache) cache=${2:?--cache needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [ -z "$agent" ]; then
  for a in /usr/bin/skiff-agent "${CARGO_TARGET_DIR:-$here/../target}/debug/skiff-agent"; do
    [ -x "$a" ] && { agent=$a; break; }
  done
fi
[ -n "$agent" ] && [ -x "$agent" ] || die "no skiff-agent binary (--agent PATH; cargo build -p skiff-guest)"
for t in cpio gzip depmod objcopy ldd apt-get dpkg; do
  command -v "$t" >/dev/null || die "$t not found (packaging/deps.sh installs it)"
done
# shellcheck source=packaging/guest-kernel.sh
. "$here/guest-kernel.sh"
guest_kernel "$cache" || die "no guest kernel (above)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ir=$tmp/initramfs
mkdir -p "$ir"/{proc,sys,dev,run,tmp}
guest_binary "$agent" "$ir" /init
guest_modules "$ir/lib/modules" virtio_mmio virtio_blk virtio_console virtio_net virtiofs
(cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$tmp/initrd.img"
mkdir -p "$out"
cp "$gk_vmlinuz" "$out/vmlinuz.new" && mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$tmp/initrd.img" "$out/initrd.img.new" && mv "$out/initrd.img.new" "$out/initrd.img"
echo "$out/vmlinuz"
echo "$out/initrd.img"
