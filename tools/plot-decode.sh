#!/usr/bin/env bash
# Plot each decode step's latency, one line per (policy, budget), with the
# exact step beside them, from the JSON lines of `mnemo-bench decode --json`.
#   tools/plot-decode.sh RESULTS.json OUT.png [TITLE]
# Needs jq and gnuplot (Debian: apt-get install jq gnuplot-nox).
set -euo pipefail
if [ $# -lt 2 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
	echo "usage: $0 RESULTS.json OUT.png [TITLE]" >&2
	exit 2
fi
in=$1 out=$2 title=${3:-"decode step latency over steps"}
for tool in jq gnuplot; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is not installed" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
series=$(jq -r 'select(.suite == "decode" and .step_ms and .budget) | "\(.policy)@\(.budget_frac)"' "$in")
[ -n "$series" ] || { echo "$0: no decode results in $in" >&2; exit 1; }
plot=""
i=0
for s in $series; do
	p=${s%@*} b=${s#*@}
	jq -r --arg p "$p" --argjson b "$b" 'select(.suite == "decode" and .policy == $p and .budget_frac == $b) |
		.step_ms | to_entries[] | "\(.key + 1) \(.value)"' "$in" >"$tmp/$i.dat"
	plot+="${plot:+, }'$tmp/$i.dat' using 1:2 with linespoints title '$p, budget $(awk "BEGIN{print $b*100}")%'"
	i=$((i + 1))
done
exact=$(jq -r 'select(.suite == "decode" and .policy == "exact" and .metric == "whole_step") | .step_ms' "$in" | head -1)
[ -n "$exact" ] && plot+=", $exact with lines dashtype 2 title 'exact, one whole step'"
gnuplot <<GP
set terminal pngcairo size 900,600
set output '$out'
set title '$title'
set xlabel 'decode step'
set ylabel 'step latency, all layers (ms)'
set logscale y
set grid
set key top right
plot $plot
GP
echo "$out"
