#!/usr/bin/env bash
# Builds Skiff's .deb packages with cargo-deb: `skiff` (skiffd, skiff-shim, skiff) and
# `skiff-apid`, for amd64 (native) and/or arm64 (cross: rustup's aarch64-unknown-linux-gnu
# target, Debian's aarch64-linux-gnu-gcc as linker, libseccomp from Debian's arm64 package).
#
#   packaging/build-debs.sh [amd64|arm64|all] [--out DIR]     (default: all, $CARGO_TARGET_DIR/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
arches=all out=
while (($#)); do
  case "$1" in
    amd64|arm64|all) arches=$1; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    *) echo "build-debs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"
out=${out:-$CARGO_TARGET_DIR/debian}
mkdir -p "$out"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
[ "$arches" = all ] && arches="amd64 arm64"
for arch in $arches; do
  case "$arch" in
    amd64)
      cargo build --release --workspace --quiet
      target=() ;;
    arm64)
      rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
      export LIBSECCOMP_LIB_PATH=/usr/lib/aarch64-linux-gnu LIBSECCOMP_LINK_TYPE=dylib
      export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
      cargo build --release --target aarch64-unknown-linux-gnu -p skiff-runtime -p skiff-apid --bins --quiet
      target=(--target aarch64-unknown-linux-gnu) ;;
  esac
  for pkg in skiff-runtime skiff-apid; do
    cargo deb -p "$pkg" --no-build --no-strip "${target[@]}" -o "$out" >/dev/null
  done
  ls "$out"/*_"$arch".deb
done
