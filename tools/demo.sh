#!/usr/bin/env bash
# The main job: set up everything, build, start mnemod on its defaults, run
# the demo client (a million-token context streamed in, one decode step of
# far-context attention, checked), show the daemon's view, and stop it
# cleanly with SIGTERM.
#   tools/demo.sh [mnemo-demo options, e.g. --tokens 4194304]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup.sh
mkdir -p .deps/logs
echo "building..."
bash tools/build.sh build

# The defaults: socket and data dir under $XDG_RUNTIME_DIR/mnemo, or var/ here.
sock=$(build/daemon/mnemod --print-config | sed -n 's/^socket = //p')
build/daemon/mnemod &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	build/tools/mnemoctl --socket "$sock" ping >/dev/null 2>&1 && break
	kill -0 $pid 2>/dev/null || { echo "mnemod failed to start" >&2; exit 1; }
	sleep 0.1
done
build/tools/mnemoctl --socket "$sock" ping
status=0
build/tools/mnemo-demo --socket "$sock" "$@" || status=$?
build/tools/mnemoctl --socket "$sock" stat
echo "stopping mnemod (SIGTERM)..."
kill -TERM $pid
trap - EXIT
wait $pid && echo "mnemod exited cleanly" || { echo "mnemod exit status $?" >&2; status=1; }
exit $status
