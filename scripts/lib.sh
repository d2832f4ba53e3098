# Shared by the project's scripts: where cargo builds and how to find binaries.
# Sourced, not run.

# Build outside the clone so repeated runs on one machine reuse the cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/peerpod-target}"
BIN_DIR="$CARGO_TARGET_DIR/debug"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
