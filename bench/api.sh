#!/usr/bin/env bash
# Control API latency under hostile clients, side by side in one run: `GET /v1/units` (curl on
# the unix socket) against berth-init --root-dir with 50 units and the mutual-TLS listener on
# loopback (1) alone, (2) while 200 TCP connections to the TLS port sit in their handshake
# (from 25 loopback addresses; each is opened again as soon as the server closes or refuses
# it), (3) while one more unit floods its output (`yes`, written to its rotating log), (4) the
# same plus 60 clients holding half-sent requests and a log follower of the flooding unit that
# never reads. PID 1 serves everyone from one event loop: (2) should stay close to (1) and (4)
# close to (3); every answer on the unix socket should be 200.
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

mkdir -p "$work/units" "$work/state/tls"
for i in $(seq 1 50); do
    printf '[container]\ncommand = ["sleep", "3600"]\n' > "$work/units/u$i.toml"
done
# A throw-away certificate (also the client CA: no client here gets past the handshake).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/state/tls/server.key" -out "$work/state/tls/server.crt" 2>/dev/null
printf '[api]\nlisten = "127.0.0.1:0"\ncert = "tls/server.crt"\nkey = "tls/server.key"\nclient_ca = "tls/server.crt"\n' \
    > "$work/state/machine.toml"
"$BIN/berth-init" --root-dir "$work" 2>"$work/init.log" &
pids+=($!)
init=$!
sock="$work/api.sock"
for _ in $(seq 1 100); do
    [ -S "$sock" ] && curl -sf --unix-socket "$sock" http://b/v1/system >/dev/null && break
    sleep 0.1
done
remote=$(curl -sf --unix-socket "$sock" http://b/v1/system | python3 -c 'import json, sys; print(json.load(sys.stdin)["remote_api"])')
[ "$remote" != None ] || { echo "bench/api: no TLS listener" >&2; cat "$work/init.log" >&2; exit 1; }

req="curl -sf --unix-socket $sock -o /dev/null http://b/v1/units"
# Status codes of 100 more requests, e.g. `100x200` (a refused request is not a fast one).
codes() {
    for _ in $(seq 1 100); do
        curl -s --unix-socket "$sock" -o /dev/null -w '%{http_code}\n' http://b/v1/units || true
    done | sort | uniq -c | awk '{printf "%s%sx%s", sep, $1, $2; sep=", "}'
}
hyperfine -N -i --warmup 5 --runs 200 --export-markdown "$work/1.md" -n "50 idle units" "$req" >/dev/null
codes1=$(codes)

# 200 connections to the TLS port that never send a byte, from 127.0.1.1-25; any the server
# closes or refuses is opened again after 0.2 s.
python3 - "$remote" "$work/held" <<'PY' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
def open_one(i):
    s = socket.socket()
    s.bind(("127.0.1.%d" % (1 + i % 25), 0))
    s.connect((host, int(port)))
    s.setblocking(False)
    return s
conns = [open_one(i) for i in range(200)]
end = time.time() + 600
while time.time() < end:
    time.sleep(0.2)
    held = 0
    for i, s in enumerate(conns):
        try:
            s.recv(4096)
        except BlockingIOError:
            held += 1
            continue
        except OSError:
            pass
        s.close()
        conns[i] = open_one(i)
    with open(sys.argv[2], "w") as f:
        f.write("%d\n" % held)
PY
pids+=($!)
tls_pid=$!
sleep 2
hyperfine -N -i --warmup 5 --runs 200 --export-markdown "$work/2.md" -n "+ 200 connections stuck in the TLS handshake" "$req" >/dev/null
codes2=$(codes)
held=$(cat "$work/held" 2>/dev/null || echo "?")
kill "$tls_pid" 2>/dev/null || true

printf '[container]\ncommand = ["sh", "-c", "exec yes berth-flood-line"]\n' |
    curl -sf --unix-socket "$sock" -X PUT --data-binary @- 'http://b/v1/units/flood?start=1' >/dev/null
sleep 1
hyperfine -N -i --warmup 5 --runs 200 --export-markdown "$work/3.md" -n "+ a unit flooding its log (no TLS clients)" "$req" >/dev/null
codes3=$(codes)

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
hyperfine -N -i --warmup 5 --runs 200 --export-markdown "$work/4.md" -n "+ 60 stalled clients and a follower that never reads" "$req" >/dev/null
codes4=$(codes)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$init/status")

section="## api: control API latency under hostile clients (bench/api.sh)

$(date +%F), $(. /etc/os-release; echo "$PRETTY_NAME"), $(nproc) cores (load average $(cut -d' ' -f1 /proc/loadavg) at the end),
berth-init --root-dir ($("$BIN/berth-init" --version 2>/dev/null || echo "berth-init")), 50 idle units, TLS listener on loopback,
hyperfine, 200 runs of \`curl --unix-socket … /v1/units\` per row:

$(cat "$work/1.md")
$(tail -n +3 "$work/2.md")
$(tail -n +3 "$work/3.md")
$(tail -n +3 "$work/4.md")

HTTP status of 100 more requests after each row: (1) ${codes1}; (2) ${codes2}; (3) ${codes3};
(4) ${codes4}. TLS connections the server held open at the end of (2): ${held} of 200 (the
rest refused with 503 or closed by the handshake deadline, and opened again).

berth-init RSS with the hostile clients of (4) attached: ${rss} KiB (log streams read the log
file as their socket drains; nothing of the flood is buffered for the follower).

The minimum is what no client waiting behind another looks like; the means move with machine
load. The flooding unit itself costs most of the difference between rows (1) and (3) (its
output is read and written to the rotating log by the same loop, and \`yes\` takes a core)."
write_results_section "api" "$section"
