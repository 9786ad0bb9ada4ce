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
# The loop (toolchain, build directory, corpus and seeds) is tests/fuzz-lib.sh's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../tests/fuzz-lib.sh
source "$here/../../tests/fuzz-lib.sh"
if [ $# -eq 0 ]; then
    set -- sigv4 request
fi
fuzz_main "$here" "$@"
