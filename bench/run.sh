#!/usr/bin/env bash
set -euo pipefail
echo "no benchmarks yet" >&2
exit 1
