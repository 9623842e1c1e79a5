#!/usr/bin/env bash
# tools/setup.sh - prepare a Debian 12 (bookworm) machine to build mnemo.
#
#   1. install the Debian packages the build, tests and benchmarks need;
#   2. enable deb-src for the Debian archive and fetch Debian's faiss source;
#   3. build the FAISS C API (Debian ships libfaiss.a and the c_api headers
#      but no libfaiss_c) into <repo>/.deps/prefix/lib/libfaiss_c.a and write
#      <repo>/.deps/prefix/lib/pkgconfig/faiss_c.pc;
#   4. compile and run index/faiss_smoke.c through that .pc file.
#
# Idempotent: a run with nothing to do prints one line per step and takes
# about a second. Each step's full output is appended to
# .deps/logs/<step>.log and shown only when the step fails. Everything it builds lives under .deps/
# (git-ignored); outside the repository it only touches Debian packages and
# the apt sources (deb-src entries for the Debian archive).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SELF="$ROOT/tools/setup.sh"
DEPS="$ROOT/.deps"
LOGDIR="$DEPS/logs"
SRCDIR="$DEPS/src"
BUILDDIR="$DEPS/build"
PREFIX="$DEPS/prefix"
PCDIR="$PREFIX/lib/pkgconfig"
LIBFAISS_C="$PREFIX/lib/libfaiss_c.a"
SMOKE_SRC="$ROOT/index/faiss_smoke.c"
SMOKE_BIN="$BUILDDIR/faiss_smoke"

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

PACKAGES=(
	build-essential meson ninja-build pkg-config
	libuv1-dev liburing-dev liblmdb-dev libxxhash-dev libjson-c-dev
	libfaiss-dev libblas-dev liblapack-dev
	dpkg-dev fio python3-numpy gnuplot-nox jq hyperfine
	clang libclang-rt-14-dev
)
# Any one OpenBLAS flavour will do; the OpenMP one is installed when none is,
# because libfaiss.a itself is OpenMP (libgomp) code.
OPENBLAS_FLAVOURS=(libopenblas-openmp-dev libopenblas-pthread-dev libopenblas-serial-dev)

mkdir -p "$LOGDIR"

say() { printf 'setup: %-14s %s\n' "$1" "$2"; }

# run_step NAME FUNCTION [ARGS...]: run FUNCTION with errexit in a subshell.
# Its output is appended to $LOGDIR/NAME.log (one dated section per run) and
# shown only if it fails, which stops the script. The function reports its
# one-line result by writing it to fd 3.
run_step() {
	local name=$1 log="$LOGDIR/$1.log" cur="$LOGDIR/.$1.out" msg="$LOGDIR/.$1.msg" rc
	shift
	set +e
	(set -e; "$@") >"$cur" 2>&1 3>"$msg"
	rc=$?
	set -e
	{ echo "=== $(date '+%F %T') exit $rc: $(cat "$msg")"; cat "$cur"; } >>"$log"
	if [ "$rc" -ne 0 ]; then
		say "$name" "FAILED (exit $rc); full log: $log" >&2
		sed 's/^/  | /' "$cur" | tail -n 150 >&2
		exit "$rc"
	fi
	say "$name" "$(cat "$msg")"
	rm -f "$cur" "$msg"
}

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -E "$@"
	else
		echo "need root (or sudo) to run: $*" >&2
		return 1
	fi
}

APT_OPTS=(-y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)

is_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

have_faiss_source() {
	apt-cache showsrc faiss 2>/dev/null | grep -q '^Package: faiss$'
}

# --- step: apt sources (deb-src) ------------------------------------------

# Add deb-src to the Types of deb822 stanzas for the Debian archive.
edit_deb822() {
	awk -v codename="$1" '
	function flush(   i, isdeb) {
		if (n == 0) return
		isdeb = (uris ~ /debian\.org/ || signed ~ /debian-archive-keyring/ ||
			 (uris ~ /\/debian/ && comps ~ /(^|[ \t])main([ \t]|$)/ &&
			  suites ~ ("^[ \t]*" codename "(-updates|-security|-backports)?[ \t]*$")))
		for (i = 1; i <= n; i++) {
			if (i == ti && isdeb && types !~ /(^|[ \t])deb-src([ \t]|$)/ &&
			    types ~ /(^|[ \t])deb([ \t]|$)/)
				sub(/[ \t]*$/, " deb-src", buf[i])
			print buf[i]
		}
		n = 0; ti = 0; types = uris = suites = comps = signed = ""
	}
	/^[ \t]*$/ { flush(); print; next }
	{
		buf[++n] = $0
		if (tolower($0) ~ /^types:/)     { ti = n; types = substr($0, 7) }
		if (tolower($0) ~ /^uris:/)      uris = substr($0, 6)
		if (tolower($0) ~ /^suites:/)    suites = substr($0, 8)
		if (tolower($0) ~ /^components:/) comps = substr($0, 12)
		if (tolower($0) ~ /^signed-by:/) signed = substr($0, 11)
	}
	END { flush() }' "$2"
}

# Append a deb-src twin for every active one-line "deb" entry of the Debian
# archive that has none yet.
edit_oneline() {
	awk -v codename="$1" '
	{ line[NR] = $0 }
	/^[ \t]*deb-src[ \t]/ { s = $0; sub(/^[ \t]+/, "", s); gsub(/[ \t]+/, " ", s); have[s] = 1 }
	END {
		for (i = 1; i <= NR; i++) print line[i]
		for (i = 1; i <= NR; i++) {
			l = line[i]
			if (l !~ /^[ \t]*deb[ \t]/) continue
			# fields after the options: URI suite component...
			f = l; sub(/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]*)?/, "", f)
			nf = split(f, w, /[ \t]+/)
			ismain = 0
			for (j = 3; j <= nf; j++) if (w[j] == "main") ismain = 1
			if (!(l ~ /debian\.org/ || l ~ /debian-archive-keyring/ ||
			      (w[1] ~ /\/debian/ && ismain &&
			       w[2] ~ ("^" codename "(-updates|-security|-backports)?$"))))
				continue
			s = l; sub(/^[ \t]*deb/, "deb-src", s); gsub(/[ \t]+/, " ", s)
			if (!(s in have)) { print s; have[s] = 1 }
		}
	}' "$2"
}

step_sources() {
	if have_faiss_source; then
		echo "deb-src already enabled" >&3
		return 0
	fi
	local codename f tmp changed=()
	# shellcheck disable=SC1091
	codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		tmp="$(mktemp)"
		case "$f" in
		*.sources) edit_deb822 "$codename" "$f" >"$tmp" ;;
		*) edit_oneline "$codename" "$f" >"$tmp" ;;
		esac
		if ! cmp -s "$f" "$tmp"; then
			echo "--- editing $f"
			diff -u "$f" "$tmp" || true
			as_root cp "$tmp" "$f"
			changed+=("$f")
		fi
		rm -f "$tmp"
	done
	if [ "${#changed[@]}" -gt 0 ]; then
		echo "deb-src added to ${changed[*]}" >&3
	else
		echo "deb-src entries present, package lists stale" >&3
	fi
}

# --- step: packages ---------------------------------------------------------

step_packages() {
	local p missing=() want_src=$1
	for p in "${PACKAGES[@]}"; do
		is_installed "$p" || missing+=("$p")
	done
	local blas_ok=0
	for p in "${OPENBLAS_FLAVOURS[@]}"; do
		if is_installed "$p"; then blas_ok=1; fi
	done
	[ "$blas_ok" = 1 ] || missing+=("${OPENBLAS_FLAVOURS[0]}")

	if [ "${#missing[@]}" -gt 0 ] || [ "$want_src" = 1 ]; then
		as_root apt-get "${APT_OPTS[@]}" update
	fi
	if [ "${#missing[@]}" -gt 0 ]; then
		as_root apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}"
		echo "installed ${missing[*]}" >&3
	else
		echo "all $(( ${#PACKAGES[@]} + 1 )) present" >&3
	fi
	if ! have_faiss_source; then
		echo "apt cannot find the faiss source package even with deb-src enabled;" \
		     "add a deb-src entry for the Debian archive to /etc/apt/sources.list.d/" >&2
		return 1
	fi
}

# --- step: faiss source -----------------------------------------------------

# Set in main once libfaiss-dev is installed, e.g. 1.7.3-2 and 1.7.3.
FAISS_SRC_VERSION=""
FAISS_UPSTREAM=""

find_faiss_tree() {
	local d
	for d in "$SRCDIR"/faiss-*/; do
		if [ -f "${d}c_api/Clustering_c.cpp" ]; then
			printf '%s\n' "${d%/}"
			return 0
		fi
	done
	return 1
}

step_source() {
	local stamp="$SRCDIR/.version" tree
	if tree="$(find_faiss_tree)" && [ "$(cat "$stamp" 2>/dev/null)" = "$FAISS_SRC_VERSION" ]; then
		echo "faiss $FAISS_SRC_VERSION (cached, ${tree#"$ROOT"/})" >&3
		return 0
	fi
	rm -rf "$SRCDIR"
	mkdir -p "$SRCDIR"
	cd "$SRCDIR"
	local opts=(-q)
	# As root, apt would drop to the _apt user, which cannot write here.
	[ "$(id -u)" -ne 0 ] || opts+=(-o APT::Sandbox::User=root)
	local got="$FAISS_SRC_VERSION"
	if ! apt-get "${opts[@]}" source "faiss=$FAISS_SRC_VERSION"; then
		echo "exact source version $FAISS_SRC_VERSION not found; taking the archive's current one"
		apt-get "${opts[@]}" source faiss
		got="$(sed -n 's/^Version: //p' faiss_*.dsc | head -n 1)"
	fi
	tree="$(find_faiss_tree)" || { echo "no faiss-*/c_api in $SRCDIR after apt-get source" >&2; return 1; }
	printf '%s\n' "$FAISS_SRC_VERSION" >"$stamp"
	if [ "$got" = "$FAISS_SRC_VERSION" ]; then
		echo "faiss $got (downloaded, ${tree#"$ROOT"/})" >&3
	else
		echo "faiss $got (downloaded; libfaiss-dev is $FAISS_SRC_VERSION)" >&3
	fi
}

# --- step: libfaiss_c.a -----------------------------------------------------

step_libfaiss_c() {
	local stamp="$PREFIX/lib/.faiss_c.version" tree
	if [ -f "$LIBFAISS_C" ] && [ "$LIBFAISS_C" -nt "$SELF" ] &&
	   [ "$(cat "$stamp" 2>/dev/null)" = "$FAISS_SRC_VERSION" ]; then
		echo "up to date (${LIBFAISS_C#"$ROOT"/})" >&3
		return 0
	fi
	tree="$(find_faiss_tree)"
	local obj="$BUILDDIR/faiss_c"
	rm -rf "$obj"
	mkdir -p "$obj" "$PREFIX/lib"

	# The .cpp files pick up their own c_api headers by relative ("...")
	# includes and the faiss library headers from /usr/include/faiss. Note any
	# drift between the source's c_api headers and the installed ones.
	local h ndiff=0
	while IFS= read -r h; do
		if ! cmp -s "$tree/c_api/$h" "/usr/include/faiss/c_api/$h"; then
			echo "header differs from installed copy: c_api/$h"
			ndiff=$((ndiff + 1))
		fi
	done < <(cd /usr/include/faiss/c_api && find . -name '*.h' | sed 's|^\./||')

	local srcs=()
	mapfile -t srcs < <(cd "$tree/c_api" && find . -name '*.cpp' -not -path './gpu/*' | sed 's|^\./||' | sort)
	[ "${#srcs[@]}" -gt 0 ] || { echo "no C API sources under $tree/c_api" >&2; return 1; }
	echo "compiling ${#srcs[@]} files: ${srcs[*]}"

	export TREE="$tree" OBJ="$obj"
	# shellcheck disable=SC2016 # expanded by the inner sh
	printf '%s\0' "${srcs[@]}" | xargs -0 -P "$(nproc)" -I{} sh -c '
		o="$OBJ/$(printf %s "$1" | tr / _ | sed "s/\.cpp\$/.o/")"
		echo "g++ $1"
		exec g++ -O2 -fPIC -fopenmp -Wall -Wno-unused -c "$TREE/c_api/$1" -o "$o"
	' sh {}

	rm -f "$LIBFAISS_C.tmp"
	ar rcs "$LIBFAISS_C.tmp" "$obj"/*.o
	mv -f "$LIBFAISS_C.tmp" "$LIBFAISS_C"
	printf '%s\n' "$FAISS_SRC_VERSION" >"$stamp"
	local note=""
	[ "$ndiff" -eq 0 ] || note=", $ndiff c_api headers differ from /usr/include (see log)"
	echo "built ${LIBFAISS_C#"$ROOT"/} from ${#srcs[@]} sources$note" >&3
}

# --- step: faiss_c.pc ---------------------------------------------------------

# libfaiss.a (static only in Debian) needs BLAS+LAPACK (resolved through the
# Debian alternatives, OpenBLAS when installed), GNU OpenMP, libstdc++ and libm.
# -lgomp rather than -fopenmp so that clang links the same runtime as gcc.
# shellcheck disable=SC2016 # ${libdir} is a pkg-config variable
FAISS_C_LIBS='-L${libdir} -lfaiss_c -lfaiss -llapack -lblas -lgomp -lpthread -lstdc++ -lm'

step_pc() {
	mkdir -p "$PCDIR"
	local pc="$PCDIR/faiss_c.pc" tmp
	tmp="$(mktemp)"
	# The installed c_api headers include each other as "faiss_c.h",
	# "../Index_c.h" (relative to themselves), so <faiss/c_api/X_c.h> works
	# with the system include dir; includedir is only stated for clarity and
	# pkg-config drops -I/usr/include from --cflags.
	cat >"$tmp" <<-EOF
	prefix=$PREFIX
	libdir=\${prefix}/lib
	includedir=/usr/include
	c_api_includedir=\${includedir}/faiss/c_api

	Name: faiss_c
	Description: FAISS C API, static libfaiss_c built from Debian faiss $FAISS_SRC_VERSION; include as <faiss/c_api/Index_c.h>
	Version: $FAISS_UPSTREAM
	Cflags: -I\${includedir}
	Libs: $FAISS_C_LIBS
	EOF
	if cmp -s "$tmp" "$pc"; then
		rm -f "$tmp"
		echo "up to date (${pc#"$ROOT"/})" >&3
	else
		mv -f "$tmp" "$pc"
		chmod 644 "$pc"
		cat "$pc"
		echo "wrote ${pc#"$ROOT"/}" >&3
	fi
}

# --- step: smoke test ---------------------------------------------------------

step_smoke() {
	export PKG_CONFIG_PATH="$PCDIR${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
	local flags
	flags="$(pkg-config --cflags --libs faiss_c)"
	echo "pkg-config --cflags --libs faiss_c: $flags"
	if [ ! -x "$SMOKE_BIN" ] || [ "$SMOKE_SRC" -nt "$SMOKE_BIN" ] ||
	   [ "$LIBFAISS_C" -nt "$SMOKE_BIN" ] || [ "$PCDIR/faiss_c.pc" -nt "$SMOKE_BIN" ]; then
		mkdir -p "$BUILDDIR"
		# shellcheck disable=SC2086 # $flags is a list of flags
		cc -std=c11 -O2 -Wall -Wextra -Werror "$SMOKE_SRC" -o "$SMOKE_BIN.tmp" $flags
		mv -f "$SMOKE_BIN.tmp" "$SMOKE_BIN"
	fi
	local out
	out="$("$SMOKE_BIN")"
	echo "$out"
	echo "${out#faiss_smoke: }" >&3
}

# --- main ---------------------------------------------------------------------

start=$SECONDS
run_step sources step_sources
if have_faiss_source; then want_src=0; else want_src=1; fi
run_step packages step_packages "$want_src"
FAISS_SRC_VERSION="$(dpkg-query -W -f='${source:Version}' libfaiss-dev)"
FAISS_UPSTREAM="${FAISS_SRC_VERSION#*:}"
FAISS_UPSTREAM="${FAISS_UPSTREAM%-*}"
run_step faiss-source step_source
run_step libfaiss_c step_libfaiss_c
run_step faiss_c.pc step_pc
run_step smoke-test step_smoke
say "done" "in $((SECONDS - start))s; configure with:"
echo "  PKG_CONFIG_PATH=$PCDIR"
echo "  meson setup build -Dpkg_config_path=$PCDIR"
