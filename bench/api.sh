#!/usr/bin/env bash
# Control API latency under hostile clients, side by side in one run: `GET /v1/units` (curl on
# the unix socket) against berth-init --root-dir with 50 units (1) alone, (2) while one more
# unit floods its output (`yes`, written to its rotating log), (3) the same plus 60 clients
# holding half-sent requests and a log follower of the flooding unit that never reads. PID 1
# serves everyone from one event loop: (3) should stay close to (2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BIN=${BERTH_BIN:-$BERTH_OUT/bin}
[ -x "$BIN/berth-init" ] || ./scripts/build.sh
command -v hyperfine >/dev/null || { echo "bench/api: hyperfine missing (make deps)" >&2; exit 1; }

work=$(mktemp -d /tmp/berth-bench-api.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/units"
for i in $(seq 1 50); do
    printf '[container]\ncommand = ["sleep", "3600"]\n' > "$work/units/u$i.toml"
done
"$BIN/berth-init" --root-dir "$work" 2>"$work/init.log" &
pids+=($!)
init=$!
sock="$work/api.sock"
for _ in $(seq 1 100); do
    [ -S "$sock" ] && curl -sf --unix-socket "$sock" http://b/v1/system >/dev/null && break
    sleep 0.1
done

req="curl -sf --unix-socket $sock -o /dev/null http://b/v1/units"
hyperfine -N --warmup 5 --runs 200 --export-markdown "$work/1.md" -n "50 idle units" "$req" >/dev/null

printf '[container]\ncommand = ["sh", "-c", "exec yes berth-flood-line"]\n' |
    curl -sf --unix-socket "$sock" -X PUT --data-binary @- 'http://b/v1/units/flood?start=1' >/dev/null
sleep 1
hyperfine -N --warmup 5 --runs 200 --export-markdown "$work/2.md" -n "+ a unit flooding its log" "$req" >/dev/null

# Hostile clients: half-sent requests (reconnecting when the server times them out) and a
# follower that never reads.
python3 - "$sock" <<'PY' &
import socket, sys, time
path = sys.argv[1]
def half():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.send(b"GET /v1/sys")
    return s
conns = [half() for _ in range(60)]
f = socket.socket(socket.AF_UNIX)
f.connect(path)
f.send(b"GET /v1/units/flood/logs?follow=1 HTTP/1.1\r\n\r\n")
end = time.time() + 600
while time.time() < end:
    time.sleep(1)
    for i, s in enumerate(conns):
        s.setblocking(False)
        try:
            if s.recv(4096) == b"":
                conns[i] = half()
        except BlockingIOError:
            pass
        except OSError:
            conns[i] = half()
PY
pids+=($!)
sleep 2
hyperfine -N --warmup 5 --runs 200 --export-markdown "$work/3.md" -n "+ 60 stalled clients and a follower that never reads" "$req" >/dev/null
rss=$(awk '/VmRSS/ {print $2}' "/proc/$init/status")

section="## api: control API latency under hostile clients (bench/api.sh)

$(date +%F), $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores (load average $(cut -d' ' -f1 /proc/loadavg) at the end),
berth-init --root-dir (static release build), 50 idle units, hyperfine, 200 runs of
\`curl --unix-socket … /v1/units\` per row:

$(cat "$work/1.md")
$(tail -n +3 "$work/2.md")
$(tail -n +3 "$work/3.md")

berth-init RSS with the hostile clients attached: ${rss} KiB (a follower's backlog is capped at
256 KiB; the rest of the flood is dropped for it and counted).

The minimum is what no client waiting behind another looks like; the means move with machine
load. The flooding unit itself costs most of the difference between the first two rows (its
output is read and written to the rotating log by the same loop, and \`yes\` takes a core)."
write_results_section "api" "$section"
