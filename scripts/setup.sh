#!/usr/bin/env bash
# Installs what building, running and testing need on a fresh Debian 12
# machine (root, Rust toolchain present). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v pkill >/dev/null || need_apt+=(procps)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" </dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
mkdir -p "$CARGO_TARGET_DIR"
log "building the workspace binaries into $CARGO_TARGET_DIR"
cargo build --workspace --bins
