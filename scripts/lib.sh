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
    # File contents only (never their paths): every checkout of the same inputs shares the
    # cache entry.
    { for f in "$@"; do
          if [ -f "$f" ]; then sha256sum < "$f"; else printf '%s\n' "$f"; fi
      done; } | sha256sum | cut -c1-16
}

# Replaces (or appends) the section of bench/RESULTS.md whose heading starts with
# `## NAME:` by SECTION, keeping every other section; prints SECTION.
write_results_section() {
    python3 - "$BERTH_ROOT/bench/RESULTS.md" "$1" "$2" <<'PY'
import re, sys, pathlib
path, name, section = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3].strip() + "\n"
text = path.read_text() if path.exists() else "# Benchmark results\n"
pattern = re.compile(r"^## " + re.escape(name) + r":.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(lambda _: section + "\n", text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + section
path.write_text(text)
PY
    echo "$2"
}
