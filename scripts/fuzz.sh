#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60): the CI
# smoke run, or a longer local run (`scripts/fuzz.sh 600`). Installs
# cargo-fuzz if missing. The toolchain here is stable: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its sanitizer flags (-Z) to it.
#
# A run fails when a target fails: libFuzzer exits non-zero on a crash,
# leak, timeout or out-of-memory (whatever its output looks like), and any
# input left in fuzz/artifacts/<target>/ is a failure too (remove it once
# the bug is fixed and the input added to fuzz/seeds/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_TARGET=${1:-${FUZZ_SECONDS:-60}}
command -v cargo-fuzz >/dev/null || { log "installing cargo-fuzz"; cargo install cargo-fuzz --locked; }
export RUSTC_BOOTSTRAP=1
# Its own cache: sanitizer builds share nothing with the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR}-fuzz}"
cd "${FUZZ_DIR:-fuzz}"
log "building the fuzz targets"
cargo fuzz build -O
targets=$(cargo fuzz list)
[[ -n $targets ]] || { echo "cargo fuzz list named no target" >&2; exit 1; }
failed=()
for t in $targets; do
    log "fuzzing $t for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$t"
    if [[ -d "seeds/$t" ]]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
    out=$(mktemp)
    status=0
    cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$out" 2>&1 || status=$?
    # The summary lines (the full output stays in the temporary file on failure).
    grep -E "^(Done|stat::number_of_executed_runs|==[0-9]+==ERROR|thread .* panicked)|SUMMARY" "$out" || true
    artifacts=$(ls -A "artifacts/$t" 2>/dev/null || true)
    if ((status != 0)) || [[ -n $artifacts ]]; then
        echo "fuzz target $t FAILED (exit status $status${artifacts:+; failing inputs in $PWD/artifacts/$t/}); its output: $out" >&2
        tail -n 30 "$out" >&2
        failed+=("$t")
    else
        rm -f "$out"
    fi
done
if ((${#failed[@]})); then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
log "fuzzing done: no crash"
