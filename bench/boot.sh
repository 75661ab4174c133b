#!/usr/bin/env bash
# Boot timeline and image sizes of Berth under QEMU (TCG), BIOS and UEFI side by side:
# kernel start, PID 1 start, first container, demo HTTP 200 (kernel timestamps + wall clock),
# berth-init's RSS; raw, qcow2 and compressed image sizes; the demo container's setup step by step
# and berth-init's milestones from PID 1 to it (tables, guest clock). Usage: bench/boot.sh [RUNS]
# (BERTH_TIMELINE_MACHINES=bios1,uefi1 boots only those machines; default all four.)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

./scripts/build-image.sh >/dev/null
echo "== image sizes"
raw="$BERTH_OUT/berth.img"
printf '  raw        %6.1f MiB apparent, %6.1f MiB allocated\n' \
    "$(echo "$(stat -c %s "$raw") / 1048576" | bc -l)" "$(echo "$(du -k "$raw" | cut -f1) / 1024" | bc -l)"
printf '  qcow2      %6.1f MiB (compressed clusters)\n' "$(echo "$(stat -c %s "$BERTH_OUT/berth.qcow2") / 1048576" | bc -l)"
zstd -q -19 -T0 -f "$raw" -o "$BERTH_OUT/berth.img.zst"
xz -T0 -9 -k -f -c "$raw" > "$BERTH_OUT/berth.img.xz"
printf '  raw.zst    %6.1f MiB (zstd -19)\n' "$(echo "$(stat -c %s "$BERTH_OUT/berth.img.zst") / 1048576" | bc -l)"
printf '  raw.xz     %6.1f MiB (xz -9)\n' "$(echo "$(stat -c %s "$BERTH_OUT/berth.img.xz") / 1048576" | bc -l)"
printf '  root       %6.1f MiB erofs + verity hash tree\n' \
    "$(echo "$(jq .root.total_size "$BERTH_OUT/manifest.json") / 1048576" | bc -l)"
printf '  kernel     %6.1f MiB bzImage (LZ4)\n' \
    "$(echo "$(stat -c %s "$(./scripts/build-kernel.sh 2>/dev/null)") / 1048576" | bc -l)"

echo "== boot timeline"
cargo run -q --release -p berth-qemu-tests --bin boot-timeline -- "${1:-3}"
