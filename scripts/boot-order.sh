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

python3 - "$WORK/translated.log" "$MAP" init/boot.order <<'PY'
import bisect, sys
log, map_path, out = sys.argv[1:4]
# lld's map has "VMA LMA size align name" lines: an output section (".text"), its input
# sections ("file:(.text.name)") and their symbols (alignment 1). Only .text's symbols count.
symbols, section = {}, None
for line in open(map_path, errors="replace"):
    f = line.split()
    if len(f) != 5 or ":(" in f[4]:
        continue
    if f[4].startswith("."):
        section = f[4]
    elif section == ".text" and f[3] == "1":
        symbols.setdefault(int(f[0], 16), (int(f[2], 16), f[4]))
entry = next((a for a, (_, n) in symbols.items() if n == "_start"), None)
if entry is None:
    sys.exit("boot-order: no _start in the linker map")
starts = sorted(symbols)
base, order, seen = None, [], set()
for line in open(log, errors="replace"):
    # Instruction lines: "0x<address>:  <bytes> <mnemonic>"; user space is below 2^47.
    head = line.split(":", 1)[0]
    if not head.startswith("0x") or len(head) > 16:
        continue
    address = int(head, 16)
    if address < 1 << 32:
        continue  # firmware and boot loader (PID 1 is mapped far above 4 GiB)
    if base is None:
        base = address - entry  # PID 1's first instruction is berth-init's _start
    i = bisect.bisect_right(starts, address - base) - 1
    if i < 0:
        continue
    start = starts[i]
    size, name = symbols[start]
    if address - base < start + max(size, 1) and name not in seen:
        seen.add(name)
        order.append((name, size))
with open(out, "w") as f:
    f.write("# berth-init's functions in the order its boot first runs them (PID 1 to the demo\n"
            "# container started), for the linker (init/build.rs). Written by scripts/boot-order.sh.\n")
    f.writelines(name + "\n" for name, _ in order)
print(f"boot-order: {len(order)} functions, {sum(s for _, s in order) // 1024} KiB of code, "
      f"into {out}")
PY
