#!/usr/bin/env bash
# The main job, end to end on this host: builds everything, starts the
# adaptor with the `local` provider, creates a sandbox as a Kata shim
# would (with a pod network namespace a stand-in CNI wired to a bridge),
# prints its Health check through the agent socket, pings the pod address
# through the VXLAN tunnel into the sandbox, lists it, stops it and shows
# that nothing is left behind. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[[ $(id -u) == 0 ]] || { echo "run as root: the local provider creates network namespaces" >&2; exit 1; }
scripts/setup.sh

RUN=$(mktemp -d /tmp/peerpod-demo.XXXXXX)
export PEERPOD_SOCKET=$RUN/hypervisor.sock PEERPOD_PODS_DIR=$RUN/pods PEERPOD_STATE_DIR=$RUN/state
CTL="$BIN_DIR/peerpodctl"
DAEMON_PID=
POD_NS=ppdemo-pod CNI_BR=ppdemocni0
cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
    fi
    ip netns del "$POD_NS" 2>/dev/null || true
    ip link del "$CNI_BR" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

log "starting cloud-api-adaptor (provider: local); log in $RUN/adaptor.log"
PROBE=127.0.0.1:18000
"$BIN_DIR/cloud-api-adaptor" local --bridge ppdemo0 --subnet 10.213.7.0 --probe-listen "$PROBE" >"$RUN/adaptor.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S $PEERPOD_SOCKET ]] && break; sleep 0.1; done
[[ -S $PEERPOD_SOCKET ]] || { cat "$RUN/adaptor.log"; echo "the adaptor did not start" >&2; exit 1; }

log "remote hypervisor API version: $("$CTL" version)"
log "stand-in CNI: pod netns $POD_NS with eth0 10.213.99.2/24 on bridge $CNI_BR (10.213.99.1)"
ip netns del "$POD_NS" 2>/dev/null || true
ip link del "$CNI_BR" 2>/dev/null || true
ip netns add "$POD_NS"
ip link add "$CNI_BR" type bridge && ip addr add 10.213.99.1/24 dev "$CNI_BR" && ip link set "$CNI_BR" up
ip link add ppdemo-veth type veth peer name eth0 netns "$POD_NS"
ip link set ppdemo-veth master "$CNI_BR" up
ip -n "$POD_NS" link set lo up && ip -n "$POD_NS" link set eth0 up
ip -n "$POD_NS" addr add 10.213.99.2/24 dev eth0 && ip -n "$POD_NS" route add default via 10.213.99.1
log "creating a sandbox for pod demo/nginx (CreateVM + StartVM)"
read -r SANDBOX SOCKET < <("$CTL" create --pod nginx --namespace demo --vcpus 0.5 --memory 512 --netns "/run/netns/$POD_NS")
echo "sandbox $SANDBOX, agent socket $SOCKET"
log "Health check through the agent socket (adaptor -> mTLS -> forwarder -> kata-agent)"
"$CTL" check "$SANDBOX"
log "ping the pod address from the node: the CNI delivers to the pod's eth0, the tunnel carries it into the sandbox"
ping -c 3 -W 3 10.213.99.2
VM_POD_NS=$(ip netns list | awk '{print $1}' | grep -- '^pplocal-.*-pod$' | head -1)
echo "answered from the sandbox's pod namespace $VM_POD_NS:"
ip -n "$VM_POD_NS" -br addr show eth0 | sed 's/^/  /'
log "sandboxes"
"$CTL" list
log "probes: /readyz says $(curl -fsS "http://$PROBE/readyz"); /metrics has:"
curl -fsS "http://$PROBE/metrics" | grep -E '^peerpod_(sandboxes\{phase="running"\}|startvm_duration_seconds_count|relay_bytes_total)' | sed 's/^/  /'
log "stopping the sandbox"
"$CTL" stop "$SANDBOX"
for _ in $(seq 100); do [[ -z $("$CTL" list | tail -n +2) ]] && break; sleep 0.1; done
"$CTL" list
if ip netns list | grep -q pplocal- ; then echo "leftover network namespaces!" >&2; exit 1; fi
if ip -n "$POD_NS" -d link | grep -q vxlan; then echo "leftover tunnel device in $POD_NS!" >&2; exit 1; fi
log "done: sandbox created, checked and stopped; nothing left behind"
grep -E "create a sandbox|tunnel up|sandbox running|sandbox stopped" "$RUN/adaptor.log" | sed 's/^/  adaptor: /'
