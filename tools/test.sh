#!/usr/bin/env bash
# The test command: set up everything, then build and run the whole suite
# twice, in a normal build and in an AddressSanitizer + UBSan build, and the
# fuzzers under libFuzzer in a clang build. The last line is the total:
#   N passed, N failed, N skipped
# Exit status: 0 when nothing failed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup.sh || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
mkdir -p .deps/logs

pass=0 fail=0 skip=0
py=$(command -v /usr/bin/python3 || command -v python3)

# run_suite LABEL DIR [meson options...]
run_suite() {
	local label=$1 dir=$2
	shift 2
	echo "== $label: building $dir"
	if ! bash tools/build.sh "$dir" "$@"; then
		echo "== $label: BUILD FAILED"
		fail=$((fail + 1))
		return
	fi
	echo "== $label: testing"
	meson test -C "$dir" --print-errorlogs --num-processes 2 >"$root/.deps/logs/test-$label.log" 2>&1
	grep -E '^ *[0-9]+/[0-9]+ ' "$root/.deps/logs/test-$label.log" || true
	local counts
	counts=$("$py" - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
p = f = s = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"):
        p += 1
    elif r == "SKIP":
        s += 1
    else:
        f += 1
print(p, f, s)
PY
	) || counts="0 1 0"
	read -r p f s <<<"$counts"
	if [ "$f" -gt 0 ]; then
		sed -n '/Summary of Failures/,$p' "$root/.deps/logs/test-$label.log"
		grep -E '^(FAIL|==[0-9]+==|.*runtime error)' "$root/.deps/logs/test-$label.log" | head -40
	fi
	echo "== $label: $p passed, $f failed, $s skipped"
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_suite normal build
# CUDA stays out of the sanitizer build: nvcc links with its own driver.
run_suite asan build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dcuda=disabled -Dbuildtype=debug
if command -v clang >/dev/null; then
	CC=clang run_suite fuzz build-fuzz -Dfuzz=enabled -Dcuda=disabled -Db_sanitize=address,undefined \
		-Db_lundef=false -Dbuildtype=debugoptimized
fi
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
