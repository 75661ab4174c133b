#!/usr/bin/env bash
# `run` of /bin/true (create, start, wait, delete) with berth-runtime, runc and crun, side by
# side in one hyperfine run, then `exec` of /bin/true into a running container of each, plus
# each runtime's peak RSS. Writes bench/RESULTS.md's runtime section. Root needed.
# BERTH_RUNTIME_BASELINE=/path/to/an/older/berth-runtime adds that binary to the same runs
# (before/after comparisons of a change, in one run).
#
# Fairness: everything runs in a private mount namespace where the cgroup v2 mount
# (/sys/fs/cgroup/unified on this hybrid host) is unmounted, so berth-runtime finds no v2
# hierarchy and creates no cgroup; crun runs with --cgroup-manager=disabled (it refuses the
# hybrid layout anyway); runc cannot skip cgroups and creates its v1 cgroups (cgroupfs).
# The bundle has no device rules: they need a cgroup v2 for their eBPF program, and crun
# without a cgroup manager enforces none either (bench/devices.sh measures what they cost).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

RUNS="${RUNS:-100}"
# Rounds of the side-by-side comparison: the machine is shared, one round can be unlucky.
ROUNDS="${ROUNDS:-3}"
BIN="$BERTH_OUT/bin/berth-runtime"
if [ ! -x "$BIN" ]; then
    log "building a static berth-runtime"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$BERTH_TARGET" -p berth-runtime --bin berth-runtime
    BIN="$BERTH_ROOT/target/$BERTH_TARGET/release/berth-runtime"
fi
BASELINE="${BERTH_RUNTIME_BASELINE:-}"
BERTH_RUNTIME_BASELINE_NAME="${BERTH_RUNTIME_BASELINE_NAME:-an older build}"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "BERTH_RUNTIME_BASELINE=$BASELINE is not an executable"
for t in hyperfine runc crun jq python3 busybox /usr/bin/time; do command -v "$t" > /dev/null || die "$t missing (make deps)"; done

WORK=$(mktemp -d /tmp/berth-bench-runtime.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bundle/rootfs/bin"
cp /bin/busybox "$WORK/bundle/rootfs/bin/"
ln -s busybox "$WORK/bundle/rootfs/bin/true"
ln -s busybox "$WORK/bundle/rootfs/bin/sh"
(cd "$WORK/bundle" && "$BIN" spec)
ln -s busybox "$WORK/bundle/rootfs/bin/sleep"
jq '.process.terminal = false | .process.args = ["/bin/true"] | .linux.resources.devices = []' \
    "$WORK/bundle/config.json" > "$WORK/c.json"
mv "$WORK/c.json" "$WORK/bundle/config.json"
# The same container, long-running, for `exec`.
mkdir -p "$WORK/sleeper"
jq '.process.args = ["sleep", "3600"] | .root.path = "../bundle/rootfs"' \
    "$WORK/bundle/config.json" > "$WORK/sleeper/config.json"

cat > "$WORK/inner.sh" <<INNER
set -euo pipefail
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
cd "$WORK/bundle"
berth="$BIN --root $WORK/s-berth run b"
crun="crun --root $WORK/s-crun --cgroup-manager=disabled run c"
runc="runc --root $WORK/s-runc run r"
base=()
if [ -n "$BASELINE" ]; then base=(-n baseline "$BASELINE --root $WORK/s-base run b0"); fi
for round in \$(seq $ROUNDS); do
    hyperfine -N --warmup 20 --runs $RUNS --export-json "$WORK/hyperfine-\$round.json" \
        -n berth-runtime "\$berth" "\${base[@]}" -n crun "\$crun" -n runc "\$runc" >&2
done
# exec: one running container per runtime, /bin/true exec'd into it.
cd "$WORK/sleeper"
$BIN --root $WORK/x-berth create x < /dev/null > /dev/null 2>&1
$BIN --root $WORK/x-berth start x
crun --root $WORK/x-crun --cgroup-manager=disabled create x < /dev/null > /dev/null 2>&1
crun --root $WORK/x-crun --cgroup-manager=disabled start x
runc --root $WORK/x-runc create x < /dev/null > /dev/null 2>&1
runc --root $WORK/x-runc start x
base=()
if [ -n "$BASELINE" ]; then
    $BASELINE --root $WORK/x-base create x < /dev/null > /dev/null 2>&1
    $BASELINE --root $WORK/x-base start x
    base=(-n baseline "$BASELINE --root $WORK/x-base exec x /bin/true")
fi
for round in \$(seq $ROUNDS); do
    hyperfine -N --warmup 20 --runs $RUNS --export-json "$WORK/exec-\$round.json" \
        -n berth-runtime "$BIN --root $WORK/x-berth exec x /bin/true" "\${base[@]}" \
        -n crun "crun --root $WORK/x-crun --cgroup-manager=disabled exec x /bin/true" \
        -n runc "runc --root $WORK/x-runc exec x /bin/true" >&2
done
$BIN --root $WORK/x-berth delete --force x
crun --root $WORK/x-crun --cgroup-manager=disabled delete --force x
runc --root $WORK/x-runc delete --force x
if [ -n "$BASELINE" ]; then $BASELINE --root $WORK/x-base delete --force x; fi
cd "$WORK/bundle"
# Peak RSS (GNU time's %M): the largest resident set of a runtime's processes, over 20 runs.
for cmd in "\$berth" "\$crun" "\$runc"; do
    peak=0
    for i in \$(seq 20); do
        /usr/bin/time -f %M -o "$WORK/rss1" \$cmd
        v=\$(tail -1 "$WORK/rss1"); [ "\$v" -gt "\$peak" ] && peak=\$v
    done
    echo "\$peak"
done > "$WORK/rss.txt"
INNER
unshare -m bash "$WORK/inner.sh"

# Per round: each runtime's median; overall: the median of the rounds' medians.
medians() {
    python3 - "$WORK" "$ROUNDS" "$1" <<'PY'
import json, statistics, sys
work, rounds, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
med = {"berth-runtime": [], "crun": [], "runc": [], "baseline": []}
for i in range(1, rounds + 1):
    for res in json.load(open(f"{work}/{prefix}-{i}.json"))["results"]:
        med[res["command"]].append(res["median"] * 1000)
ratios = [b / c for b, c in zip(med["berth-runtime"], med["crun"])]
vs_base = [b / o for b, o in zip(med["berth-runtime"], med["baseline"])]
print(*(statistics.median(med[k]) for k in ("berth-runtime", "crun", "runc")),
      "/".join(f"{x:.2f}" for x in ratios),
      statistics.median(med["baseline"]) if med["baseline"] else 0,
      "/".join(f"{x:.2f}" for x in vs_base) or "-")
PY
}
read -r b c r ratios ob obratios < <(medians hyperfine)
read -r xb xc xr xratios xob xobratios < <(medians exec)
mapfile -t rss < "$WORK/rss.txt"
ratio=$(python3 -c "print(f'{$b / $c:.2f}')")
fmt() { python3 -c "print(f'{$1:.2f}')"; }
baseline_note=""
if [ -n "$BASELINE" ]; then
    baseline_note="
Baseline in the same runs: \`$BERTH_RUNTIME_BASELINE_NAME\` ($(basename "$BASELINE")): \`run\` $(fmt "$ob") ms,
\`exec\` $(fmt "$xob") ms; this build / baseline per round: \`run\` $obratios, \`exec\` $xobratios."
fi

section=$(cat <<MD
## runtime: \`run\` of /bin/true with delete (bench/runtime.sh)

$(date -u +%Y-%m-%d), Debian 12 host, 2 cores, kernel $(uname -r); $ROUNDS rounds of hyperfine (each: $RUNS runs
after 20 warm-ups, the three runtimes side by side); busybox-static bundle, default \`spec\`
config (pid, net, ipc, uts, mount, cgroup namespaces; /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys,
/sys/fs/cgroup mounts; masked and read-only paths; read-only root).

| runtime | median ms (median of the rounds) | peak RSS KiB |
|---|---|---|
| berth-runtime $("$BIN" --version | head -1 | awk '{print $3}') | $(fmt "$b") | ${rss[0]} |
| crun $(crun --version | head -1 | awk '{print $3}') | $(fmt "$c") | ${rss[1]} |
| runc $(runc --version | head -1 | awk '{print $3}') | $(fmt "$r") | ${rss[2]} |

berth-runtime / crun median: **$ratio** (target ≤ 0.8); per round: $ratios.

\`exec\` of /bin/true into a running container of the same bundle (sleep), same rounds:

| runtime | median ms (median of the rounds) |
|---|---|
| berth-runtime | $(fmt "$xb") |
| crun | $(fmt "$xc") |
| runc | $(fmt "$xr") |

berth-runtime / crun \`exec\` median per round: $xratios.
$baseline_note

\`create\`, \`run\` and \`exec\` re-execute berth-runtime from a sealed executable first (a
read-only overlayfs mount attached nowhere, see runtime/src/sealed.rs), so no container
process can reach and rewrite the host's binary (CVE-2019-5736): one more execve per
container start and per exec.

The machine is shared with other builds: absolute times move with its load, the ratio within a
round is the measure.

cgroup work: all three run in a private mount namespace with the cgroup v2 mount removed.
berth-runtime finds no v2 hierarchy and creates no cgroup (none is needed: no limits and no
device rules are requested); crun runs with \`--cgroup-manager=disabled\`; runc cannot turn cgroups off and
creates and removes its v1 cgroups (cgroupfs driver) on every run. Peak RSS is the largest
resident set among a runtime's processes (GNU time's %M over 20 runs; /bin/true alone
measures about 1 MiB this way).
MD
)
write_results_section runtime "$section"
