#!/usr/bin/env bash
# Builds a static busybox from Debian's source package with configs/busybox/berth.config
# (allnoconfig + the fragment + oldconfig). Cached under $BERTH_CACHE/busybox-<hash>/ keyed by the
# source version and the fragment. Prints the path of the cached binary on stdout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FRAGMENT="$BERTH_ROOT/configs/busybox/berth.config"
SRC_VERSION="$(apt-cache showsrc busybox 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)"
[ -n "$SRC_VERSION" ] || die "busybox: no source package known to apt (run: make deps)"

KEY="$(inputs_hash "$FRAGMENT" "$0" "busybox=$SRC_VERSION")"
OUT_DIR="$BERTH_CACHE/busybox-$KEY"
if [ -x "$OUT_DIR/busybox" ]; then
    log "busybox: cached $OUT_DIR"
    echo "$OUT_DIR/busybox"
    exit 0
fi

mkdir -p "$BERTH_CACHE/src"
exec 8>"$BERTH_CACHE/busybox.lock"
flock 8
if [ -x "$OUT_DIR/busybox" ]; then
    echo "$OUT_DIR/busybox"
    exit 0
fi

SRC_PARENT="$BERTH_CACHE/src/busybox-${SRC_VERSION//:/_}"  # make rejects ":" in paths
if [ ! -f "$SRC_PARENT/.berth-extracted" ]; then
    log "busybox: apt-get source busybox=$SRC_VERSION"
    rm -rf "$SRC_PARENT"
    mkdir -p "$SRC_PARENT"
    (cd "$SRC_PARENT" && apt-get source -q "busybox=$SRC_VERSION" >/dev/null)
    touch "$SRC_PARENT/.berth-extracted"
fi
SRC_DIR="$(find "$SRC_PARENT" -mindepth 1 -maxdepth 1 -type d -name 'busybox-*' | head -1)"
[ -n "$SRC_DIR" ] || die "busybox: no source tree in $SRC_PARENT"

# A fixed object directory (under the lock) rather than a random one: no build path differs
# between two builds. The banner's build time is the source package's changelog date.
OBJ_DIR="$BERTH_CACHE/busybox-build"
rm -rf "$OBJ_DIR"
mkdir -p "$OBJ_DIR"
trap 'rm -rf "$OBJ_DIR"' EXIT
SOURCE_DATE_EPOCH="$(dpkg-parsechangelog -l "$SRC_DIR/debian/changelog" -S Timestamp)"
export SOURCE_DATE_EPOCH KCONFIG_NOTIMESTAMP=1 KBUILD_BUILD_USER=berth KBUILD_BUILD_HOST=berth
BBMAKE=(make -C "$SRC_DIR" O="$OBJ_DIR" -s)

log "busybox: configuring (allnoconfig + $(basename "$FRAGMENT"))"
"${BBMAKE[@]}" allnoconfig >/dev/null
# Replace every symbol the fragment names, then let oldconfig fill in what they unlock.
grep -oE '^(# )?CONFIG_[A-Z0-9_]+' "$FRAGMENT" | sed 's/^# //' | sort -u > "$OBJ_DIR/fragment-symbols"
grep -vwF -f "$OBJ_DIR/fragment-symbols" "$OBJ_DIR/.config" > "$OBJ_DIR/.config.base" || true
{ cat "$OBJ_DIR/.config.base"; grep -E '^(CONFIG_|# CONFIG_)' "$FRAGMENT"; } > "$OBJ_DIR/.config"
yes "" | "${BBMAKE[@]}" oldconfig >/dev/null 2>&1 || true

lost=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qxF "$line" "$OBJ_DIR/.config" || lost+=("$line") ;;
    esac
done < "$FRAGMENT"
if [ "${#lost[@]}" -gt 0 ]; then
    printf '  lost: %s\n' "${lost[@]}" >&2
    die "busybox: ${#lost[@]} fragment settings did not survive oldconfig"
fi

log "busybox: building"
"${BBMAKE[@]}" -j"$(nproc)" busybox >/dev/null
file "$OBJ_DIR/busybox" | grep -q "statically linked" || die "busybox: result is not static"

mkdir -p "$OUT_DIR.tmp"
cp "$OBJ_DIR/busybox" "$OUT_DIR.tmp/busybox"
cp "$OBJ_DIR/.config" "$OUT_DIR.tmp/config"
"$OUT_DIR.tmp/busybox" --list > "$OUT_DIR.tmp/applets"
echo "$SRC_VERSION" > "$OUT_DIR.tmp/version"
rm -rf "$OUT_DIR"
mv "$OUT_DIR.tmp" "$OUT_DIR"
log "busybox: $(wc -l < "$OUT_DIR/applets") applets, $(du -h "$OUT_DIR/busybox" | cut -f1)"
echo "$OUT_DIR/busybox"
