#!/usr/bin/env bash
# Runs skiff-images' fuzz targets, FUZZ_SECONDS each (default 30), and exits non-zero if any
# of them crashes (panic, sanitizer report, timeout or out-of-memory); the reproducer is left in
# images/fuzz/artifacts/<target>/ and `cargo fuzz run <target> <file>` replays it.
#
#   images/fuzz/run.sh                   # both targets, 30 s each
#   FUZZ_SECONDS=600 images/fuzz/run.sh unpack_tar
#
# The loop (toolchain, build directory, corpus and seeds) is tests/fuzz-lib.sh's.
# unpack_tar creates devices and sets trusted.* xattrs, so run it as root to reach all of the
# unpacker; as another user it still runs, and fails early on such entries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../tests/fuzz-lib.sh
source "$here/../../tests/fuzz-lib.sh"

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

fuzz_prepare() {
    if [ "$1" = unpack_tar ]; then
        seed_tars "$2"
    fi
}

fuzz_max_len() {
    case "$1" in
        unpack_tar) echo 16384 ;;
        *) echo 8192 ;;
    esac
}

if [ $# -eq 0 ]; then
    set -- unpack_tar manifest
fi
fuzz_main "$here" "$@"
