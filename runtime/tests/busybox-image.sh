#!/bin/sh
# Builds a one-layer image of the host's static busybox as a docker-archive tarball (the
# format `docker load`, `podman load` and `ctr image import` all read), offline.
# usage: busybox-image.sh OUT.tar REPO:TAG [CMD-JSON-ARRAY]   (the default command is ["sh"])
set -eu
out=$1
tag=$2
cmd=${3:-'["sh"]'}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp" "$work/img"
cp /bin/busybox "$work/root/bin/busybox"
for a in sh true echo cat sleep ls id hostname ps top; do
    ln -s busybox "$work/root/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/root/etc/passwd"
echo 'root:x:0:' > "$work/root/etc/group"
chmod 1777 "$work/root/tmp"
# Fixed owner and times: the same layer digest on every run.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/root" -cf "$work/layer.tar" .
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/img/$layer"
mv "$work/layer.tar" "$work/img/$layer/layer.tar"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Cmd":$cmd,"Env":["PATH=/bin"],"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"busybox-image.sh"}]}
JSON
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/img/$config.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' \
    "$config" "$tag" "$layer" > "$work/img/manifest.json"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/img" -cf "$out" .
