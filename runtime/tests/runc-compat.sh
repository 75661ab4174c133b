#!/bin/sh
# A lifecycle script written for runc. It runs unchanged against any runc-compatible runtime:
#   RUNTIME=runc sh runc-compat.sh      RUNTIME=berth-runtime sh runc-compat.sh
# Needs root, busybox-static, jq, ps. Prints PASS on success.
set -eu
RUNTIME=${RUNTIME:-runc}
WORK=$(mktemp -d)
ROOT=$WORK/state
ID=compat-$$
rt() { "$RUNTIME" --root "$ROOT" "$@"; }
cleanup() {
    rt delete --force "$ID" >/dev/null 2>&1 || true
    rt delete --force "$ID-run" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/bundle/rootfs/bin"
cp /bin/busybox "$WORK/bundle/rootfs/bin/"
for a in sh sleep echo cat hostname id; do ln -s busybox "$WORK/bundle/rootfs/bin/$a"; done
cd "$WORK/bundle"
"$RUNTIME" spec
test -f config.json
jq '.process.terminal = false
    | .process.args = ["sh", "-c", "echo hello from $(hostname); exec sleep 30"]
    | .hostname = "compat"' config.json > config.tmp
mv config.tmp config.json

rt create --pid-file "$WORK/pid" "$ID" > "$WORK/out" 2>&1 < /dev/null
test "$(rt state "$ID" | jq -r .status)" = created
test "$(cat "$WORK/pid")" = "$(rt state "$ID" | jq -r .pid)"
rt list | grep -q "$ID"
rt list --format json | jq -e --arg id "$ID" '.[] | select(.id == $id)' > /dev/null

rt start "$ID"
test "$(rt state "$ID" | jq -r .status)" = running
test "$(rt exec "$ID" hostname)" = compat
test "$(rt exec --user 1000:1000 "$ID" id -u)" = 1000
rt ps "$ID" | grep -q "sleep 30"
rt ps --format json "$ID" | jq -e 'length >= 1' > /dev/null

# Misuse is refused.
if rt create "$ID" > /dev/null 2>&1 < /dev/null; then echo "duplicate create succeeded"; exit 1; fi
if rt start "$ID" 2> /dev/null; then echo "second start succeeded"; exit 1; fi
if rt delete "$ID" 2> /dev/null; then echo "delete of a running container succeeded"; exit 1; fi

rt kill "$ID" KILL
i=0
while [ "$(rt state "$ID" | jq -r .status)" != stopped ]; do
    i=$((i + 1)); [ "$i" -lt 200 ] || { echo "never stopped"; exit 1; }
    sleep 0.05
done
if rt kill "$ID" TERM 2> /dev/null; then echo "kill of a stopped container succeeded"; exit 1; fi
rt delete "$ID"
if rt state "$ID" > /dev/null 2>&1; then echo "state after delete succeeded"; exit 1; fi
grep -q "hello from compat" "$WORK/out"

# run in the foreground: the exit status comes back, the container is gone after.
jq '.process.args = ["sh", "-c", "exit 7"]' config.json > config.tmp
mv config.tmp config.json
set +e
rt run "$ID-run" < /dev/null
rc=$?
set -e
test "$rc" = 7
if rt state "$ID-run" > /dev/null 2>&1; then echo "run left state behind"; exit 1; fi

# Errors go to the --log file as JSON.
if "$RUNTIME" --root "$ROOT" --log "$WORK/log.json" --log-format json start no-such-container 2> /dev/null; then
    echo "start of a missing container succeeded"; exit 1
fi
jq -e 'select(.level == "error")' "$WORK/log.json" > /dev/null
echo PASS
