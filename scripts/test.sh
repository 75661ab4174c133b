#!/usr/bin/env bash
# Everything `make test` runs. The last lines printed are cargo's test summary.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

log "format"
cargo fmt --all -- --check
log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "static binaries"
./scripts/build.sh
log "disk image (kernel and busybox are cached under $BERTH_CACHE)"
./scripts/build-image.sh
log "node image (containerd as a system extension)"
PROFILE=node ./scripts/build-image.sh

# The QEMU tests boot those images; here they must run, never skip.
export BERTH_REQUIRE_QEMU=1
export BERTH_IMAGE="$BERTH_OUT/berth.img"
export BERTH_NODE_IMAGE="$BERTH_OUT/node/berth.img"

log "tests"
cargo test --workspace --locked
