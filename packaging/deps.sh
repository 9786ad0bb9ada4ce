#!/usr/bin/env bash
# Installs what building, running and testing Skiff needs on Debian 12, and nothing when it is
# all there already (so CI and the quick start can call it every time).
set -euo pipefail
pkgs=(build-essential pkg-config libseccomp-dev openssl zstd time
      curl docker-registry skopeo umoci busybox-static apache2-utils tini
      golang-github-containers-common crun runc)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs); rust-toolchain.toml pins the version" >&2
  exit 1
fi
