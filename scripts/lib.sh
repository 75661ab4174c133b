# Shared helpers for Berth's build scripts. Source it; do not run it.
# shellcheck shell=bash

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BERTH_OUT="${BERTH_OUT:-$BERTH_ROOT/out}"
BERTH_CACHE="${BERTH_CACHE:-$HOME/.cache/berth}"
BERTH_TARGET="x86_64-unknown-linux-gnu"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Hash of the given files' contents and of extra strings: the key of a cached build.
inputs_hash() {
    { for f in "$@"; do
          if [ -f "$f" ]; then sha256sum "$f"; else printf '%s\n' "$f"; fi
      done; } | sha256sum | cut -c1-16
}
