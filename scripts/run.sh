#!/usr/bin/env bash
# `make run`: builds what is missing, then boots a copy of out/berth.qcow2 under QEMU (TCG)
# with the serial console on this terminal, forwarding 127.0.0.1:$BERTH_HTTP_PORT (default
# 8080) to the demo web container. The copy is thrown away when QEMU exits.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

PORT="${BERTH_HTTP_PORT:-8080}"
DISK_SIZE="${BERTH_DISK_SIZE:-4G}"

./scripts/build-image.sh

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/berth-run.XXXXXX")"
trap 'rm -rf "$RUN_DIR"' EXIT
cp "$BERTH_OUT/berth.qcow2" "$RUN_DIR/disk.qcow2"
# A disk larger than the image: the state partition grows into it on first boot.
qemu-img resize -q "$RUN_DIR/disk.qcow2" "$DISK_SIZE"
cat > "$RUN_DIR/user-data" <<'USERDATA'
hostname = "berth-demo"
USERDATA
"$BERTH_OUT/bin/berth-image" cidata --user-data "$RUN_DIR/user-data" --out "$RUN_DIR/cidata.img"

cat >&2 <<BANNER

  Berth is booting under QEMU (TCG: no KVM here, so give it a few seconds).
  The demo web server will answer at:  http://127.0.0.1:$PORT/
  This terminal is the serial console; the admin shell appears on it after boot.
  Quit: 'berthctl poweroff' in the admin shell, or Ctrl-A C then 'system_powerdown' (the
  ACPI power button: ordered shutdown), or Ctrl-A X (pulls the plug).

BANNER

# The same machine as the QEMU tests (qemu-tests/src/vm.rs, MACHINE): only the devices Berth
# uses (-nodefaults: no VGA, CD-ROM or default NIC; no SATA, SMBus, PS/2 or VMware port), the
# disk as the firmware's first and only boot entry, no iPXE option ROM on the NIC.
qemu-system-x86_64 -accel tcg -machine q35,sata=off,smbus=off,i8042=off,vmport=off -nodefaults \
    -m 1024 -smp 2 \
    -nographic -serial mon:stdio \
    -drive "file=$RUN_DIR/disk.qcow2,format=qcow2,if=none,id=disk0" \
    -device virtio-blk-pci,drive=disk0,bootindex=0 \
    -drive "file=$RUN_DIR/cidata.img,format=raw,if=none,id=disk1,readonly=on" \
    -device virtio-blk-pci,drive=disk1 \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$PORT-:80" \
    -device virtio-net-pci,netdev=net0,romfile= \
    -device i6300esb
