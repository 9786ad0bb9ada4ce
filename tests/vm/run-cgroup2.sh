#!/usr/bin/env bash
# Runs Skiff's real binaries (skiffd, skiff, skiff-shim: the workspace's debug build) on a real
# cgroup v2 kernel: Debian's cloud kernel in a QEMU microvm under TCG (software emulation; no
# KVM needed), booted from an initramfs made here. The VM's /init mounts a pure cgroup2
# hierarchy at /sys/fs/cgroup, starts skiffd, runs tasks and checks the task cgroups, the OOM
# kill report, exit codes, logs and cleanup, printing `SKIFF-V2 PASS <name>` or
# `SKIFF-V2 FAIL <name>: <why>` per check on the serial console, then `SKIFF-V2 DONE`.
#
# Exit status: 0 when the VM finished and printed no FAIL line; 1 otherwise; 2 when the VM
# cannot be had here (no qemu-system-x86_64, or the kernel package cannot be fetched).
#
# Environment:
#   SKIFF_BIN_DIR      where skiffd, skiff and skiff-shim are (default: $CARGO_TARGET_DIR/debug,
#                      else target/debug of this workspace)
#   SKIFF_VM_CACHE     kernel cache (default /var/cache/skiff-vm)
#   SKIFF_VM_TIMEOUT   seconds before the VM is killed (default 420)
#   SKIFF_VM_SMP, SKIFF_VM_MEM   vCPUs (default 2) and MiB of memory (default 1024)
#   SKIFF_VM_KEEP=1    keep the temporary directory (initramfs, console log)
# Needs root only for apt-get (the kernel package); network: Debian's archive through apt, once.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=${SKIFF_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/debug}
cache=${SKIFF_VM_CACHE:-/var/cache/skiff-vm}
timeout_s=${SKIFF_VM_TIMEOUT:-420}
smp=${SKIFF_VM_SMP:-2}
mem=${SKIFF_VM_MEM:-1024}
# Kernel modules the VM loads (with their dependencies, from modules.dep).
modules=(overlay)

say() { printf 'run-cgroup2: %s\n' "$*" >&2; }
unavailable() { say "UNAVAILABLE: $*"; exit 2; }

tmp=$(mktemp -d /tmp/skiff-vm.XXXXXX)
cleanup() {
  if [ "${SKIFF_VM_KEEP:-0}" = 1 ]; then say "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

command -v qemu-system-x86_64 >/dev/null ||
  unavailable "qemu-system-x86_64 not found (apt-get install qemu-system-x86; packaging/deps.sh)"
for t in cpio gzip depmod objcopy ldd; do
  command -v "$t" >/dev/null || unavailable "$t not found (packaging/deps.sh installs it)"
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
  unavailable "/bin/busybox must be busybox-static (apt-get install busybox-static)"
for b in skiffd skiff skiff-shim; do
  [ -x "$bin_dir/$b" ] || { say "$bin_dir/$b not built: run cargo build --workspace"; exit 1; }
done
seccomp=/usr/share/containers/seccomp.json
[ -f "$seccomp" ] || unavailable "$seccomp missing (golang-github-containers-common)"

# --- the kernel: Debian's cloud flavour, extracted (never installed), cached -------------------
# shellcheck source=packaging/guest-kernel.sh
. "$repo/packaging/guest-kernel.sh"
guest_kernel "$cache" || unavailable "no guest kernel (above)"
kver=$gk_ver
vmlinuz=$gk_vmlinuz

# --- the initramfs ------------------------------------------------------------------------------
ir=$tmp/initramfs
mkdir -p "$ir"/{bin,sbin,usr/bin,etc/skiff,proc,sys,dev,run,tmp,newroot,lib/modules}
cp /bin/busybox "$ir/bin/busybox"
for b in skiffd skiff skiff-shim; do guest_binary "$bin_dir/$b" "$ir" "/usr/bin/$b"; done
mkdir -p "$ir/usr/share/containers"
cp "$seccomp" "$ir/usr/share/containers/seccomp.json"

guest_modules "$ir/lib/modules" "${modules[@]}"

# An OCI image layout of a busybox image (one gzip layer), loaded in the VM with `skiff image load`.
img=$tmp/image-root
mkdir -p "$img"/{bin,etc,tmp}
chmod 1777 "$img/tmp"
cp /bin/busybox "$img/bin/busybox"
for a in sh echo cat ls sleep true false env id head dd; do ln -s busybox "$img/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$img/etc/passwd"
printf 'root:x:0:\n' > "$img/etc/group"
layout=$ir/image
mkdir -p "$layout/blobs/sha256"
tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$img" -cf "$tmp/layer.tar" .
diff_id=$(sha256sum < "$tmp/layer.tar" | cut -d' ' -f1)
gzip -n -c "$tmp/layer.tar" > "$tmp/layer.tar.gz"
blob() { # file -> "digest size", stored in the layout
  local d; d=$(sha256sum < "$1" | cut -d' ' -f1)
  cp "$1" "$layout/blobs/sha256/$d"
  echo "$d $(stat -c %s "$1")"
}
read -r layer_d layer_s < <(blob "$tmp/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" > "$tmp/config.json"
read -r config_d config_s < <(blob "$tmp/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config_d" "$config_s" "$layer_d" "$layer_s" > "$tmp/manifest.json"
read -r man_d man_s < <(blob "$tmp/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' \
  "$man_d" "$man_s" > "$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"

cp "$(dirname "$0")/guest-init.sh" "$ir/init"
cp "$(dirname "$0")/guest-checks.sh" "$ir/checks.sh"
chmod 0755 "$ir/init" "$ir/checks.sh"

(cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$tmp/initramfs.gz"
say "initramfs $(($(stat -c %s "$tmp/initramfs.gz") / 1048576)) MiB, kernel $kver"

# --- boot ---------------------------------------------------------------------------------------
# The TSC frequency is given, not calibrated: calibration against the emulated PIT can hang
# under TCG.
khz=$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
khz=${khz:-2000000}
console=$tmp/console.log
start=$(date +%s)
set +e
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
  -M microvm,rtc=on -accel tcg -cpu max -smp "$smp" -m "$mem" \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -kernel "$vmlinuz" -initrd "$tmp/initramfs.gz" \
  -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3 tsc_early_khz=$khz tsc=reliable" \
  < /dev/null 2>&1 | tee "$console"
rc=${PIPESTATUS[0]}
set -e
say "VM ran $(($(date +%s) - start)) s (qemu exit $rc)"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  say "the VM did not finish within ${timeout_s}s"
  exit 1
fi
grep -q '^SKIFF-V2 DONE' "$console" || { say "the VM stopped before SKIFF-V2 DONE"; exit 1; }
if grep -q '^SKIFF-V2 FAIL' "$console"; then exit 1; fi
say "all checks passed: $(grep -c '^SKIFF-V2 PASS' "$console")"
