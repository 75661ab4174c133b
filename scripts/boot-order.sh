#!/usr/bin/env bash
# Writes init/boot.order: berth-init's functions in the order the boot first runs them, from
# PID 1's first instruction to the demo container's start (its setup task included). The
# build links berth-init with them first (init/build.rs), so the boot path is one contiguous
# stretch of the executable instead of pages spread over all of it.
#
# How: the image is built as usual (same compiler settings, so the same symbol names) with a
# linker map, booted once under QEMU (BIOS, 1 vCPU) with its translation log on (`-d
# in_asm`: every guest code block the first time it runs), and the user-space addresses of
# that log are mapped to functions through the map. Run it again after large code changes;
# scripts/build.sh reports how many of the list's symbols the build still has.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

./scripts/build-image.sh >/dev/null
MAP="$BERTH_ROOT/target/$BERTH_TARGET/release/berth-init.map"
[ -f "$MAP" ] || die "no linker map at $MAP"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build --release --locked -p berth-qemu-tests --bin trace-boot
log "boot-order: booting the image with QEMU's translation log (about a minute)"
./target/release/trace-boot "$BERTH_OUT/berth.img" "$WORK/translated.log"
python3 scripts/boot_order.py write "$WORK/translated.log" "$MAP" init/boot.order
