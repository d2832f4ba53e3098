#!/usr/bin/env bash
# The libvirt StartVM-to-ready benchmark (docs/benchmarks.md):
#
#   scripts/bench-libvirt.sh [--runs N] [--domain-type qemu|kvm|auto]
#
# Builds the pod VM's binaries (forwarder, process-user-data, the
# kata-agent-double) and the bench itself in release mode, as a real pod VM
# image carries them, the minimal image with those binaries, and runs
# peerpod-libvirt-bench, which prints each run and the p50 of each phase.
# Root; installs libvirt/QEMU first if missing (scripts/setup.sh --libvirt).
# Not part of the test command: CI builds one (debug) profile.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
cd "$here/.."
[[ $(id -u) == 0 ]] || { echo "the libvirt bench needs root (it makes a libvirt network and pool)" >&2; exit 1; }
"$here/setup.sh" --libvirt
log "building the pod VM binaries and the bench (release)"
cargo build --release -p agent-protocol-forwarder --bins
cargo build --release -p peerpod-tests --features libvirt --bin kata-agent-double --bin peerpod-libvirt-bench
rel="$CARGO_TARGET_DIR/release"
img=$(podvm-image/build.sh --forwarder "$rel/agent-protocol-forwarder" \
    --user-data-bin "$rel/process-user-data" --kata-agent "$rel/kata-agent-double" | tail -1)
log "minimal image with release binaries: $img"
PEERPOD_PODVM_DIR=$img "$rel/peerpod-libvirt-bench" "$@"
