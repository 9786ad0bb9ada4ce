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
