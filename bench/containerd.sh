#!/usr/bin/env bash
# `ctr run --rm` of busybox `true` through containerd's io.containerd.runc.v2 shim with
# berth-runtime, runc and crun as the shim's runtime binary, side by side in one hyperfine run.
# containerd runs with its state, root and socket in a temp dir; the image is built from the
# host's static busybox (runtime/tests/busybox-image.sh). Root needed.
#
# Each run is what a client waits for: containerd creates the container, the shim starts and
# calls the runtime's create and start, `true` exits, the shim calls delete, the container is
# removed. On this hybrid host runc and crun put the container in v1 cgroups (cgroupfs),
# berth-runtime in the v2 tree.
#
# Then containerd's CRI plugin, with two runtime handlers whose runc binary is berth-runtime and
# runc: runtime/tests/cri_client.py times RunPodSandbox -> CreateContainer -> StartContainer
# answered (a host-network pod, pause = static busybox, `sleep` as the container), the two
# runtimes interleaved, CRI_RUNS (default 20) each; every pod is stopped and removed in between.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

RUNS="${RUNS:-50}"
BIN="$BERTH_OUT/bin/berth-runtime"
if [ ! -x "$BIN" ]; then
    log "building a static berth-runtime"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$BERTH_TARGET" -p berth-runtime --bin berth-runtime
    BIN="$BERTH_ROOT/target/$BERTH_TARGET/release/berth-runtime"
fi
for t in hyperfine containerd ctr runc crun jq /usr/bin/python3; do command -v "$t" > /dev/null || die "$t missing (make deps)"; done

WORK=$(mktemp -d /tmp/berth-bench-ctd.XXXXXX)
NS="bench$$"
run_dir_existed=0
[ -e /run/containerd ] && run_dir_existed=1
cleanup() {
    [ -n "${CTD_PID:-}" ] && kill "$CTD_PID" 2> /dev/null && wait "$CTD_PID" 2> /dev/null || true
    [ -n "${CRI_PID:-}" ] && kill "$CRI_PID" 2> /dev/null && wait "$CRI_PID" 2> /dev/null || true
    for d in /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/unified/"$NS"; do [ -d "$d" ] && rmdir "$d"/* "$d" 2> /dev/null || true; done
    for d in /sys/fs/cgroup/*/"$NS"; do [ -d "$d" ] && rmdir "$d" 2> /dev/null || true; done
    if [ "$run_dir_existed" = 0 ]; then rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2> /dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

sh runtime/tests/busybox-image.sh "$WORK/busybox.tar" berth.bench/busybox:latest
cat > "$WORK/config.toml" <<EOF
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = "$WORK/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
containerd --config "$WORK/config.toml" > "$WORK/containerd.log" 2>&1 &
CTD_PID=$!
for _ in $(seq 300); do [ -S "$WORK/containerd.sock" ] && break; sleep 0.1; done
[ -S "$WORK/containerd.sock" ] || die "containerd did not start: $(cat "$WORK/containerd.log")"
CTR="ctr --address $WORK/containerd.sock --namespace $NS"
$CTR image import "$WORK/busybox.tar" > /dev/null

cmd() { # runtime-binary name
    echo "$CTR run --rm --runc-binary $1 --runc-root $WORK/runc-$2 --fifo-dir $WORK/fifo berth.bench/busybox:latest $2 true"
}
names=() cmds=()
for r in "berth-runtime:$BIN" "runc:$(command -v runc)" "crun:$(command -v crun)"; do
    name=${r%%:*} path=${r#*:}
    # Only runtimes that run here take part (crun may refuse this host's cgroup layout).
    if $(cmd "$path" "probe-$name") > "$WORK/probe-$name.log" 2>&1; then
        names+=("$name") cmds+=("$(cmd "$path" "$name")")
    else
        log "$name does not run under containerd here: $(tail -1 "$WORK/probe-$name.log")"
    fi
done
args=()
for i in "${!names[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$WORK/hyperfine.json" "${args[@]}" >&2

echo
echo "| runtime under containerd (\`ctr run --rm\` busybox true) | mean | median | min | max | vs runc |"
echo "|---|---|---|---|---|---|"
jq -r '
  (.results[] | select(.command == "runc") | .median) as $runc
  | .results[]
  | "| \(.command) | \(.mean * 1000 | floor) ms | \(.median * 1000 | floor) ms | \(.min * 1000 | floor) ms | \(.max * 1000 | floor) ms | \((.median / $runc * 100 | floor) / 100)× |"
' "$WORK/hyperfine.json"

# CRI: RunPodSandbox -> container started.
CRI_RUNS="${CRI_RUNS:-20}"
PROTO="${BERTH_CRI_API_PROTO:-/usr/local/share/berth/cri-api/runtime/v1/api.proto}"
[ -f "$PROTO" ] || die "$PROTO missing (make deps)"
kill "$CTD_PID" && wait "$CTD_PID" 2> /dev/null || true
CTD_PID=
sh runtime/tests/busybox-image.sh "$WORK/pause.tar" berth.bench/pause:latest \
    '["sh","-c","trap '"'exit 0'"' TERM INT; while :; do sleep 3600 & wait; done"]'
mkdir -p "$WORK/cni" "$WORK/pod-logs"
# CRI gives every sandbox CPU shares; where the v2 tree lacks cpu and memory (a hybrid host)
# berth-runtime refuses them, so there both runtimes run pods as CRI's disable_cgroup does.
v2=/sys/fs/cgroup/unified
[ -f "$v2/cgroup.controllers" ] || v2=/sys/fs/cgroup
disable_cgroup=true
if grep -qw cpu "$v2/cgroup.controllers" && grep -qw memory "$v2/cgroup.controllers"; then
    disable_cgroup=false
fi
runtime_conf() { # handler binary
    cat <<EOF
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.$1]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.$1.options]
        BinaryName = "$2"
        Root = "$WORK/cri-$1"
EOF
}
cat > "$WORK/cri.toml" <<EOF
version = 2
root = "$WORK/cri-root"
state = "$WORK/cri-state"
[grpc]
  address = "$WORK/cri.sock"
[ttrpc]
  address = "$WORK/cri.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  disable_cgroup = $disable_cgroup
  sandbox_image = "berth.bench/pause:latest"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
$(runtime_conf berth-runtime "$BIN")
$(runtime_conf runc "$(command -v runc)")
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni"
EOF
containerd --config "$WORK/cri.toml" > "$WORK/cri.log" 2>&1 &
CRI_PID=$!
for _ in $(seq 300); do [ -S "$WORK/cri.sock" ] && break; sleep 0.1; done
[ -S "$WORK/cri.sock" ] || die "containerd (CRI) did not start: $(cat "$WORK/cri.log")"
for tar in busybox pause; do
    ctr --address "$WORK/cri.sock" --namespace k8s.io image import "$WORK/$tar.tar" > /dev/null
done
/usr/bin/python3 runtime/tests/cri_client.py "$PROTO" "$WORK/cri.sock" bench "$CRI_RUNS" \
    berth.bench/busybox:latest "/$NS" "$WORK/pod-logs" berth-runtime runc > "$WORK/cri.json" ||
    die "CRI bench failed: $(tail -20 "$WORK/cri.log")"

echo
echo "CRI disable_cgroup = $disable_cgroup"
echo "| runtime under containerd's CRI (RunPodSandbox → container started) | mean | median | min | max | vs runc |"
echo "|---|---|---|---|---|---|"
jq -r '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def ms: . * 1000 | floor | "\(.) ms";
  (.runc | median) as $runc
  | to_entries[]
  | "| \(.key) | \(.value | add / length | ms) | \(.value | median | ms) | \(.value | min | ms) | \(.value | max | ms) | \((.value | median) / $runc * 100 | floor / 100)× |"
' "$WORK/cri.json"
