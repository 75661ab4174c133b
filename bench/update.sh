#!/usr/bin/env bash
# A/B update costs of Berth under QEMU (TCG), in one run: bundle apply inside the guest against
# `dd` of the same bytes to the same partition, `berthctl update apply --reboot` until the new
# version serves the demo, and the bundle's size. Usage: bench/update.sh [RUNS]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$BERTH_ROOT"

./scripts/build.sh >/dev/null
./scripts/build-image.sh >/dev/null
cargo run -q --release -p berth-qemu-tests --bin update-bench -- "${1:-3}"
