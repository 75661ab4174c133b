#!/usr/bin/env bash
set -euo pipefail
. "$(dirname "$0")/lib.sh"
die "make run: not implemented yet"
