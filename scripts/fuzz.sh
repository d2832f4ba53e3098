#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 60): the CI
# smoke run, or a longer local run (`scripts/fuzz.sh 600`). Installs
# cargo-fuzz if missing. The toolchain here is stable: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its sanitizer flags (-Z) to it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SECONDS_PER_TARGET=${1:-${FUZZ_SECONDS:-60}}
command -v cargo-fuzz >/dev/null || { log "installing cargo-fuzz"; cargo install cargo-fuzz --locked; }
export RUSTC_BOOTSTRAP=1
# Its own cache: sanitizer builds share nothing with the workspace's.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR}-fuzz}"
cd fuzz
log "building the fuzz targets"
cargo fuzz build -O
for t in $(cargo fuzz list); do
    log "fuzzing $t for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$t"
    [[ -d "seeds/$t" ]] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 2>&1 \
        | grep -E "^(Done|stat::number_of_executed_runs|==[0-9]+==ERROR|thread .* panicked)|SUMMARY" || true
    if [[ -n $(ls -A "artifacts/$t" 2>/dev/null) ]]; then
        echo "fuzz target $t found a failing input: fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
log "fuzzing done: no crash"
