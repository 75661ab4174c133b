#!/usr/bin/env bash
# Runs every benchmark in bench/, one after another.
set -euo pipefail
cd "$(dirname "$0")"
for bench in ./*.sh; do
    [ "$bench" = ./run.sh ] && continue
    echo "==> $bench"
    "$bench"
done
