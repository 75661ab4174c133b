#!/usr/bin/env bash
# Builds Berth's binaries: release, statically linked, into out/bin.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

# --target keeps crt-static away from build scripts and proc macros. The path remaps keep the
# checkout's and cargo's directories out of the binaries (panic locations), so every checkout
# of a commit builds the same bytes.
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
# berth-init's boot path first in the executable (init/build.rs), and the linker's map of it
# (scripts/boot-order.sh reads it to renew the list).
BOOT_ORDER="$BERTH_ROOT/init/boot.order"
LINK_MAP="$BERTH_ROOT/target/$BERTH_TARGET/release/berth-init.map"
export BERTH_LINK_MAP="$LINK_MAP"
if [ -f "$BOOT_ORDER" ]; then export BERTH_BOOT_ORDER="$BOOT_ORDER"; fi
# Packed relative relocations (DT_RELR, glibc 2.36's static-pie start applies them): berth-init's
# ~12,500 take 4 KiB instead of 300 KiB, which its exec would read through dm-verity.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs --remap-path-prefix=$BERTH_ROOT=/berth --remap-path-prefix=$CARGO_HOME=/cargo" \
    cargo build --release --locked --target "$BERTH_TARGET" \
    --bin berth-init --bin berthctl --bin berth-runtime --bin berth-image

mkdir -p "$BERTH_OUT/bin"
for b in berth-init berthctl berth-runtime berth-image; do
    install -m 0755 "target/$BERTH_TARGET/release/$b" "$BERTH_OUT/bin/$b"
done
# A list from older code names functions that are gone or renamed: say how much of it still
# applies, so a stale list shows. Counted again only when the executable was linked anew.
COVERAGE="$LINK_MAP.boot-order"
if [ -f "$BOOT_ORDER" ] && [ -f "$LINK_MAP" ]; then
    if [ "$LINK_MAP" -nt "$COVERAGE" ] || [ "$BOOT_ORDER" -nt "$COVERAGE" ]; then
        python3 scripts/boot_order.py coverage "$BOOT_ORDER" "$LINK_MAP" > "$COVERAGE"
    fi
    log "$(cat "$COVERAGE")"
fi
log "binaries in $BERTH_OUT/bin: $(cd "$BERTH_OUT/bin" && du -ch berth-init berthctl berth-runtime | tail -1)"
