#!/bin/sh
# Buildroot post-build: the parts of the root that come from the repository's configs/.
# $1 is the target directory.
set -eu
TARGET_DIR="$1"
BERTH_CONFIGS="$BR2_EXTERNAL_BERTH_PATH/../configs"
BERTH_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$BR2_EXTERNAL_BERTH_PATH/../Cargo.toml" | head -1)"

install -d "$TARGET_DIR/usr/lib/berth/units" "$TARGET_DIR/var/lib/berth" "$TARGET_DIR/boot"
install -m 0644 "$BERTH_CONFIGS"/units/*.toml "$TARGET_DIR/usr/lib/berth/units/"
# Public keys the system trusts for update bundles (comma-separated list; the test key by default).
install -d "$TARGET_DIR/usr/share/berth/keys"
for key in $(echo "${BERTH_UPDATE_KEYS:-$BERTH_CONFIGS/keys/test-key.pub}" | tr ',' ' '); do
    install -m 0644 "$key" "$TARGET_DIR/usr/share/berth/keys/"
done
ln -sf ../run/berth/resolv.conf "$TARGET_DIR/etc/resolv.conf"
cat > "$TARGET_DIR/etc/os-release" <<OS
NAME=Berth
ID=berth
VERSION_ID=$BERTH_VERSION
PRETTY_NAME="Berth $BERTH_VERSION"
OS
