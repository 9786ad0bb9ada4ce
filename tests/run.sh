#!/usr/bin/env bash
# Runs every check and test of Skiff: formatting, lints, docs, unit tests, the privileged
# end-to-end tests (real registry, skopeo, umoci, overlayfs), the quick start, the .deb packages
# (built for amd64 and arm64, installed and upgraded), and a short fuzzing run.
# Needs root: tests mount overlayfs, chown and mknod. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root (sudo $0): the end-to-end tests mount, chown and mknod" >&2
  exit 1
fi
./packaging/deps.sh
# A build cache outside the clone keeps repeated runs (and CI on fresh clones) incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"
# A privileged test that cannot run fails instead of skipping.
export SKIFF_REQUIRE_PRIVILEGED=1
step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check";   cargo fmt --all -- --check
step "cargo clippy";        cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc";           RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --quiet
step "cargo build";         cargo build --workspace
step "cargo test";          cargo test --workspace
step "quick start (twice, in private namespaces)"; ./tests/quickstart-ci.sh
step "packages (amd64 and arm64; install and upgrade in private namespaces)"; ./packaging/test-packages.sh
step "fuzz (${FUZZ_SECONDS:=30}s per target)"
FUZZ_SECONDS="$FUZZ_SECONDS" ./images/fuzz/run.sh
FUZZ_SECONDS="$FUZZ_SECONDS" ./apid/fuzz/run.sh
step "all checks passed"
