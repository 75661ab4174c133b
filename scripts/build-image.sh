#!/usr/bin/env bash
# Builds Berth's bootable disk image: out/berth.img (raw), .qcow2, .vhd, .vmdk,
# out/manifest.json and out/sbom.spdx.json. PROFILE=node builds the Kubernetes node variant into
# out/node/ instead (raw and qcow2): the same root filesystem plus the containerd system
# extension (scripts/build-extension.sh) in the root slot. Kernel and busybox come from the cache (built when
# their inputs change), the root filesystem tree is staged in out/rootfs, the state partition's
# tree in out/state.
#
# Reproducible: every time in the image is the source commit's (SOURCE_DATE_EPOCH), and
# berth-image derives GUIDs, salts and volume IDs from the inputs, so two builds of a commit
# give the same bytes. out/assemble.args records the assembly for the test that re-runs it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

PROFILE="${PROFILE:-base}"
EXTENSIONS=()
FORMATS=()
case "$PROFILE" in
    base) IMG_OUT="$BERTH_OUT" ;;
    node)
        IMG_OUT="$BERTH_OUT/node"
        EXTENSIONS=(--extension "containerd=$(./scripts/build-extension.sh)")
        FORMATS=(--formats raw,qcow2)
        ;;
    *) die "PROFILE=$PROFILE: the profiles are base and node" ;;
esac
mkdir -p "$IMG_OUT"

./scripts/build.sh
KERNEL="$(./scripts/build-kernel.sh)"
BUSYBOX="$(./scripts/build-busybox.sh)"

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
BUILD_ID="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH="$EPOCH"
CREATED="$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)"

# Nothing to do when every input is what the last assembly used (`make run` starts QEMU at
# once): the binaries, kernel, busybox, every file under configs/, this script, the host files
# copied into the image and the host's package list (the tools that assemble it), and the
# values stamped into it.
IMAGE_KEY="$(inputs_hash "$BERTH_OUT"/bin/berth-{init,runtime,image} "$BERTH_OUT/bin/berthctl" \
    "$KERNEL" "$BUSYBOX" "$0" /bin/busybox /etc/ssl/certs/ca-certificates.crt /var/lib/dpkg/status \
    $(find configs -type f | LC_ALL=C sort) \
    "version=$VERSION" "build=$BUILD_ID" "commit=$COMMIT" "epoch=$EPOCH" \
    "keys=${BERTH_UPDATE_KEYS:-configs/keys/test-key.pub}" "profile=$PROFILE" \
    "${EXTENSIONS[@]}" "${EXTENSIONS[@]/#*=/}")"
IMAGE_STAMP="$IMG_OUT/image.inputs"
if [ -f "$IMAGE_STAMP" ] && [ "$(cat "$IMAGE_STAMP")" = "$IMAGE_KEY" ] \
    && [ -f "$IMG_OUT/berth.img" ] && [ -f "$IMG_OUT/berth.qcow2" ] \
    && [ -f "$IMG_OUT/sbom.spdx.json" ]; then
    log "image: up to date ($IMG_OUT/berth.img)"
    exit 0
fi
rm -f "$IMAGE_STAMP"

# --- Root filesystem tree ------------------------------------------------------------
ROOTFS="$IMG_OUT/rootfs"
log "image: staging root filesystem in $ROOTFS"
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
(cd "$ROOTFS" && mkdir -p bin sbin usr/bin usr/sbin usr/lib/berth/units etc/ssl/certs \
    dev proc sys run tmp boot root mnt var/lib/berth)
chmod 0700 "$ROOTFS/root"
# The nodes PID 1 needs before it mounts devtmpfs: the kernel opens /dev/console for its
# stdio, and berth-init logs to /dev/kmsg from its first line.
mknod -m 0600 "$ROOTFS/dev/console" c 5 1
mknod -m 0644 "$ROOTFS/dev/kmsg" c 1 11
mknod -m 0666 "$ROOTFS/dev/null" c 1 3
chmod 1777 "$ROOTFS/tmp"
cp -a configs/rootfs/. "$ROOTFS/"
install -m 0755 "$BERTH_OUT/bin/berth-init" "$ROOTFS/sbin/init"
install -m 0755 "$BERTH_OUT/bin/berthctl" "$ROOTFS/usr/bin/berthctl"
install -m 0755 "$BERTH_OUT/bin/berth-runtime" "$ROOTFS/usr/bin/berth-runtime"
install -m 0755 "$BUSYBOX" "$ROOTFS/bin/busybox"
# Applet links where busybox would install them (bin/sh, sbin/getty, usr/bin/wget, ...).
while read -r applet; do
    [ -e "$ROOTFS/$applet" ] && continue
    up="$(dirname "$applet" | sed 's|[^/]*|..|g')"
    ln -s "$up/bin/busybox" "$ROOTFS/$applet"
done < <("$BUSYBOX" --list-full)
cp configs/units/*.toml "$ROOTFS/usr/lib/berth/units/"
mkdir -p "$ROOTFS/usr/share/berth/www"
cp configs/demo/www/* "$ROOTFS/usr/share/berth/www/"
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
ln -s ../run/berth/resolv.conf "$ROOTFS/etc/resolv.conf"
ln -s ../proc/self/mounts "$ROOTFS/etc/mtab"
# An empty state filesystem: berth-init writes it to a state partition it finds blank (a wiped
# disk), then grows it to the partition like on any first boot.
SEED="$IMG_OUT/state-seed.ext4"
SEED_UUID="$(printf 'berth:state-seed:%s' "$VERSION" | sha256sum \
    | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')"
rm -f "$SEED"
E2FSPROGS_FAKE_TIME="$EPOCH" mke2fs -q -F -t ext4 -b 4096 \
    -E "root_owner=0:0,hash_seed=$SEED_UUID" -U "$SEED_UUID" -L berth-state "$SEED" 16M
zstd -q -19 -f "$SEED" -o "$ROOTFS/usr/lib/berth/state-seed.ext4.zst"
rm -f "$SEED"
cat > "$ROOTFS/etc/os-release" <<OS
NAME=Berth
ID=berth
VERSION_ID=$VERSION
VERSION="$VERSION ($BUILD_ID)"
BUILD_ID=$BUILD_ID
PRETTY_NAME="Berth $VERSION"
OS

# --- Demo container image (OCI layout, built locally with umoci) -----------------------
DEMO_OCI="$IMG_OUT/demo-oci"
DEMO_TAG=latest
log "image: demo OCI image in $DEMO_OCI"
rm -rf "$DEMO_OCI" "$IMG_OUT/demo-bundle"
umoci init --layout "$DEMO_OCI"
umoci new --image "$DEMO_OCI:$DEMO_TAG"
# Fixed times in the layer (files) and the config (created, history), so the image's digest
# is the same in every build.
UMOCI_TIME=(--history.created "$CREATED")
umoci unpack --image "$DEMO_OCI:$DEMO_TAG" "$IMG_OUT/demo-bundle" >/dev/null
DEMO_ROOT="$IMG_OUT/demo-bundle/rootfs"
mkdir -p "$DEMO_ROOT/bin" "$DEMO_ROOT/www"
install -m 0755 /bin/busybox "$DEMO_ROOT/bin/busybox"
# httpd serves; the rest lets the same image run small shell workloads (the QEMU tests use it).
for applet in sh httpd wget cat ls sleep yes head; do ln -s busybox "$DEMO_ROOT/bin/$applet"; done
cp configs/demo/www/* "$DEMO_ROOT/www/"
find "$DEMO_ROOT" -exec touch -h -d "@$EPOCH" {} +
umoci repack "${UMOCI_TIME[@]}" --image "$DEMO_OCI:$DEMO_TAG" "$IMG_OUT/demo-bundle"
# Only a cmd, no entrypoint: a unit's `command` replaces it whole.
umoci config "${UMOCI_TIME[@]}" --created "$CREATED" --image "$DEMO_OCI:$DEMO_TAG" \
    --config.cmd /bin/httpd --config.cmd -f --config.cmd -p --config.cmd 80 \
    --config.cmd -h --config.cmd /www --config.exposedports 80/tcp \
    --config.workingdir /www
umoci gc --layout "$DEMO_OCI"
rm -rf "$IMG_OUT/demo-bundle"

# --- State partition tree ------------------------------------------------------------
STATE="$IMG_OUT/state"
rm -rf "$STATE"
mkdir -p "$STATE"/{units,logs,images,containers,volumes}
# The demo image, preloaded into the image store (as an OCI archive), and its unit.
tar -C "$DEMO_OCI" --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf "$IMG_OUT/demo-oci.tar" .
"$BERTH_OUT/bin/berth-runtime" image --store "$STATE/images" \
    import "$IMG_OUT/demo-oci.tar" --tag berth.local/demo-web:latest >/dev/null
cp configs/demo/demo-web.toml "$STATE/units/demo-web.toml"
# The lease the demo's first start would write: that start then writes nothing to the state
# partition (a read-only container's directory is on /run).
"$BERTH_OUT/bin/berth-runtime" image --store "$STATE/images" \
    lease demo-web berth.local/demo-web:latest >/dev/null
# The units the image ships, validated into the cache PID 1 loads them through: a boot
# whose unit files are unchanged parses no TOML.
"$BERTH_OUT/bin/berthctl" check --cache "$STATE/units.cache" \
    "$ROOTFS"/usr/lib/berth/units/*.toml "$STATE"/units/*.toml >/dev/null

# --- Disk ----------------------------------------------------------------------------
log "image: assembling disk"
KERNEL_DIR="$(dirname "$KERNEL")"
BUSYBOX_DIR="$(dirname "$BUSYBOX")"
ASSEMBLE=(disk
    --layout configs/layout/disk.toml
    --grub-cfg configs/grub/grub.cfg
    --cmdline configs/grub/cmdline
    --kernel "$KERNEL"
    --kernel-release "$(cat "$KERNEL_DIR/release")"
    --rootfs "$ROOTFS"
    --state "$STATE"
    --version "$VERSION"
    --epoch "$EPOCH"
    --source-commit "$COMMIT"
    --key "${BERTH_UPDATE_KEYS:-configs/keys/test-key.pub}"
    --input "kernel-config=$KERNEL_DIR/config"
    --input "kernel-fragment=configs/kernel/berth.config"
    --input "busybox-config=$BUSYBOX_DIR/config"
    --input "busybox-fragment=configs/busybox/berth.config"
    --input "cargo-lock=Cargo.lock"
    --input "layout=configs/layout/disk.toml"
    --input "grub-cfg=configs/grub/grub.cfg"
    --input "cmdline=configs/grub/cmdline"
    --work "$IMG_OUT/work"
    --out "$IMG_OUT"
    "${EXTENSIONS[@]}"
    "${FORMATS[@]}")
printf '%s\n' "${ASSEMBLE[@]}" > "$IMG_OUT/assemble.args"
"$BERTH_OUT/bin/berth-image" "${ASSEMBLE[@]}"

# --- Software bill of materials ---------------------------------------------------------
cargo metadata --format-version 1 --locked \
    --filter-platform "$BERTH_TARGET" > "$IMG_OUT/work/cargo-metadata.json"
KERNEL_VERSION="$(dpkg-query -W -f='${Version}' linux-source-6.12)"
"$BERTH_OUT/bin/berth-image" sbom \
    --metadata "$IMG_OUT/work/cargo-metadata.json" \
    --version "$VERSION" --epoch "$EPOCH" --source-commit "$COMMIT" \
    --component "linux=${KERNEL_VERSION}=GPL-2.0-only WITH Linux-syscall-note" \
    --component "busybox=$(cat "$BUSYBOX_DIR/version")=GPL-2.0-only" \
    --component "grub=$(dpkg-query -W -f='${Version}' grub-pc-bin)=GPL-3.0-or-later" \
    --out "$IMG_OUT/sbom.spdx.json"
echo "$IMAGE_KEY" > "$IMAGE_STAMP"
log "image: done ($IMG_OUT/berth.img, manifest $IMG_OUT/manifest.json, SBOM $IMG_OUT/sbom.spdx.json)"
