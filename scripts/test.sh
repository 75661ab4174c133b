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

log "tests"
cargo test --workspace --locked
