#!/usr/bin/env bash
# `make run-host`: berth-init runs as an ordinary process on this machine (not PID 1, not in
# a VM) and supervises the example units of configs/examples/. `make run` boots the image.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

# The example web unit serves /tmp/berth-run/www, so the directory is fixed.
DIR=/tmp/berth-run
PORT=8080

./scripts/build.sh
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "127.0.0.1:$PORT is in use; stop whatever listens there first"
fi

rm -rf "$DIR/units"
mkdir -p "$DIR/units" "$DIR/www"
cp configs/examples/*.toml "$DIR/units/"
cat > "$DIR/www/index.html" <<'HTML'
<!doctype html><title>Berth</title>
<h1>Hello from Berth</h1>
<p>Served by busybox httpd, a system unit supervised by berth-init in host mode.</p>
HTML

cat <<MSG
================================================================================
 Berth, HOST MODE: berth-init runs as a normal process on this machine, not as
 PID 1 and not in a virtual machine (`make run` boots the real image).

 units:     $DIR/units (copied from configs/examples/)
 logs:      $DIR/state/logs/<unit>.log
 web:       http://127.0.0.1:$PORT/
 API:       curl --unix-socket $DIR/api.sock http://localhost/v1/units
            $BERTH_OUT/bin/berthctl --socket $DIR/api.sock units

 Stop with Ctrl-C: units are stopped in reverse dependency order.
================================================================================
MSG
exec "$BERTH_OUT/bin/berth-init" --root-dir "$DIR"
