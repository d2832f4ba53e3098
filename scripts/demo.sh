#!/usr/bin/env bash
# The main job, end to end on this host: builds everything, starts the
# adaptor with the `local` provider, creates a sandbox as a Kata shim
# would, prints its Health check through the agent socket, lists it, stops
# it and shows that nothing is left behind. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[[ $(id -u) == 0 ]] || { echo "run as root: the local provider creates network namespaces" >&2; exit 1; }
scripts/setup.sh

RUN=$(mktemp -d /tmp/peerpod-demo.XXXXXX)
export PEERPOD_SOCKET=$RUN/hypervisor.sock PEERPOD_PODS_DIR=$RUN/pods PEERPOD_STATE_DIR=$RUN/state
CTL="$BIN_DIR/peerpodctl"
DAEMON_PID=
cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
    fi
    rm -rf "$RUN"
}
trap cleanup EXIT

log "starting cloud-api-adaptor (provider: local); log in $RUN/adaptor.log"
"$BIN_DIR/cloud-api-adaptor" local --bridge ppdemo0 --subnet 10.213.7.0 >"$RUN/adaptor.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S $PEERPOD_SOCKET ]] && break; sleep 0.1; done
[[ -S $PEERPOD_SOCKET ]] || { cat "$RUN/adaptor.log"; echo "the adaptor did not start" >&2; exit 1; }

log "remote hypervisor API version: $("$CTL" version)"
log "creating a sandbox for pod demo/nginx (CreateVM + StartVM)"
read -r SANDBOX SOCKET < <("$CTL" create --pod nginx --namespace demo --vcpus 0.5 --memory 512)
echo "sandbox $SANDBOX, agent socket $SOCKET"
log "Health check through the agent socket (adaptor -> mTLS -> forwarder -> kata-agent)"
"$CTL" check "$SANDBOX"
log "sandboxes"
"$CTL" list
log "stopping the sandbox"
"$CTL" stop "$SANDBOX"
for _ in $(seq 100); do [[ -z $("$CTL" list | tail -n +2) ]] && break; sleep 0.1; done
"$CTL" list
if ip netns list | grep -q pplocal- ; then echo "leftover network namespaces!" >&2; exit 1; fi
log "done: sandbox created, checked and stopped; nothing left behind"
grep -E "create a sandbox|sandbox running|sandbox stopped" "$RUN/adaptor.log" | sed 's/^/  adaptor: /'
