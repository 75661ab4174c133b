#!/usr/bin/env bash
# Builds Berth's binaries: release, statically linked, into out/bin.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

# --target keeps crt-static away from build scripts and proc macros. The path remaps keep the
# checkout's and cargo's directories out of the binaries (panic locations), so every checkout
# of a commit builds the same bytes.
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --remap-path-prefix=$BERTH_ROOT=/berth --remap-path-prefix=$CARGO_HOME=/cargo" \
    cargo build --release --locked --target "$BERTH_TARGET" \
    --bin berth-init --bin berthctl --bin berth-runtime --bin berth-image

mkdir -p "$BERTH_OUT/bin"
for b in berth-init berthctl berth-runtime berth-image; do
    install -m 0755 "target/$BERTH_TARGET/release/$b" "$BERTH_OUT/bin/$b"
done
log "binaries in $BERTH_OUT/bin: $(cd "$BERTH_OUT/bin" && du -ch berth-init berthctl berth-runtime | tail -1)"
