#!/usr/bin/env bash
# Builds the node profile's containerd system extension, out/extensions/containerd.erofs, and
# prints its path. berth-image places it in the root slot after the root filesystem, under the
# slot's dm-verity tree; berth-init mounts it on /run/berth/extensions/containerd and loads its
# units/ like built-in units.
#
# Contents: Debian's containerd and its runc v2 shim, the C library they link and its loader
# (the base root has none), the unit file and containerd's configuration from configs/node/.
# The binaries' ELF interpreter and library path are rewritten to the mount point, so they run
# without /lib64 in the root. Reproducible (fixed times, owners and UUID); skipped when its
# inputs are what the last build used.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

NAME=containerd
MOUNT="/run/berth/extensions/$NAME"
OUT="$BERTH_OUT/extensions"
IMG="$OUT/$NAME.erofs"
BINS=(/usr/bin/containerd /usr/bin/containerd-shim-runc-v2)
LOADER=/lib64/ld-linux-x86-64.so.2
LIBC=/lib/x86_64-linux-gnu/libc.so.6
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
VERSION="$(dpkg-query -W -f='${Version}' containerd)"

KEY="$(inputs_hash "${BINS[@]}" "$LOADER" "$LIBC" "$0" \
    $(find configs/node -type f | LC_ALL=C sort) \
    "containerd=$VERSION" "epoch=$EPOCH" "patchelf=$(patchelf --version)" \
    "erofs=$(dpkg-query -W -f='${Version}' erofs-utils)")"
STAMP="$OUT/$NAME.inputs"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -f "$IMG" ]; then
    echo "$IMG"
    exit 0
fi
rm -f "$STAMP"

# Everything the binaries link must be in the extension: only the C library is expected.
for bin in "${BINS[@]}"; do
    needed="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u | tr '\n' ' ')"
    [ "$needed" = "libc.so.6 " ] || die "$bin needs ${needed:-nothing}: only libc.so.6 is packed"
done

TREE="$OUT/$NAME.tree"
log "extension $NAME: staging containerd $VERSION in $TREE"
rm -rf "$TREE"
mkdir -p "$TREE"/{bin,lib,units,etc/containerd}
for bin in "${BINS[@]}"; do
    install -m 0755 "$bin" "$TREE/bin/"
    patchelf --set-interpreter "$MOUNT/lib/$(basename "$LOADER")" --set-rpath "$MOUNT/lib" \
        "$TREE/bin/$(basename "$bin")"
done
install -m 0755 "$(readlink -f "$LOADER")" "$TREE/lib/$(basename "$LOADER")"
install -m 0644 "$(readlink -f "$LIBC")" "$TREE/lib/$(basename "$LIBC")"
install -m 0644 configs/node/containerd.toml "$TREE/units/containerd.toml"
install -m 0644 configs/node/config.toml "$TREE/etc/containerd/config.toml"
cat > "$TREE/extension-release" <<REL
NAME=$NAME
CONTAINERD_VERSION=$VERSION
GLIBC_VERSION=$(dpkg-query -W -f='${Version}' libc6)
REL
find "$TREE" -exec touch -h -d "@$EPOCH" {} +

mkdir -p "$OUT"
rm -f "$IMG"
# erofs-utils only clamps times newer than SOURCE_DATE_EPOCH; -T sets them all.
env -u SOURCE_DATE_EPOCH mkfs.erofs --quiet --all-root "-T$EPOCH" \
    -U00000000-0000-0000-0000-000000000000 "$IMG" "$TREE"
echo "$KEY" > "$STAMP"
log "extension $NAME: $(du -m "$IMG" | cut -f1) MiB ($IMG)"
echo "$IMG"
