#!/usr/bin/env bash
# Runs skiff-apid's fuzz targets, FUZZ_SECONDS each (default 30), and exits non-zero if any of
# them crashes (panic, sanitizer report, timeout or out-of-memory); the reproducer is left in
# apid/fuzz/artifacts/<target>/ and `cargo fuzz run <target> <file>` replays it.
#
#   apid/fuzz/run.sh                     # both targets, 30 s each
#   FUZZ_SECONDS=600 apid/fuzz/run.sh sigv4
#
# sigv4: requests through SigV4 verification; signed by the target, they must verify, and with
# one signature character changed they must not. request: action bodies through the ECS actions
# over a SQLite store (in /dev/shm when there is one).
#
# The toolchain is the pinned stable one: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags
# (sanitizer, coverage instrumentation). Builds go to FUZZ_TARGET_DIR, outside the repository.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
seconds="${FUZZ_SECONDS:-30}"
target_dir="${FUZZ_TARGET_DIR:-/var/cache/skiff-fuzz-target}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sigv4 request)
fi

failed=()
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ -d "seeds/$target" ]; then
        dirs+=("seeds/$target") # read only: new inputs go to the first directory
    fi
    echo "run.sh: fuzzing $target for ${seconds}s" >&2
    if ! cargo fuzz run --target-dir "$target_dir" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: crashes in: ${failed[*]} (reproducers in $here/artifacts/)" >&2
    exit 1
fi
echo "run.sh: no crash in ${targets[*]}" >&2
