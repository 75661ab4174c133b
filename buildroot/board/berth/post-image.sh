#!/bin/sh
# Buildroot post-image: verity hash tree after the erofs root, the ESP (GRUB EFI, grub.cfg,
# grubenv, slot A's kernel and boot arguments), the state partition, then the GPT disk from
# genimage.cfg, and finally GRUB's BIOS boot code pointed at the bios-boot partition.
set -eu
BOARD_DIR="$(dirname "$0")"
BERTH_CONFIGS="$BR2_EXTERNAL_BERTH_PATH/../configs"
GENIMAGE_TMP="$BUILD_DIR/genimage.tmp"
cd "$BINARIES_DIR"

# Root A: erofs, then its hash tree in the same image (table hash start = data blocks + 1).
cp rootfs.erofs root-a.img
size=$(stat -c %s root-a.img)
blocks=$((size / 4096))
veritysetup format --hash=blake2b-512 --data-blocks="$blocks" --hash-offset="$size" root-a.img root-a.img > verity.txt
root_hash=$(sed -n 's/^Root hash:[[:space:]]*//p' verity.txt)
salt=$(sed -n 's/^Salt:[[:space:]]*//p' verity.txt)

# genimage assigns the root partition this fixed PARTUUID (see genimage.cfg).
ROOT_A_UUID=5b1e4c2a-0f6d-4c8e-9a51-3d2b7e9f0a01
dev="PARTUUID=$ROOT_A_UUID"
cat > boot.cfg <<CFG
set berth_dm="berth-root,,,ro,0 $((blocks * 8)) verity 1 $dev $dev 4096 4096 $blocks $((blocks + 1)) blake2b-512 $root_hash $salt"
set berth_args="root=/dev/dm-0 ro rootfstype=erofs dm-mod.waitfor=$dev $(grep -v '^#' "$BERTH_CONFIGS/grub/cmdline" | tr '\n' ' ')"
CFG

# The two copies of the boot state (berth-image's grubenv module): a fresh image has slot A
# good and slot B empty; copy grubenv (SEQ=1) is newer than grubenv2 (SEQ=0).
for copy in "grubenv 1" "grubenv2 0"; do
  set -- $copy
  { printf '# GRUB Environment Block\nSEQ=%s\nORDER=A B\nA_OK=1\nA_NEW=0\nA_LEFT=3\nB_OK=0\nB_NEW=0\nB_LEFT=0\nEND=%s\n' "$2" "$2";
    head -c 1024 /dev/zero | tr '\0' '#'; } | head -c 1024 > "$1"
done

# GRUB images: find the ESP by label, then run the shared grub.cfg.
printf 'search --no-floppy --label --set=root BERTH-BOOT\nset prefix=($root)/grub\nconfigfile ($root)/grub/grub.cfg\n' > embed.cfg
"$HOST_DIR/bin/grub-mkimage" -O x86_64-efi -o BOOTX64.EFI -c embed.cfg -p /grub \
    part_gpt fat search search_label configfile normal linux echo test loadenv serial terminal efi_gop
"$HOST_DIR/bin/grub-mkimage" -O i386-pc -o core.img -c embed.cfg -p /grub \
    biosdisk part_gpt fat search search_label configfile normal linux echo test loadenv serial terminal

# ESP and state filesystems.
rm -f esp.vfat state.ext4
mkfs.vfat -C -n BERTH-BOOT esp.vfat 65536
mmd -i esp.vfat ::/EFI ::/EFI/BOOT ::/grub ::/A ::/B
mcopy -i esp.vfat BOOTX64.EFI ::/EFI/BOOT/BOOTX64.EFI
mcopy -i esp.vfat "$BERTH_CONFIGS/grub/grub.cfg" ::/grub/grub.cfg
mcopy -i esp.vfat grubenv ::/grub/grubenv
mcopy -i esp.vfat grubenv2 ::/grub/grubenv2
mcopy -i esp.vfat bzImage ::/A/vmlinuz
mcopy -i esp.vfat boot.cfg ::/A/boot.cfg
mkdir -p state-tree/units state-tree/logs state-tree/images state-tree/containers state-tree/volumes
mke2fs -q -F -t ext4 -b 4096 -L berth-state -d state-tree state.ext4 64M

rm -rf "$GENIMAGE_TMP"
genimage --rootpath "$TARGET_DIR" --tmppath "$GENIMAGE_TMP" --inputpath "$BINARIES_DIR" \
    --outputpath "$BINARIES_DIR" --config "$BOARD_DIR/genimage.cfg"
"$HOST_DIR/bin/berth-image" bios-install --disk berth.img --core core.img \
    --boot "$HOST_DIR/lib/grub/i386-pc/boot.img"
