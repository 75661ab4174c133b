#!/usr/bin/env bash
# Pull + unpack of one multi-layer image from a local registry, side by side in one run:
#   berth:           berth-runtime image pull (download, verify, unpack every layer)
#   skopeo + umoci:  skopeo copy docker:// → oci: layout, then umoci unpack
# Both start from an empty destination each run. The registry (Debian's docker-registry)
# listens on 127.0.0.1 only and is stopped on exit.
# Usage: bench/images.sh [RUNS]   (default 5)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"
RUNS="${1:-5}"

for tool in docker-registry skopeo umoci hyperfine busybox; do
    command -v "$tool" >/dev/null || die "$tool missing: run scripts/install-deps.sh"
done

log "building berth-runtime (release)"
cargo build --release --locked -q -p berth-runtime --bin berth-runtime
BERTH="$BERTH_ROOT/target/release/berth-runtime"

WORK="$(mktemp -d /tmp/berth-bench-images.XXXXXX)"
REG_PID=""
cleanup() {
    if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:0
  secret: berth-bench
EOF
docker-registry serve "$WORK/registry.yml" > /dev/null 2> "$WORK/registry.log" &
REG_PID=$!
ADDR=""
for _ in $(seq 1 100); do
    ADDR="$(grep -o 'listening on 127.0.0.1:[0-9]*' "$WORK/registry.log" | head -1 | sed 's/listening on //')" || true
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || die "docker-registry did not start: $(cat "$WORK/registry.log")"

log "building a 4-layer image from busybox-static"
L="$WORK/layout"
umoci init --layout "$L"
umoci new --image "$L:bench"
umoci unpack --image "$L:bench" "$WORK/bundle" >/dev/null
R="$WORK/bundle/rootfs"
mkdir -p "$R/bin" && cp /bin/busybox "$R/bin/busybox"
for a in sh ls cat; do ln -s busybox "$R/bin/$a"; done
umoci repack --refresh-bundle --image "$L:bench" "$WORK/bundle"
# Many small text files (a package-manager-like tree).
for d in $(seq 1 40); do
    mkdir -p "$R/usr/share/pkg$d"
    for f in $(seq 1 50); do
        printf 'package %d file %d\n%s\n' "$d" "$f" "$(seq 1 40 | tr '\n' ' ')" > "$R/usr/share/pkg$d/file$f.txt"
    done
done
umoci repack --refresh-bundle --image "$L:bench" "$WORK/bundle"
# A few large, incompressible files.
mkdir -p "$R/opt/blobs"
for i in 1 2 3; do head -c $((10 << 20)) /dev/urandom > "$R/opt/blobs/data$i.bin"; done
umoci repack --refresh-bundle --image "$L:bench" "$WORK/bundle"
# Links and a deletion.
mkdir -p "$R/usr/lib/links"
for i in $(seq 1 300); do ln -s "../../share/pkg1/file1.txt" "$R/usr/lib/links/l$i"; done
rm -rf "$R/usr/share/pkg40"
umoci repack --refresh-bundle --image "$L:bench" "$WORK/bundle"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$L:bench" "docker://$ADDR/bench/image:1"
REF="$ADDR/bench/image:1"
printf '[registries]\ninsecure = ["%s"]\n' "$ADDR" > "$WORK/machine.toml"

# One run of each outside the measurement: checks both work and shows the image size.
"$BERTH" image --store "$WORK/check" --config "$WORK/machine.toml" pull "$REF" | tail -1
SIZE="$("$BERTH" image --store "$WORK/check" --config "$WORK/machine.toml" ls --json | jq '.[0].size')"
rm -rf "$WORK/check"
log "image: 4 layers, $((SIZE / 1024)) KiB compressed"

hyperfine --runs "$RUNS" --warmup 1 --export-markdown "$WORK/result.md" \
    --prepare "rm -rf $WORK/s" \
    -n "berth image pull" \
    "$BERTH image --store $WORK/s --config $WORK/machine.toml pull $REF" \
    --prepare "rm -rf $WORK/o $WORK/b" \
    -n "skopeo copy + umoci unpack" \
    "skopeo --insecure-policy copy -q --src-tls-verify=false docker://$REF oci:$WORK/o:t && umoci unpack --image $WORK/o:t $WORK/b"

echo
echo "Image: 4 layers, $((SIZE / 1024)) KiB compressed (busybox, 2000 small files, 30 MiB random data, 300 symlinks + a whiteout)"
echo "berth-runtime binary: $(du -h "$BERTH" | cut -f1) (release, dynamically linked)"
cat "$WORK/result.md"
