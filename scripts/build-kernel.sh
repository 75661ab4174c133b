#!/usr/bin/env bash
# Builds Berth's kernel from Debian's linux-source-6.12 with configs/kernel/berth.config and the
# patches in configs/kernel/patches/ (applied in name order, as Buildroot does).
# tinyconfig + the fragment (merge_config.sh) + olddefconfig; the result is cached under
# $BERTH_CACHE/kernel-<hash>/ keyed by the source package version, the fragment and the patches,
# so unchanged inputs skip the build. Prints the path of the cached bzImage on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FRAGMENT="$BERTH_ROOT/configs/kernel/berth.config"
# No patch files: an empty list, not the pattern itself.
shopt -s nullglob
PATCHES=("$BERTH_ROOT"/configs/kernel/patches/*.patch)
shopt -u nullglob
SRC_TARBALL=/usr/src/linux-source-6.12.tar.xz
[ -f "$SRC_TARBALL" ] || die "missing $SRC_TARBALL (run: make deps)"
SRC_VERSION="$(dpkg-query -W -f='${Version}' linux-source-6.12)"

# Reproducible kernel: the build stamp (`uname -v`) carries a fixed time, user, host and build
# number instead of the builder's. The time is the source package's changelog date, so it only
# changes with the source itself.
KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$(dpkg-parsechangelog -l /usr/share/doc/linux-source-6.12/changelog.Debian.gz -S Timestamp)" '+%Y-%m-%d %H:%M:%S UTC')"
export KBUILD_BUILD_TIMESTAMP KBUILD_BUILD_USER=berth KBUILD_BUILD_HOST=berth KBUILD_BUILD_VERSION=1

# The key also covers the steps below (this script), so a changed recipe rebuilds.
KEY="$(inputs_hash "$FRAGMENT" "${PATCHES[@]}" "$0" "linux-source-6.12=$SRC_VERSION")"
OUT_DIR="$BERTH_CACHE/kernel-$KEY"
if [ -f "$OUT_DIR/bzImage" ] && [ -f "$OUT_DIR/config" ]; then
    log "kernel: cached $OUT_DIR"
    echo "$OUT_DIR/bzImage"
    exit 0
fi

mkdir -p "$BERTH_CACHE"
# One build at a time per machine: the source and object trees below are shared.
exec 8>"$BERTH_CACHE/kernel.lock"
flock 8
if [ -f "$OUT_DIR/bzImage" ]; then
    echo "$OUT_DIR/bzImage"
    exit 0
fi

SRC_DIR="$BERTH_CACHE/src/linux-source-6.12-$SRC_VERSION"
# The object tree persists between keys: a config change rebuilds only what it touches.
OBJ_DIR="$BERTH_CACHE/kernel-build-$SRC_VERSION"
# The source is extracted and patched once per set of patches. A new set starts from a fresh
# extraction and a fresh object tree: the tarball's file times are older than the objects, so
# make would not rebuild a file whose patch was removed.
PATCHES_KEY="$(inputs_hash "${PATCHES[@]}")"
if [ "$(cat "$SRC_DIR/.berth-patched" 2>/dev/null)" != "$PATCHES_KEY" ]; then
    log "kernel: extracting $SRC_TARBALL"
    rm -rf "$SRC_DIR" "$OBJ_DIR"
    mkdir -p "$SRC_DIR"
    tar -xf "$SRC_TARBALL" -C "$SRC_DIR" --strip-components=1
    for p in "${PATCHES[@]}"; do
        log "kernel: applying $(basename "$p")"
        patch -d "$SRC_DIR" -p1 --forward --batch --quiet < "$p" || die "kernel: $p does not apply to linux-source-6.12 $SRC_VERSION"
    done
    echo "$PATCHES_KEY" > "$SRC_DIR/.berth-patched"
fi
mkdir -p "$OBJ_DIR"
KMAKE=(make -C "$SRC_DIR" O="$OBJ_DIR" ARCH=x86_64 -s)

log "kernel: configuring (tinyconfig + $(basename "$FRAGMENT"))"
"${KMAKE[@]}" tinyconfig >/dev/null
(cd "$SRC_DIR" && ./scripts/kconfig/merge_config.sh -m -O "$OBJ_DIR" "$OBJ_DIR/.config" "$FRAGMENT") >/dev/null
"${KMAKE[@]}" olddefconfig >/dev/null

# Every setting the fragment asks for must survive olddefconfig (a missing dependency drops
# options silently otherwise).
lost=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$OBJ_DIR/.config" || lost+=("$line")
            ;;
        "# CONFIG_"*" is not set")
            opt="${line#\# }"; opt="${opt%% *}"
            grep -q "^$opt=" "$OBJ_DIR/.config" && lost+=("$line")
            ;;
    esac
done < "$FRAGMENT"
if [ "${#lost[@]}" -gt 0 ]; then
    printf '  lost: %s\n' "${lost[@]}" >&2
    die "kernel: ${#lost[@]} fragment settings did not survive olddefconfig"
fi

log "kernel: building bzImage ($(nproc) jobs; ~10 min from scratch)"
"${KMAKE[@]}" -j"$(nproc)" bzImage

mkdir -p "$OUT_DIR.tmp"
cp "$OBJ_DIR/arch/x86/boot/bzImage" "$OUT_DIR.tmp/bzImage"
cp "$OBJ_DIR/.config" "$OUT_DIR.tmp/config"
# The symbols of this build: the QEMU tests name kernel functions in QEMU's translation log.
cp "$OBJ_DIR/System.map" "$OUT_DIR.tmp/System.map"
"${KMAKE[@]}" kernelrelease > "$OUT_DIR.tmp/release"
rm -rf "$OUT_DIR"
mv "$OUT_DIR.tmp" "$OUT_DIR"
log "kernel: $(cat "$OUT_DIR/release"), bzImage $(du -h "$OUT_DIR/bzImage" | cut -f1)"
echo "$OUT_DIR/bzImage"
