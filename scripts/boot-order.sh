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
cp --sparse=always "$BERTH_OUT/berth.img" "$WORK/disk.img"

log "boot-order: booting the image with QEMU's translation log (about a minute)"
python3 - "$WORK" <<'PY'
import os, select, subprocess, sys, time
work = sys.argv[1]
cmd = ["qemu-system-x86_64", "-accel", "tcg",
       "-machine", "q35,sata=off,smbus=off,i8042=off,vmport=off", "-nodefaults",
       "-m", "512", "-smp", "1", "-display", "none", "-monitor", "none", "-serial", "stdio",
       "-drive", f"file={work}/disk.img,format=raw,if=none,id=disk0",
       "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
       "-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0,romfile=",
       "-no-reboot", "-d", "in_asm", "-D", f"{work}/translated.log"]
qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
console, started, deadline = b"", False, time.monotonic() + 300
while time.monotonic() < deadline and not started:
    ready, _, _ = select.select([qemu.stdout], [], [], 1)
    if ready:
        data = os.read(qemu.stdout.fileno(), 4096)
        if not data:
            break
        console += data
        started = b"unit demo-web: started" in console
qemu.kill()
qemu.wait()
if not started:
    sys.exit("boot-order: the demo container did not start within 300 s")
PY

python3 scripts/boot_order.py write "$WORK/translated.log" "$MAP" init/boot.order
