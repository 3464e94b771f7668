#!/usr/bin/env bash
# Send benchmark (issue 4), three parts side by side in one run:
#
#   bench/send.sh [RECIPIENTS_DRY_RUN] [RECIPIENTS_SMTP] [RATE_SECONDS]
#                 (defaults: 100000 20000 60)
#
# (a) dry run of RECIPIENTS_DRY_RUN subscribers from the SQLite store, to
#     a tmpfs folder: messages/s and peak memory, also at a fifth of the
#     size, to show memory does not grow with the list;
# (b) unthrottled real send of RECIPIENTS_SMTP messages to Postfix's
#     smtp-sink on loopback, beside Postfix's smtp-source sending as many
#     messages of the same size at the same concurrency, reusing
#     connections (-d), at 4 and 16 connections;
# (c) rate accuracy: a send at 50/s for RATE_SECONDS + 15 seconds; from the
#     journal's send times, the achieved rate over every 60-second window
#     and the most messages in any one second.
#
# BENCH_PARTS=b (any of a, b, c; default abc) runs only those parts;
# TIDINGS_BIN=path measures that binary instead of building one.
#
# Needs postfix's smtp-sink/smtp-source and /usr/bin/time (scripts/test.sh
# installs them). Run on an idle machine: smtp-sink shares the 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n_dry=${1:-100000}
n_smtp=${2:-20000}
rate_secs=${3:-60}
parts=${BENCH_PARTS:-abc}

die() { printf 'bench/send.sh: error: %s\n' "$*" >&2; exit 1; }
sink=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
source_bin=$(command -v smtp-source || echo /usr/sbin/smtp-source)
[ -x "$sink" ] && [ -x "$source_bin" ] || die "smtp-sink/smtp-source are missing: apt-get install postfix (scripts/test.sh does)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time"

work=$(mktemp -d)
shm=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
sink_pid=""
cleanup() {
	[ -z "$sink_pid" ] || kill "$sink_pid" 2>/dev/null || true
	rm -rf "$work" "$shm"
}
trap cleanup EXIT

if [ -n "${TIDINGS_BIN:-}" ]; then
	bin=$(realpath "$TIDINGS_BIN")
else
	echo "building (release)…"
	cargo build --release --quiet
	bin=${CARGO_TARGET_DIR:-$PWD/target}/release/tidings
fi
unset "${!TIDINGS_@}"
export TIDINGS_UNSUBSCRIBE_SECRET=bench-secret-0123456789abcdef

# A project: the bundled config and issue 17, its own database.
project() {
	local dir=$1
	mkdir -p "$dir/content"
	cp tidings.toml "$dir/"
	cp content/issue-17.md "$dir/content/"
	cp -r templates "$dir/"
}
csv() { # n file
	python3 - "$1" "$2" <<'EOF'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("email,first_name,last_name,city\n")
    for i in range(n):
        f.write(f"reader{i:07d}@example.org,Reader{i},Ørsted,Portland\n")
EOF
}

# ------------------------------------------------------------------ (a)
dry_run() { # n -> "rate rss_mb"
	local n=$1 dir=$work/dry$1
	project "$dir"
	csv "$n" "$dir/list.csv"
	(cd "$dir" && "$bin" subscribers import list.csv >/dev/null)
	rm -rf "$shm/out"
	(cd "$dir" && /usr/bin/time -f '%M' -o "$work/dry$n.mem" "$bin" send content/issue-17.md --dry-run --out "$shm/out" >"$work/dry$n.out" 2>&1) ||
		die "dry run failed: $(cat "$work/dry$n.out")"
	local rate files
	rate=$(sed -n 's/.*(\([0-9]*\)\/s).*/\1/p' "$work/dry$n.out")
	files=$(find "$shm/out" -name '*.eml' | wc -l)
	[ "$files" -eq "$n" ] || die "dry run wrote $files files for $n recipients"
	rm -rf "$shm/out"
	echo "$rate $(awk '{ printf "%d", $1 / 1024 }' "$work/dry$n.mem")"
}
small=$((n_dry / 5))
if [[ $parts == *a* ]]; then
	echo "(a) dry run from the store…"
	read -r dry_rate dry_mb < <(dry_run "$n_dry")
	read -r dry_small_rate dry_small_mb < <(dry_run "$small")
fi

# ------------------------------------------------------------------ (b)
port=$((20000 + RANDOM % 20000))
chown nobody "$work" 2>/dev/null || true
"$sink" -u nobody "127.0.0.1:$port" 1000 >/dev/null 2>&1 &
sink_pid=$!
sleep 0.5

smtp_dir=$work/smtp
project "$smtp_dir"
csv "$n_smtp" "$smtp_dir/list.csv"
# The same size as tidings' messages: one built by a dry run.
(cd "$smtp_dir" && "$bin" send content/issue-17.md --dry-run --subscribers list.csv --limit 1 --out "$work/one" >/dev/null 2>&1)
size=$(stat -c %s "$(find "$work/one" -name '*.eml' | head -n 1)")

tidings_send() { # concurrency -> messages/s
	rm -f "$smtp_dir"/subscribers/subscribers.db*
	(cd "$smtp_dir" && TIDINGS_SMTP_PORT=$port TIDINGS_SMTP_HOST=127.0.0.1 TIDINGS_SMTP_TLS=none \
		"$bin" send content/issue-17.md --subscribers list.csv --yes --quiet --rate unlimited --concurrency "$1" >"$work/send.out" 2>&1) ||
		die "send failed: $(cat "$work/send.out")"
	sed -n 's/^this run: sent \([0-9]*\), .* (\([0-9.]*\) messages\/s)$/\2/p' "$work/send.out"
}
source_send() { # concurrency -> messages/s
	local t0 t1
	t0=$EPOCHREALTIME
	"$source_bin" -d -l "$size" -m "$n_smtp" -s "$1" -f news@example.org -t reader@example.org "127.0.0.1:$port"
	t1=$EPOCHREALTIME
	awk -v a="$t0" -v b="$t1" -v n="$n_smtp" 'BEGIN { printf "%.1f", n / (b - a) }'
}
[[ $parts != *b* ]] || echo "(b) unthrottled send to smtp-sink, $n_smtp messages of $size bytes…"
declare -A smtp
load_b=""
for c in 4 16; do
	[[ $parts == *b* ]] || break
	load_b+="${load_b:+, then }$(cut -d' ' -f1-3 /proc/loadavg)"
	smtp[t$c]=$(tidings_send "$c")
	smtp[s$c]=$(source_send "$c")
done
[ -z "$load_b" ] || load_b+=", after $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ (c)
if [[ $parts == *c* ]]; then
echo "(c) rate accuracy at 50/s for $((rate_secs + 15))s…"
rate_dir=$work/rate
project "$rate_dir"
csv $((50 * (rate_secs + 15))) "$rate_dir/list.csv"
(cd "$rate_dir" && TIDINGS_SMTP_PORT=$port TIDINGS_SMTP_HOST=127.0.0.1 TIDINGS_SMTP_TLS=none \
	"$bin" send content/issue-17.md --subscribers list.csv --yes --quiet --rate 50/s --concurrency 4 >"$work/rate.out" 2>&1) ||
	die "rate send failed: $(cat "$work/rate.out")"
read -r win_min win_max max_second < <(python3 - "$rate_dir/subscribers/subscribers.db" "$rate_secs" <<'EOF'
import sqlite3, sys
db, secs = sys.argv[1], int(sys.argv[2])
times = sorted(t for (t,) in sqlite3.connect(db).execute("SELECT sent_at FROM deliveries WHERE status = 'sent'"))
start, end = times[0], times[-1]
rates = []
t = start
while t + 60_000 <= end:
    n = sum(1 for x in times if t <= x < t + 60_000)
    rates.append(n / 60)
    t += 1000
per_second = {}
for x in times:
    per_second[x // 1000] = per_second.get(x // 1000, 0) + 1
print(f"{min(rates):.2f} {max(rates):.2f} {max(per_second.values())}")
EOF
)
fi

echo
echo "results (2-core machine; $(date -u +%F))"
if [[ $parts == *a* ]]; then
	printf '  (a) dry run, %d recipients from SQLite: %s messages/s, peak memory %s MB\n' "$n_dry" "$dry_rate" "$dry_mb"
	printf '      dry run, %d recipients:            %s messages/s, peak memory %s MB\n' "$small" "$dry_small_rate" "$dry_small_mb"
fi
for c in 4 16; do
	[[ $parts == *b* ]] || break
	printf '  (b) %2d connections: tidings %s/s, smtp-source %s/s: same-run ratio %s\n' "$c" "${smtp[t$c]}" "${smtp[s$c]}" \
		"$(awk -v a="${smtp[t$c]}" -v b="${smtp[s$c]}" 'BEGIN { printf "%.2f", a / b }')"
done
[[ $parts != *b* ]] || printf '      (load averages before each pair: %s)\n' "$load_b"
[[ $parts != *c* ]] || printf '  (c) 50/s: every 60 s window between %s and %s messages/s; at most %s in any one second\n' "$win_min" "$win_max" "$max_second"
