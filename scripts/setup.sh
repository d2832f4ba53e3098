#!/usr/bin/env bash
# Installs what building, running and testing need on a fresh Debian 12
# machine (root, Rust toolchain present). Safe to run again.
#   scripts/setup.sh          what the local demo needs (no cloud SDKs)
#   scripts/setup.sh --tests  also moto (a local EC2 API) and every
#                             provider feature, as the test suite builds
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v pkill >/dev/null || need_apt+=(procps)
command -v curl >/dev/null || need_apt+=(curl)
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
if [[ ${1:-} == --tests ]]; then
    if ! command -v moto_server >/dev/null && ! python3 -c 'import moto.server' 2>/dev/null; then
        log "installing moto[server] (local EC2 API for the AWS provider tests)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' </dev/null
    fi
    log "building every binary with every provider into $CARGO_TARGET_DIR (the AWS SDK takes minutes the first time)"
    cargo build --workspace --all-features --bins
else
    log "building the binaries into $CARGO_TARGET_DIR"
    cargo build --bins -p cloud-api-adaptor -p agent-protocol-forwarder -p peerpod-tests
fi
