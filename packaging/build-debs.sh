#!/usr/bin/env bash
# Builds Skiff's Debian packages with cargo-deb: `skiff` (skiffd, skiff-shim, skiff, the
# skiffd unit, skiffd.toml and images.toml) and `skiff-apid` (skiff-apid, its unit, apid.toml),
# from release binaries, for amd64 (native) and/or arm64 (cross-built: rustup's
# aarch64-unknown-linux-gnu target, Debian's aarch64-linux-gnu-gcc as linker, libseccomp from
# Debian's arm64 package). The packages' metadata is `[package.metadata.deb]` in
# runtime/Cargo.toml and apid/Cargo.toml; `packaging/deps.sh packages` installs what this needs.
#
#   packaging/build-debs.sh [amd64|arm64|all] [--out DIR]
#
# Default: all, into $CARGO_TARGET_DIR/debian. Prints the path of each package made.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "build-debs.sh: $*" >&2; exit 2; }
arches=all out=''
while (($#)); do
  case "$1" in
    amd64 | arm64 | all) arches=$1; shift ;;
    --out) [ -n "${2:-}" ] || die "--out needs a directory"; out=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (expected amd64, arm64, all or --out DIR)" ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"
out=${out:-$CARGO_TARGET_DIR/debian}
mkdir -p "$out"
out=$(readlink -f "$out")
[ "$arches" = all ] && arches="amd64 arm64"
[ "$(uname -m)" = x86_64 ] || die "builds on an x86_64 (amd64) machine only, this is $(uname -m)"

# cargo-deb, the aarch64 linker and target, arm64 libseccomp: installed when missing.
./packaging/deps.sh packages

for arch in $arches; do
  case "$arch" in
    amd64)
      # The whole workspace, as the quick start and the tests build it: the same artifacts, so
      # nothing is built twice (a -p build would rebuild shared crates with other features).
      cargo build --release --workspace --quiet
      deb=() ;;
    arm64)
      triple=aarch64-unknown-linux-gnu
      # Set for this command only: an amd64 build seeing LIBSECCOMP_LIB_PATH would link the
      # arm64 library (and rebuild libseccomp-sys). The C parts (aws-lc, zstd, SQLite) find
      # aarch64-linux-gnu-gcc by themselves.
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        LIBSECCOMP_LIB_PATH=/usr/lib/aarch64-linux-gnu \
        cargo build --release --target "$triple" -p skiff-runtime -p skiff-apid --bins --quiet
      # The `arm64` variant lists the dependencies by hand (no dpkg-shlibdeps across arches).
      deb=(--target "$triple" --variant arm64) ;;
  esac
  for crate in skiff-runtime skiff-apid; do
    # --strip: the release profile keeps line tables (backtraces in development); packages
    # ship stripped binaries, a fifth of the size.
    cargo deb --quiet -p "$crate" --no-build --strip "${deb[@]}" -o "$out"
  done
  version=$(cargo metadata --no-deps --format-version 1 \
    | sed -n 's/.*"name":"skiff-runtime","version":"\([^"]*\)".*/\1/p')
  for pkg in skiff skiff-apid; do
    f="$out/${pkg}_${version}-1_${arch}.deb"
    [ -f "$f" ] || die "cargo-deb made no $f"
    echo "$f"
  done
done
