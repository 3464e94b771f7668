#!/usr/bin/env bash
# A send to a very large list (issue 11): N recipients (default 1,000,000)
# from the store, unthrottled, to Postfix's smtp-sink on loopback, with the
# durable journal on; SQLite, then PostgreSQL when a server is given.
#
#   bench/send-million.sh [N] [CONCURRENCY]          (defaults: 1000000 4)
#   PG_URL=postgres://postgres@127.0.0.1:5432/postgres bench/send-million.sh
#
# Prints wall time, messages/s and peak RSS (GNU time) of the send, and
# checks the journal: every recipient sent exactly once (one attempt, a
# Message-ID of its own), nothing left pending, in flight or on the wire,
# the counts add up, and the sink received as many messages as the
# journal says were sent. Fails (exit 1) otherwise, or when the peak RSS
# is 100 MB or more.
#
# PG_URL (or TIDINGS_TEST_POSTGRES_URL) names a server where a database
# may be created and dropped (psql must be installed): use one with
# fsync on for figures that say what the product does. TIDINGS_BIN=path
# measures that binary instead of building one. Needs smtp-sink
# (postfix), script (util-linux), Python 3 and /usr/bin/time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-1000000}
concurrency=${2:-4}
PG_URL=${PG_URL:-${TIDINGS_TEST_POSTGRES_URL:-}}
max_rss_mb=100

die() { printf 'bench/send-million.sh: error: %s\n' "$*" >&2; exit 1; }
sink=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$sink" ] || die "smtp-sink is missing: apt-get install postfix (scripts/test.sh does)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time"

work=$(mktemp -d)
chmod 755 "$work"
sink_pid=""
pg_db=""
cleanup() {
	if [ -n "$sink_pid" ]; then
		pkill -P "$sink_pid" 2>/dev/null || true
		kill "$sink_pid" 2>/dev/null || true
	fi
	[ -z "$pg_db" ] || psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
	rm -rf "$work"
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

mkdir -p "$work/p/content"
cp tidings.toml "$work/p/"
cp content/issue-17.md "$work/p/content/"
cp -r templates "$work/p/"
python3 - "$n" "$work/list.csv" <<'EOF'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("email,first_name,last_name,city\n")
    for i in range(n):
        f.write(f"reader{i:07d}@example.org,Reader{i},Ørsted,Portland\n")
EOF

port=$((20000 + RANDOM % 20000))
# -c: a running count of messages ("… mesg=N\r"), written at once only
# to a terminal: script(1) gives it one.
script -qfc "$sink -u nobody -c 127.0.0.1:$port 1000" "$work/sink.out" >/dev/null 2>&1 &
sink_pid=$!
sleep 0.5
sink_count() { tail -c 200 "$work/sink.out" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -n 1; }

# The journal's state after the send, as "sent total other attempts1 ids".
check_sqlite() {
	python3 - "$1" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(cid,) = db.execute("SELECT MAX(id) FROM campaigns").fetchone()
q = lambda sql: db.execute(sql, (cid,)).fetchone()[0]
print(q("SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status = 'sent'"),
      q("SELECT COUNT(*) FROM deliveries WHERE campaign_id = ?"),
      q("SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND (status <> 'sent' OR on_wire <> 0)"),
      q("SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND attempts = 1"),
      q("SELECT COUNT(DISTINCT message_id) FROM deliveries WHERE campaign_id = ?"))
EOF
}
check_pg() {
	psql -Atq "$1" -F ' ' -c "
		WITH c AS (SELECT MAX(id) AS id FROM campaigns), d AS (SELECT * FROM deliveries WHERE campaign_id = (SELECT id FROM c))
		SELECT COUNT(*) FILTER (WHERE status = 'sent'), COUNT(*),
		       COUNT(*) FILTER (WHERE status <> 'sent' OR on_wire <> 0),
		       COUNT(*) FILTER (WHERE attempts = 1), COUNT(DISTINCT message_id) FROM d"
}

failed=0
run() { # label database checker
	local label=$1 database=$2 checker=$3
	echo "== $label: importing $n subscribers"
	(cd "$work/p" && TIDINGS_DATABASE_URL=$database "$bin" subscribers import "$work/list.csv" | sed 's/^/   /')
	local before
	before=$(sink_count)
	before=${before:-0}
	echo "== $label: sending to $n recipients, unthrottled, $concurrency connections (load: $(cut -d' ' -f1-3 /proc/loadavg))"
	(cd "$work/p" && TIDINGS_DATABASE_URL=$database TIDINGS_SMTP_PORT=$port TIDINGS_SMTP_HOST=127.0.0.1 TIDINGS_SMTP_TLS=none \
		/usr/bin/time -v -o "$work/time.txt" "$bin" send content/issue-17.md \
		--yes --quiet --rate unlimited --concurrency "$concurrency" >"$work/send.out" 2>&1) ||
		{ cat "$work/send.out" >&2; die "$label: the send failed"; }
	sleep 1
	local after secs rss
	after=$(sink_count)
	secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$work/time.txt")
	rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$work/time.txt")
	read -r sent total other once ids < <("$checker" "$4")
	printf '   %s\n' "$(grep '^this run' "$work/send.out")"
	printf '   %-10s %8.1f s  %7.0f messages/s  peak RSS %s MB  (load after: %s)\n' "$label" "$secs" \
		"$(awk -v n="$n" -v s="$secs" 'BEGIN { print n / s }')" "$rss" "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf '   journal: %s rows, %s sent, %s not sent or still marked on the wire, %s with one attempt, %s distinct Message-IDs; the sink received %s\n' \
		"$total" "$sent" "$other" "$once" "$ids" "$((after - before))"
	if [ "$total" -ne "$n" ] || [ "$sent" -ne "$n" ] || [ "$other" -ne 0 ] || [ "$once" -ne "$n" ] ||
		[ "$ids" -ne "$n" ] || [ "$((after - before))" -ne "$n" ]; then
		echo "   FAIL: the journal is not consistent with $n recipients each sent once" >&2
		failed=1
	fi
	if awk -v r="$rss" -v m="$max_rss_mb" 'BEGIN { exit !(r >= m) }'; then
		echo "   FAIL: peak RSS ${rss} MB is not under ${max_rss_mb} MB" >&2
		failed=1
	fi
}

run sqlite "sqlite:$work/p/subscribers.db" check_sqlite "$work/p/subscribers.db"
if [ -n "$PG_URL" ]; then
	command -v psql >/dev/null || die "psql is missing: apt-get install postgresql-client"
	pg_db="tidings_million_$$"
	psql -q "$PG_URL" -c "CREATE DATABASE $pg_db"
	run postgres "${PG_URL%/*}/$pg_db" check_pg "${PG_URL%/*}/$pg_db"
else
	echo "== PostgreSQL skipped (set PG_URL)"
fi
exit "$failed"
