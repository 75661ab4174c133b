#!/usr/bin/env bash
# What device rules cost: `run` of /bin/true (create, start, wait, delete) with berth-runtime,
# side by side in one hyperfine run, three ways: no cgroup at all; a cgroup (a hugetlb limit,
# the one controller this hybrid host's v2 tree has) without device rules; the same cgroup
# with the default device rules (their eBPF program loaded and attached on every run).
# Writes bench/RESULTS.md's devices section. Root needed.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

RUNS="${RUNS:-200}"
ROUNDS="${ROUNDS:-3}"
# Always rebuilt (incremental): a stale binary would measure other code.
./scripts/build.sh
BIN="$BERTH_OUT/bin/berth-runtime"
for t in hyperfine jq python3 busybox; do command -v "$t" > /dev/null || die "$t missing (make deps)"; done
grep -q hugetlb /sys/fs/cgroup/unified/cgroup.controllers 2> /dev/null \
    || grep -q hugetlb /sys/fs/cgroup/cgroup.controllers || die "no hugetlb controller on cgroup v2"

WORK=$(mktemp -d /tmp/berth-bench-devices.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for variant in none cgroup devices; do
    mkdir -p "$WORK/$variant/rootfs/bin"
    cp /bin/busybox "$WORK/$variant/rootfs/bin/"
    ln -s busybox "$WORK/$variant/rootfs/bin/true"
    (cd "$WORK/$variant" && "$BIN" spec)
done
base='.process.terminal = false | .process.args = ["/bin/true"]'
limit='.linux.resources.unified = {"hugetlb.2MB.max": "max"}'
jq "$base | .linux.resources.devices = []" "$WORK/none/config.json" > "$WORK/c.json"
mv "$WORK/c.json" "$WORK/none/config.json"
jq "$base | $limit | .linux.resources.devices = []" "$WORK/cgroup/config.json" > "$WORK/c.json"
mv "$WORK/c.json" "$WORK/cgroup/config.json"
# `spec` denies every device; the runtime adds runc's default allow list behind it.
jq "$base | $limit" "$WORK/devices/config.json" > "$WORK/c.json"
mv "$WORK/c.json" "$WORK/devices/config.json"

cmd() { echo "$BIN --root $WORK/state run --bundle $WORK/$1 $1"; }
for round in $(seq "$ROUNDS"); do
    hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$WORK/hyperfine-$round.json" \
        -n none "$(cmd none)" -n cgroup "$(cmd cgroup)" -n devices "$(cmd devices)" >&2
done

read -r none cgroup devices < <(python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
med = {"none": [], "cgroup": [], "devices": []}
for i in range(1, rounds + 1):
    for res in json.load(open(f"{work}/hyperfine-{i}.json"))["results"]:
        med[res["command"]].append(res["median"] * 1000)
print(*(f"{statistics.median(med[k]):.2f}" for k in ("none", "cgroup", "devices")))
PY
)
delta=$(python3 -c "print(f'{$devices - $cgroup:.2f}')")
insns=$(cd "$BERTH_ROOT" && cargo test -q -p berth-runtime --lib default_program_size -- --nocapture 2> /dev/null \
    | sed -n 's/^default device program: \([0-9]*\) instructions$/\1/p' | head -1)

section=$(cat <<MD
## devices: the cost of device rules (bench/devices.sh)

$(date -u +%Y-%m-%d), Debian 12 host, 2 cores, kernel $(uname -r); $ROUNDS rounds of hyperfine (each: $RUNS runs
after 20 warm-ups, the three variants side by side); \`berth-runtime run\` of /bin/true with delete,
busybox-static bundle, default \`spec\` config otherwise.

| variant | median ms (median of the rounds) |
|---|---|
| no cgroup, no device rules | $none |
| cgroup (hugetlb limit), no device rules | $cgroup |
| cgroup (hugetlb limit) + default device rules | $devices |

Device rules add **$delta ms** per container start: the default program (${insns:-?} eBPF
instructions: deny all, then runc's allow list) is generated, loaded through the verifier,
attached to the new cgroup, and freed with it on delete. The cgroup itself (create, move,
kill, remove) is the difference between the first two rows. The machine is shared with other
builds: these differences move by a few tenths of a millisecond from one run to the next.
MD
)
write_results_section devices "$section"
