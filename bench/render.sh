#!/usr/bin/env bash
# Render benchmark (issue 2): tidings beside the reference MJML compiler.
#
#   bench/render.sh [SECONDS]     (SECONDS per Node series, default 6)
#
# Builds the release binary, runs benches/render.rs (render once, mrml
# compile, per-recipient personalisation), compiles the very MJML tidings
# emits for issue 17 with the reference `mjml` in Node, warm and in-process
# (bench/mjml-bench.js), times one-shot commands of both, and prints a
# table. Needs bench/node_modules (scripts/test.sh installs it, or
# `cd bench && npm ci`). Numbers move with the machine's load: run it on an
# idle machine, and compare medians.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-6}

die() { printf 'bench/render.sh: error: %s\n' "$*" >&2; exit 1; }
[ -f bench/node_modules/mjml/package.json ] || die "the reference compiler is missing: run scripts/test.sh (or: cd bench && npm ci)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time (scripts/test.sh does)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "building (release)…"
cargo build --release --quiet
cargo bench --bench render --no-run --quiet 2>/dev/null
# The binary renders with the bundled config only: no overrides from the shell.
unset "${!TIDINGS_@}"
target/release/tidings preview content/issue-17.md --emit-mjml --subscriber ana@example.org --out "$work/preview" >/dev/null 2>&1 ||
	die "tidings preview failed"
mjml_file=$work/preview/issue-17.mjml

echo "tidings (benches/render.rs):"
cargo bench --bench render --quiet | tee "$work/rust.txt" | grep -v '^RESULT' | sed 's/^/  /'
echo "reference mjml (bench/mjml-bench.js, ${seconds}s per series):"
node bench/mjml-bench.js "$mjml_file" "$seconds" | tee "$work/node.txt" | grep -v '^RESULT' | sed 's/^/  /'

# One-shot commands: the median wall time of 5 runs, and the peak memory.
oneshot() {
	local name=$1 t0 t1
	shift
	: >"$work/$name.wall"
	: >"$work/$name.mem"
	for _ in 1 2 3 4 5; do
		t0=$EPOCHREALTIME
		/usr/bin/time -f '%M' -a -o "$work/$name.mem" "$@" >/dev/null 2>&1 || die "$name failed: $*"
		t1=$EPOCHREALTIME
		awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>"$work/$name.wall"
	done
	printf '%s %s\n' "$(sort -n "$work/$name.wall" | sed -n 3p)" "$(sort -n "$work/$name.mem" | tail -n 1 | awk '{ printf "%d", $1 / 1024 }')"
}
read -r cli_mjml_s cli_mjml_mb < <(oneshot mjml-cli bench/node_modules/.bin/mjml "$mjml_file" -o "$work/reference.html")
read -r cli_tidings_s cli_tidings_mb < <(oneshot tidings-check target/release/tidings check content/issue-17.md)

result() { awk -v k="$1" -v f="$2" '$1 == "RESULT" && $2 == k { print $f }' "$work"/rust.txt "$work"/node.txt; }
mrml=$(result mrml_compile 3)
render=$(result render_once 3)
mjml_skip=$(result mjml_compile_skip 3)
mjml_soft=$(result mjml_compile_soft 3)
personalise=$(result personalise 3)
lines=$(wc -l <"$mjml_file")

echo
echo "issue 17 ($lines lines of MJML), medians:"
awk -v mrml="$mrml" -v render="$render" -v skip="$mjml_skip" -v soft="$mjml_soft" \
	-v pers="$personalise" -v cm="$cli_mjml_s" -v cmm="$cli_mjml_mb" -v ct="$cli_tidings_s" -v ctm="$cli_tidings_mb" 'BEGIN {
	printf "  %-44s %12s %14s %8s\n", "", "tidings", "reference", "ratio"
	printf "  %-44s %9.3f ms %11.3f ms %7.0fx\n", "MJML -> HTML, warm, in-process", mrml / 1000, skip / 1000, skip / mrml
	printf "  %-44s %9.3f ms %11.3f ms %7.0fx\n", "  same, reference with soft validation", mrml / 1000, soft / 1000, soft / mrml
	printf "  %-44s %9.3f ms %11.3f ms %7.0fx\n", "whole render once vs mjml compile alone", render / 1000, skip / 1000, skip / render
	printf "  %-44s %9.1f ms %11.1f ms %7.0fx\n", "one-shot command (tidings check / mjml CLI)", ct * 1000, cm * 1000, cm / ct
	printf "  %-44s %9d MB %11d MB\n", "  peak memory of that command", ctm, cmm
	printf "  %-44s %9.2f us %14s\n", "personalise, per recipient", pers, "(target < 20 us)"
	verdict = (skip / mrml >= 50) ? "met" : "NOT met"
	printf "\n  compile >= 50x faster than the reference in-process: %s (%.0fx)\n", verdict, skip / mrml
	printf "  personalisation < 20 us per recipient: %s\n", (pers < 20) ? "met" : "NOT met"
}'
