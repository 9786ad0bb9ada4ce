#!/usr/bin/env bash
# Runs skiff-images' fuzz targets, FUZZ_SECONDS each (default 30), and exits non-zero if any
# of them crashes (panic, sanitizer report, timeout or out-of-memory); the reproducer is left in
# images/fuzz/artifacts/<target>/ and `cargo fuzz run <target> <file>` replays it.
#
#   images/fuzz/run.sh                   # both targets, 30 s each
#   FUZZ_SECONDS=600 images/fuzz/run.sh unpack_tar
#
# The toolchain is the pinned stable one: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags
# (sanitizer, coverage instrumentation). Builds go to FUZZ_TARGET_DIR, outside the repository.
# unpack_tar creates devices and sets trusted.* xattrs, so run it as root to reach all of the
# unpacker; as another user it still runs, and fails early on such entries.
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

# Seed tars for unpack_tar, made with GNU tar (ustar, GNU and PAX formats; long names, links,
# a fifo, whiteouts, an escaping name), into the corpus directory, which git ignores.
seed_tars() {
    local out="$1" work
    command -v tar >/dev/null || return 0
    work="$(mktemp -d)"
    (
        cd "$work"
        mkdir -p t/d/sub "t/$(printf 'l%.0s' {1..120})"
        echo data >t/d/f
        ln t/d/f t/hl
        ln -s /etc/passwd t/abs
        ln -s ../.. t/d/up
        mkfifo t/fifo
        : >t/.wh.gone
        : >t/d/.wh..wh..opq
        if command -v python3 >/dev/null; then
            python3 -c 'import os; os.setxattr("t/d/f", "user.skiff", b"1")' 2>/dev/null || true
        fi
        tar --format=ustar -cf "$out/seed-ustar.tar" t 2>/dev/null || true
        tar --format=gnu -cf "$out/seed-gnu.tar" t
        tar --format=pax --xattrs -cf "$out/seed-pax.tar" t
        tar -P --format=pax --transform='s,^t/d/f$,../../escape,' -cf "$out/seed-escape.tar" t/d/f
    )
    rm -rf "$work"
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(unpack_tar manifest)
fi

failed=()
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ "$target" = unpack_tar ]; then
        seed_tars "$here/$corpus"
    fi
    if [ -d "seeds/$target" ]; then
        dirs+=("seeds/$target") # read only: new inputs go to the first directory
    fi
    case "$target" in
        unpack_tar) max_len=16384 ;;
        *) max_len=8192 ;;
    esac
    echo "run.sh: fuzzing $target for ${seconds}s" >&2
    if ! cargo fuzz run --target-dir "$target_dir" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: crashes in: ${failed[*]} (reproducers in $here/artifacts/)" >&2
    exit 1
fi
echo "run.sh: no crash in ${targets[*]}" >&2
