#!/usr/bin/env bash
# Benchmark: berth-init in host mode starting 1000 trivial system units (`sleep`).
# Reports time from launch to all 1000 running (read through the control API), berth-init's
# RSS idle (no units) and with 1000 units, and the time for an ordered stop of all of them.
# Side by side in the same run: bash starting the same 1000 processes in a loop (the bare
# fork+exec cost, no supervision). Uses the static release binary from scripts/build.sh.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

N="${BERTH_BENCH_UNITS:-1000}"
BIN="$BERTH_OUT/bin/berth-init"
[ -x "$BIN" ] || ./scripts/build.sh

WORK="$(mktemp -d /tmp/berth-bench-XXXXXX)"
INIT_PID=""
cleanup() {
    if [ -n "$INIT_PID" ] && kill -0 "$INIT_PID" 2>/dev/null; then
        kill -TERM "$INIT_PID" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$INIT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$INIT_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Answers once /v1/system counts at least $2 running units (bounded to 60 s).
wait_running() {
    python3 - "$1" "$2" <<'PY'
import json, socket, sys, time
path, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b"GET /v1/system HTTP/1.1\r\nHost: b\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        if body["units"]["running"] >= want:
            sys.exit(0)
    except (OSError, ValueError, KeyError, IndexError):
        pass
    time.sleep(0.005)
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
wait_running "$WORK/idle/api.sock" 0
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
wait_running "$WORK/many/api.sock" "$N" || { tail -5 "$WORK/many/berth-init.log"; die "units did not all run"; }
T1=$(now_ms)
sleep 0.5
BUSY_RSS=$(rss_kib "$INIT_PID")
T2=$(now_ms)
stop_init
T3=$(now_ms)

# 3. Baseline: bash starts the same processes, unsupervised.
B0=$(now_ms)
pids=()
for _ in $(seq "$N"); do sleep 3600 & pids+=($!); done
B1=$(now_ms)
kill -KILL "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true

START_MS=$((T1 - T0))
STOP_MS=$((T3 - T2))
BASE_MS=$((B1 - B0))
cat <<OUT
berth-init supervise benchmark ($N units, $(nproc) cores, $(date -u +%Y-%m-%d))
  launch -> all $N running (via API):  ${START_MS} ms   (target < 2000 ms)
  bash loop starting $N sleeps:        ${BASE_MS} ms   (baseline, no supervision)
  ordered stop of $N units:            ${STOP_MS} ms
  berth-init RSS just started:         ${START_RSS} KiB
  berth-init RSS idle (settled):       ${IDLE_RSS} KiB (target < 2048 KiB)
  berth-init RSS with $N units:        ${BUSY_RSS} KiB
  binary size:                         $(stat -c %s "$BIN") bytes
OUT
