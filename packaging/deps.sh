#!/usr/bin/env bash
# Installs what building, running and testing Skiff needs on Debian 12, and nothing when it is
# all there already (so CI and the quick start can call it every time).
set -euo pipefail
pkgs=(build-essential pkg-config libseccomp-dev openssl zstd time jq bsdextrautils
      curl docker-registry skopeo umoci busybox-static apache2-utils tini
      golang-github-containers-common
      # apid/: its ECS API is tested with the real aws CLI and boto3
      awscli python3-boto3
      # apid/: the same store tests run on PostgreSQL (a throw-away server per test process)
      postgresql
      # netd/: task networking (nft for Skiff's table; ip and nsenter in tests)
      nftables iproute2 util-linux
      # tests/benches/tasks.rs: the peers Skiff is measured against
      crun runc
      # tests/benches/net.rs: the CNI plugins netd is measured against, and the traffic tool
      containernetworking-plugins iperf3
      # tests/vm/run-cgroup2.sh: a cgroup v2 kernel in a QEMU VM (initramfs, modules.dep)
      qemu-system-x86 qemu-utils kmod cpio binutils)
# `deps.sh packages` (packaging/build-debs.sh, test-packages.sh): .deb packages for amd64 and
# arm64, cross-built with Debian's aarch64 linker against arm64 libseccomp (skiff-shim links
# it), whose arm64 binaries run under qemu-user.
packages=0
if [ "${1:-}" = packages ]; then
  packages=1
  pkgs+=(dpkg-dev file gcc-aarch64-linux-gnu libc6-dev-arm64-cross libseccomp-dev:arm64 qemu-user-static)
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
fi
updated=0
# Twice: installing Debian 12's qemu-system-x86 removes a newer qemu-utils (a backport some
# images carry); the second pass puts the matching one back.
for _pass in 1 2; do
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || break
  echo "installing: ${missing[*]}"
  ((updated)) || { apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version" >&2
  exit 1
fi
if ((packages)); then
  # rustup's arm64 target for the pinned toolchain, and cargo-deb, which makes the .debs.
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
  command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
fi
