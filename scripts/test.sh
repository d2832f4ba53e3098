#!/usr/bin/env bash
# The whole test suite: set-up, formatting and lint gates, every unit and
# end-to-end test (tests needing root create and remove their own network
# namespaces, links and processes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/setup.sh --tests
# Every test runs: one that needs a facility fails without it (none skips),
# so say up front what is missing rather than after minutes of building.
missing=()
[[ $(id -u) == 0 ]] || missing+=("root (network namespaces, links, libvirt)")
command -v moto_server >/dev/null || python3 -c 'import moto.server' 2>/dev/null || missing+=("moto[server]")
for tool in ip xorriso virsh qemu-system-x86_64; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "scripts/test.sh cannot run the whole suite here; missing: ${missing[*]}" >&2
    exit 1
fi
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
log "cargo test"
# Tests share loopback ports and the host's netns list; two threads keep a
# 2-core machine responsive.
cargo test --workspace --all-features --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
log "fuzz smoke run"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
log "all tests passed"
