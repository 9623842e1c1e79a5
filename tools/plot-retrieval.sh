#!/usr/bin/env bash
# Plot top-100 recall against the share of keys scanned, one line per policy,
# from the JSON lines of `mnemo-bench retrieval --json`.
#   tools/plot-retrieval.sh RESULTS.json OUT.png [TITLE]
# Needs jq and gnuplot (Debian: apt-get install jq gnuplot-nox).
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
	echo "usage: $0 RESULTS.json OUT.png [TITLE]" >&2
	exit 2
fi
in=$1 out=$2 title=${3:-"top-100 recall against keys scanned"}
for tool in jq gnuplot; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is not installed" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
policies=$(jq -r 'select(.suite == "retrieval" and .policy != "exact-first") | .policy' "$in" | sort -u)
[ -n "$policies" ] || { echo "$0: no retrieval results in $in" >&2; exit 1; }
plot=""
for p in $policies; do
	jq -r --arg p "$p" 'select(.suite == "retrieval" and .policy == $p) |
		"\(.scanned_frac * 100) \(.top100_recall) \(.oracle_mass_recall)"' "$in" | sort -g >"$tmp/$p.dat"
	plot+="${plot:+, }'$tmp/$p.dat' using 1:2 with linespoints title '$p'"
done
gnuplot <<GP
set terminal pngcairo size 900,600
set output '$out'
set title '$title'
set xlabel 'keys scanned (% of the context)'
set ylabel 'top-100 recall'
set logscale x
set grid
set key bottom right
set yrange [0:1]
plot $plot
GP
echo "$out"
