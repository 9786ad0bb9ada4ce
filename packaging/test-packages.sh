#!/usr/bin/env bash
# Builds the .deb packages for amd64 and arm64 and checks them without touching the machine:
# contents, control fields and conffiles (dpkg-deb); the amd64 binaries run from the extracted
# package; the maintainer scripts run in a private mount namespace (a throw-away /etc/passwd,
# /etc/skiff, /var/lib/skiff*: no systemd there, as on this machine); the arm64 binaries run
# under qemu-user (Debian's qemu-user-static) doing real work: apid's SQLite store and key
# (aws-lc) with `skiff-apid keys create`, the image store with `skiff image load` and `ls`.
# Containers cannot run under qemu-user: arm64 tasks need an arm64 box or VM.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test-packages: $*" >&2; exit 1; }

./packaging/build-debs.sh all --out "$work/debs" >/dev/null
version=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "skiff-runtime") | .version')
for arch in amd64 arm64; do
  for pkg in skiff skiff-apid; do
    deb="$work/debs/${pkg}_${version}-1_${arch}.deb"
    [ -f "$deb" ] || fail "no $deb (have: $(ls "$work/debs"))"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture $(dpkg-deb -f "$deb" Architecture)"
    case "$pkg" in
      skiff) files=(./usr/bin/skiffd ./usr/bin/skiff-shim ./usr/bin/skiff ./lib/systemd/system/skiffd.service ./etc/skiff/skiffd.toml ./etc/skiff/images.toml)
             conf=(/etc/skiff/skiffd.toml /etc/skiff/images.toml) deps=(libseccomp2 tini nftables) ;;
      skiff-apid) files=(./usr/bin/skiff-apid ./lib/systemd/system/skiff-apid.service ./etc/skiff/apid.toml)
             conf=(/etc/skiff/apid.toml) deps=(adduser) ;;
    esac
    listing=$(dpkg-deb -c "$deb")
    for f in "${files[@]}"; do grep -q " $f\$" <<<"$listing" || fail "$deb lacks $f"; done
    dpkg-deb -e "$deb" "$work/ctl-$pkg-$arch"
    for c in "${conf[@]}"; do grep -qx "$c" "$work/ctl-$pkg-$arch/conffiles" || fail "$deb: $c is not a conffile"; done
    for d in "${deps[@]}"; do dpkg-deb -f "$deb" Depends | grep -q "$d" || fail "$deb: does not depend on $d"; done
    [ -x "$work/ctl-$pkg-$arch/postinst" ] || fail "$deb: no postinst"
    mkdir -p "$work/$arch"
    dpkg-deb -x "$deb" "$work/$arch"
  done
  file "$work/$arch/usr/bin/skiffd" | grep -q "$( [ "$arch" = arm64 ] && echo aarch64 || echo x86-64)" || fail "$arch skiffd is $(file -b "$work/$arch/usr/bin/skiffd")"
done
grep -q '^KillMode=process' "$work/amd64/lib/systemd/system/skiffd.service" || fail "skiffd.service must leave tasks running (KillMode=process)"
echo "packages: contents, conffiles, dependencies and architectures as expected"

# The binaries do real work: on amd64 natively, on arm64 under qemu-user.
smoke() {
  local arch=$1 run=$2 root="$work/$1" d="$work/smoke-$1"
  mkdir -p "$d"
  $run "$root/usr/bin/skiffd" --version | grep -q skiffd || fail "$arch skiffd --version"
  $run "$root/usr/bin/skiff" --help >/dev/null || fail "$arch skiff --help"
  printf 'database = "%s/apid.db"\n' "$d" > "$d/apid.toml"
  $run "$root/usr/bin/skiff-apid" --config "$d/apid.toml" keys create | jq -e '.AccessKey.AccessKeyId | startswith("AKIA")' >/dev/null \
    || fail "$arch skiff-apid keys create"
  $run "$root/usr/bin/skiff-apid" --config "$d/apid.toml" keys list | grep -q AKIA || fail "$arch skiff-apid keys list"
  umoci init --layout "$d/layout" && umoci new --image "$d/layout:1"
  : > "$d/images.toml"
  $run "$root/usr/bin/skiff" image load --name local/empty "$d/layout" --root "$d/store" --config "$d/images.toml" >/dev/null \
    || fail "$arch skiff image load"
  $run "$root/usr/bin/skiff" image ls --root "$d/store" --config "$d/images.toml" | grep -q local/empty || fail "$arch skiff image ls"
  echo "$arch binaries: skiffd, skiff (image load, ls) and skiff-apid (SQLite store, keys) work"
}
smoke amd64 ""
smoke arm64 qemu-aarch64-static

# Maintainer scripts, as dpkg runs them on install and on upgrade, without systemd, in a
# mount namespace whose /etc/passwd, /etc/group, /etc/skiff and /var/lib/skiff* are copies.
for f in passwd group shadow gshadow; do cp "/etc/$f" "$work/$f"; done
before=$(sha256sum /etc/passwd /etc/group)
# shellcheck disable=SC2016 # expanded by the inner shell
W="$work" unshare --mount bash -euo pipefail -c '
  for f in passwd group shadow gshadow; do mount --bind "$W/$f" "/etc/$f"; done
  for d in /etc/skiff /var/lib/skiff /var/lib/skiff-apid; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
  for pkg in skiff skiff-apid; do
    "$W/ctl-$pkg-amd64/postinst" configure ""
    "$W/ctl-$pkg-amd64/postinst" configure 0.0.9
    "$W/ctl-$pkg-amd64/prerm" upgrade 0.1.0
  done
  getent passwd skiff-apid >/dev/null || { echo "postinst made no skiff-apid user" >&2; exit 1; }
  [ "$(stat -c %a:%U /var/lib/skiff-apid)" = 700:skiff-apid ] || { echo "/var/lib/skiff-apid: $(stat -c %a:%U /var/lib/skiff-apid)" >&2; exit 1; }
  [ "$(stat -c %a /etc/skiff/node)" = 700 ] || { echo "/etc/skiff/node is not 0700" >&2; exit 1; }
'
[ "$(sha256sum /etc/passwd /etc/group)" = "$before" ] || fail "the maintainer scripts changed the machine's /etc/passwd or /etc/group"
echo "maintainer scripts: install and upgrade work without systemd; nothing on the machine changed"
