#!/usr/bin/env bash
# Regenerates the install files made from the adaptor's own flag
# definitions (one source of truth; tests/tests/chart.rs fails while they
# differ from what the binary prints):
#   install/charts/peerpods/providers/{aws,azure,gcp,libvirt}.yaml
#   install/charts/peerpods/generated/reference.json
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
log "building cloud-api-adaptor with every provider"
cargo build -q -p cloud-api-adaptor --all-features --bin cloud-api-adaptor
bin="$BIN_DIR/cloud-api-adaptor"
chart=install/charts/peerpods
for p in aws azure gcp libvirt; do
    "$bin" config-reference --format helm-values --provider "$p" >"$chart/providers/$p.yaml"
done
mkdir -p "$chart/generated"
"$bin" config-reference --format chart-json >"$chart/generated/reference.json"
log "wrote $chart/providers/*.yaml and $chart/generated/reference.json"
