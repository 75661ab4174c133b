#!/usr/bin/env bash
# Turns the built image (make image) into a signed update bundle, out/berth.bundle: the root
# slot's erofs + verity tree, the kernel, and a manifest from out/manifest.json, signed with
# the test key unless BERTH_BUNDLE_KEY names another secret key. BERTH_BUNDLE_MIN_FROM sets
# the oldest version the bundle may update (default: any). The bundle is verified against the
# public keys the image itself trusts before the script succeeds. PROFILE=node bundles the node
# image (out/node/berth.bundle; its root slot carries the containerd extension).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

case "${PROFILE:-base}" in
    base) IMG_OUT="$BERTH_OUT" ;;
    node) IMG_OUT="$BERTH_OUT/node" ;;
    *) die "PROFILE=$PROFILE: the profiles are base and node" ;;
esac
KEY="${BERTH_BUNDLE_KEY:-configs/keys/test-key.key}"
ROOT_IMG="$IMG_OUT/work/root-a.img"
for f in "$IMG_OUT/manifest.json" "$ROOT_IMG" "$BERTH_OUT/bin/berth-image"; do
    [ -e "$f" ] || { echo "build-bundle: $f missing: run make image first" >&2; exit 1; }
done
KERNEL="$(./scripts/build-kernel.sh)"
BUILD_ID="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

log "bundle: signing with $KEY"
"$BERTH_OUT/bin/berth-image" bundle \
    --key "$KEY" \
    --root "$ROOT_IMG" \
    --kernel "$KERNEL" \
    --manifest "$IMG_OUT/manifest.json" \
    --cmdline configs/grub/cmdline \
    --build-id "$BUILD_ID" \
    --min-from "${BERTH_BUNDLE_MIN_FROM:-0.0.0}" \
    --out "$IMG_OUT/berth.bundle"
"$BERTH_OUT/bin/berth-image" verify-bundle \
    --keys "$IMG_OUT/rootfs/usr/share/berth/keys" "$IMG_OUT/berth.bundle"
