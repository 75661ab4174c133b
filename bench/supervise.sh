#!/usr/bin/env bash
# Benchmark: berth-init in host mode starting N trivial system units (`sleep`, default 5000).
# Reports the time from launch to the first answer of the control API and to all N running
# (read through the API), the latency of `GET /v1/units` sampled throughout the start-up (one
# client, every 50 ms), berth-init's CPU time for the start-up, its RSS idle (no units) and
# with N units, and the time for an ordered stop of all of them. Side by side in the same run:
# bash starting the same N processes in a loop (the bare fork+exec cost, no supervision).
# Uses the static release binary from scripts/build.sh ($BERTH_INIT_BIN to measure another).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

N="${BERTH_BENCH_UNITS:-5000}"
BIN="${BERTH_INIT_BIN:-$BERTH_OUT/bin/berth-init}"
[ -x "$BIN" ] || ./scripts/build.sh

WORK="$(mktemp -d /tmp/berth-bench-XXXXXX)"
INIT_PID=""
cleanup() {
    if [ -n "$INIT_PID" ] && kill -0 "$INIT_PID" 2>/dev/null; then
        kill -TERM "$INIT_PID" 2>/dev/null || true
        for _ in $(seq 600); do kill -0 "$INIT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$INIT_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# utime + stime of a process, in ms.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ split($0, a, ") "); split(a[2], f, " ");
    printf "%d", (f[12] + f[13]) * 1000 / hz }' "/proc/$1/stat"; }

# Samples the latency of `GET /v1/units` every 50 ms from launch (time 0 = $2, ms since the
# epoch) until `GET /v1/system` counts at least $3 running units (bounded to 120 s). Prints:
# first answer (ms after launch), all running (ms after launch), samples, latency p50, p99,
# max (ms). The unit list is read whole but not parsed: the client's own JSON parsing of some
# MiB would take the CPU the measured start-up needs.
sample_startup() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, socket, sys, time
path, t0, want = sys.argv[1], int(sys.argv[2]) / 1000, int(sys.argv[3])
def get(what):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET " + what + b" HTTP/1.1\r\nHost: b\r\n\r\n")
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:40])
    return body
deadline = time.time() + 120
first, lat = None, []
while time.time() < deadline:
    start = time.time()
    try:
        get(b"/v1/units")
        end = time.time()
        running = json.loads(get(b"/v1/system"))["units"]["running"]
    except (OSError, ValueError, KeyError, IndexError):
        time.sleep(0.005)
        continue
    lat.append((end - start) * 1000)
    if first is None:
        first = (end - t0) * 1000
    if running >= want:
        lat.sort()
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print(f"{first:.0f} {(time.time() - t0) * 1000:.0f} {len(lat)} {pick(0.5):.1f} {pick(0.99):.1f} {lat[-1]:.1f}")
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
PY
}

start_init() {
    "$BIN" --root-dir "$1" 2>"$1/berth-init.log" &
    INIT_PID=$!
}

stop_init() {
    kill -TERM "$INIT_PID"
    wait "$INIT_PID" || true
    INIT_PID=""
}

# 1. Idle: no units.
mkdir -p "$WORK/idle/units"
start_init "$WORK/idle"
sample_startup "$WORK/idle/api.sock" "$(now_ms)" 0 >/dev/null
sleep 0.5
START_RSS=$(rss_kib "$INIT_PID")
# berth-init drops the code pages only start-up used 10 s after it starts: idle is after that.
sleep 11
IDLE_RSS=$(rss_kib "$INIT_PID")
stop_init

# 2. N sleep units.
mkdir -p "$WORK/many/units"
for i in $(seq -w 1 "$N"); do
    printf '[container]\ncommand = ["sleep", "3600"]\n' > "$WORK/many/units/s$i.toml"
done
T0=$(now_ms)
start_init "$WORK/many"
read -r FIRST_MS ALL_MS SAMPLES P50 P99 MAX < <(sample_startup "$WORK/many/api.sock" "$T0" "$N") \
    || { tail -5 "$WORK/many/berth-init.log"; die "units did not all run"; }
START_CPU=$(cpu_ms "$INIT_PID")
sleep 0.5
BUSY_RSS=$(rss_kib "$INIT_PID")
T2=$(now_ms)
stop_init
T3=$(now_ms)

# 3. Baseline: bash starts the same processes, unsupervised.
# (bash's own "Killed" notices for them go nowhere.)
{
    B0=$(now_ms)
    pids=()
    for _ in $(seq "$N"); do sleep 3600 & pids+=($!); done
    B1=$(now_ms)
    kill -KILL "${pids[@]}" || true
    wait "${pids[@]}" || true
} 2>/dev/null

STOP_MS=$((T3 - T2))
BASE_MS=$((B1 - B0))
cat <<OUT
berth-init supervise benchmark ($N units, $(nproc) cores, $(date -u +%Y-%m-%d), load $(cut -d' ' -f1-3 /proc/loadavg))
  launch -> first API answer:              ${FIRST_MS} ms
  launch -> all $N running (via API):    ${ALL_MS} ms   (target < 10000 ms)
  GET /v1/units during start-up:           ${SAMPLES} samples, p50 ${P50} ms, p99 ${P99} ms, max ${MAX} ms (target < 100 ms)
  berth-init CPU time until all running:   ${START_CPU} ms
  bash loop starting $N sleeps:          ${BASE_MS} ms   (baseline, no supervision)
  ordered stop of $N units:              ${STOP_MS} ms
  berth-init RSS just started:             ${START_RSS} KiB
  berth-init RSS idle (settled):           ${IDLE_RSS} KiB (target < 2048 KiB)
  berth-init RSS with $N units:          ${BUSY_RSS} KiB
  binary size:                             $(stat -c %s "$BIN") bytes
OUT
