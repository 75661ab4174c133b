#!/bin/sh
# Buildroot post-image: the disk is assembled by berth-image (the host-berth package), with the
# same layout, GRUB script, kernel arguments and steps as `make image` (scripts/build-image.sh):
# verity hash tree, slot A's boot arguments, grubenv, GRUB's BIOS and EFI images, ESP and state
# filesystems, GPT. Only the inputs differ: Buildroot's rootfs.erofs (made under fakeroot) and
# bzImage, and GRUB's modules from Buildroot's grub2 build.
set -eu
BERTH_SRC="$BR2_EXTERNAL_BERTH_PATH/.."
BERTH_CONFIGS="$BERTH_SRC/configs"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$BERTH_SRC/Cargo.toml" | head -1)"
# grub2's build directory (host-grub2's is named host-grub2-*).
GRUB_BUILD="$(find "$BUILD_DIR" -mindepth 1 -maxdepth 1 -type d -name 'grub2-*' | sort | tail -1)"
[ -n "$GRUB_BUILD" ] || { echo "post-image: no grub2 build in $BUILD_DIR" >&2; exit 1; }

# The state partition starts empty: the directories berth-init expects.
STATE="$BINARIES_DIR/berth-state"
rm -rf "$STATE"
mkdir -p "$STATE/units" "$STATE/logs" "$STATE/images" "$STATE/containers" "$STATE/volumes"

"$HOST_DIR/bin/berth-image" disk \
    --layout "$BERTH_CONFIGS/layout/disk.toml" \
    --grub-cfg "$BERTH_CONFIGS/grub/grub.cfg" \
    --cmdline "$BERTH_CONFIGS/grub/cmdline" \
    --kernel "$BINARIES_DIR/bzImage" \
    --root-image "$BINARIES_DIR/rootfs.erofs" \
    --state "$STATE" \
    --version "$VERSION" \
    --epoch "${SOURCE_DATE_EPOCH:-0}" \
    --grub-pc-dir "$GRUB_BUILD/build-i386-pc/grub-core" \
    --grub-efi-dir "$GRUB_BUILD/build-x86_64-efi/grub-core" \
    --input "kernel-fragment=$BERTH_CONFIGS/kernel/berth.config" \
    --input "busybox-fragment=$BERTH_CONFIGS/busybox/berth.config" \
    --input "cargo-lock=$BERTH_SRC/Cargo.lock" \
    --input "buildroot-config=$BR2_CONFIG" \
    --formats raw,qcow2 \
    --work "$BINARIES_DIR/berth-work" \
    --out "$BINARIES_DIR"
