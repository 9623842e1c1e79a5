#!/usr/bin/env bash
# Configure (once) and build one build directory of mnemo.
#   tools/build.sh [DIR [MESON-OPTION...]]   default DIR: build
# The FAISS C API comes from tools/setup.sh's local prefix, found through
# meson's pkg_config_path.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-build}
shift || true
cd "$root"
pc="$root/.deps/prefix/lib/pkgconfig"
if [ ! -f "$dir/build.ninja" ]; then
	meson setup "$dir" -Dpkg_config_path="$pc" "$@" >"$root/.deps/logs/meson-$(basename "$dir").log" 2>&1 || {
		cat "$root/.deps/logs/meson-$(basename "$dir").log" >&2
		exit 1
	}
fi
ninja -C "$dir" >"$root/.deps/logs/ninja-$(basename "$dir").log" 2>&1 || {
	grep -E 'error|FAILED' -A3 "$root/.deps/logs/ninja-$(basename "$dir").log" | head -60 >&2
	exit 1
}
