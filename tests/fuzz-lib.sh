# The fuzzing loop shared by images/fuzz/run.sh and apid/fuzz/run.sh (sourced, not run): each
# target runs FUZZ_SECONDS (default 30) with cargo-fuzz over its corpus (corpus/<target>, which
# git ignores) and its read-only seeds (seeds/<target>); a crash (panic, sanitizer report,
# timeout or out-of-memory) leaves its reproducer in artifacts/<target>/ and fails the run.
#
# The toolchain is the pinned stable one: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags
# (sanitizer, coverage instrumentation). Builds go to FUZZ_TARGET_DIR, outside the repository.
#
# Every target is built first; then they fuzz side by side, FUZZ_JOBS at a time (default: one per
# core, so each still has a core of its own for its FUZZ_SECONDS), each into a log of its own that
# is printed when it ends.
#
# The sourcing script may define `fuzz_prepare TARGET CORPUS_DIR` (to add generated seeds) and
# `fuzz_max_len TARGET` (the longest input; 8192 when not defined), then calls
# `fuzz_main FUZZ_DIR TARGET...`.

fuzz_main() {
    local here="$1" seconds="${FUZZ_SECONDS:-30}" jobs="${FUZZ_JOBS:-$(nproc)}" target corpus max_len
    shift
    local target_dir="${FUZZ_TARGET_DIR:-/var/cache/skiff-fuzz-target}"
    export RUSTC_BOOTSTRAP=1
    cd "$here"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "run.sh: installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
    local failed=() built=() running=() pids=() logs
    for target in "$@"; do
        if cargo fuzz build --target-dir "$target_dir" "$target"; then
            built+=("$target")
        else
            failed+=("$target")
        fi
    done
    logs="$(mktemp -d)"
    for target in "${built[@]}"; do
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
        while [ ${#pids[@]} -ge "$jobs" ]; do
            fuzz_reap
        done
        echo "run.sh: fuzzing $target for ${seconds}s" >&2
        cargo fuzz run --target-dir "$target_dir" "$target" "${dirs[@]}" -- \
            -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
            >"$logs/$target" 2>&1 &
        pids+=("$!")
        running+=("$target")
    done
    while [ ${#pids[@]} -gt 0 ]; do
        fuzz_reap
    done
    rm -rf "$logs"
    if [ ${#failed[@]} -gt 0 ]; then
        echo "run.sh: crashes in: ${failed[*]} (reproducers in $here/artifacts/)" >&2
        return 1
    fi
    echo "run.sh: no crash in $*" >&2
}

# Waits for the oldest of fuzz_main's runs (its pids, running, failed and logs) and prints its
# log; a run that failed joins `failed`.
fuzz_reap() {
    if ! wait "${pids[0]}"; then
        failed+=("${running[0]}")
    fi
    echo "run.sh: ${running[0]} ended; its output:" >&2
    cat "$logs/${running[0]}" >&2
    pids=("${pids[@]:1}")
    running=("${running[@]:1}")
}
