# The fuzzing loop shared by images/fuzz/run.sh and apid/fuzz/run.sh (sourced, not run): each
# target runs FUZZ_SECONDS (default 30) with cargo-fuzz over its corpus (corpus/<target>, which
# git ignores) and its read-only seeds (seeds/<target>); a crash (panic, sanitizer report,
# timeout or out-of-memory) leaves its reproducer in artifacts/<target>/ and fails the run.
#
# The toolchain is the pinned stable one: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags
# (sanitizer, coverage instrumentation). Builds go to FUZZ_TARGET_DIR, outside the repository.
#
# The sourcing script may define `fuzz_prepare TARGET CORPUS_DIR` (to add generated seeds) and
# `fuzz_max_len TARGET` (the longest input; 8192 when not defined), then calls
# `fuzz_main FUZZ_DIR TARGET...`.

fuzz_main() {
    local here="$1" seconds="${FUZZ_SECONDS:-30}" target corpus max_len
    shift
    local target_dir="${FUZZ_TARGET_DIR:-/var/cache/skiff-fuzz-target}"
    export RUSTC_BOOTSTRAP=1
    cd "$here"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "run.sh: installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
    local failed=()
    for target in "$@"; do
        corpus="corpus/$target"
        mkdir -p "$corpus"
        local dirs=("$corpus")
        if declare -F fuzz_prepare >/dev/null; then
            fuzz_prepare "$target" "$here/$corpus"
        fi
        if [ -d "seeds/$target" ]; then
            dirs+=("seeds/$target") # read only: new inputs go to the first directory
        fi
        max_len=8192
        if declare -F fuzz_max_len >/dev/null; then
            max_len="$(fuzz_max_len "$target")"
        fi
        echo "run.sh: fuzzing $target for ${seconds}s" >&2
        if ! cargo fuzz run --target-dir "$target_dir" "$target" "${dirs[@]}" -- \
            -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1; then
            failed+=("$target")
        fi
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "run.sh: crashes in: ${failed[*]} (reproducers in $here/artifacts/)" >&2
        return 1
    fi
    echo "run.sh: no crash in $*" >&2
}
