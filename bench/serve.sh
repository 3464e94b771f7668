#!/usr/bin/env bash
# Load test of `tidings serve` (issue 5), on loopback only:
#
#   bench/serve.sh [REQUESTS] [CLIENTS] [POSTGRES_URL]
#                  (defaults: 10000 50, SQLite)
#
# Imports REQUESTS subscribers into a fresh store (SQLite in a temp
# folder, or the PostgreSQL database POSTGRES_URL, which is emptied
# first), starts `tidings serve --listen 127.0.0.1:0`, and runs the load
# client (benches/serve_load.rs): CLIENTS concurrent kept-alive
# connections POST one RFC 8058 one-click unsubscribe per subscriber, each
# with its own signed token. Prints requests/s and latency percentiles,
# then checks that every answer was a 200 and that nothing was lost: the
# store has exactly REQUESTS unsubscribed subscribers, the access log
# REQUESTS `outcome=unsubscribed` lines (and on SQLite the event trail
# REQUESTS `unsubscribed`/`one-click` events). Server and client share the
# machine's cores: run it on an idle machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-10000}
clients=${2:-50}
pg_url=${3:-}

die() { printf 'bench/serve.sh: error: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
server_pid=""
cleanup() {
	if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "building (release)…"
cargo build --release --quiet
cargo bench --bench serve_load --no-run --quiet 2>/dev/null
bin=$PWD/target/release/tidings
unset "${!TIDINGS_@}"
export TIDINGS_UNSUBSCRIBE_SECRET=bench-secret-0123456789abcdef
if [ -n "$pg_url" ]; then
	export TIDINGS_DATABASE_URL=$pg_url
	psql "$pg_url" -q -c 'DROP SCHEMA public CASCADE; CREATE SCHEMA public;' >/dev/null ||
		die "cannot empty $pg_url"
fi

mkdir -p "$work/project/content"
cp tidings.toml "$work/project/"
cp content/issue-17.md "$work/project/content/"
cp -r templates "$work/project/"
python3 - "$n" "$work/project/members.csv" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("email,first_name\n")
    for i in range(n):
        f.write(f"reader{i:07d}@example.org,Reader{i}\n")
PY
cd "$work/project"
"$bin" subscribers import members.csv >/dev/null
echo "store: $("$bin" subscribers stats | head -2 | tr '\n' ' ')"

"$bin" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
addr=""
for _ in $(seq 1 100); do
	addr=$(sed -n 's|^listening on http://||p' "$work/serve.out")
	[ -n "$addr" ] && break
	kill -0 "$server_pid" 2>/dev/null || die "tidings serve exited: $(cat "$work/serve.log")"
	sleep 0.1
done
[ -n "$addr" ] || die "tidings serve did not start: $(cat "$work/serve.log")"
echo "tidings serve on $addr ($(if [ -n "$pg_url" ]; then echo PostgreSQL; else echo SQLite; fi)); $n requests from $clients clients"

cd - >/dev/null
SERVE_LOAD_ADDR=$addr SERVE_LOAD_SECRET=$TIDINGS_UNSUBSCRIBE_SECRET \
	SERVE_LOAD_REQUESTS=$n SERVE_LOAD_CLIENTS=$clients SERVE_LOAD_ISSUE=issue-17 \
	cargo bench --quiet --bench serve_load || die "the load client saw errors (above)"

kill -TERM "$server_pid"
wait "$server_pid" || die "tidings serve exited with status $? after SIGTERM"
server_pid=""

cd "$work/project"
unsubscribed=$("$bin" subscribers list --status unsubscribed --format csv | tail -n +2 | wc -l)
logged=$(grep -c 'outcome=unsubscribed' "$work/serve.log" || true)
errors=$(grep -c 'level=error' "$work/serve.log" || true)
echo "check: store has $unsubscribed unsubscribed; access log has $logged outcome=unsubscribed lines, $errors errors"
[ "$unsubscribed" -eq "$n" ] || die "lost unsubscribes: $unsubscribed of $n in the store"
[ "$logged" -eq "$n" ] || die "$logged of $n requests logged as unsubscribed"
[ "$errors" -eq 0 ] || die "the server logged errors: $(grep 'level=error' "$work/serve.log" | head -3)"
if [ -z "$pg_url" ]; then
	events=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT COUNT(*) FROM subscriber_events WHERE event = 'unsubscribed' AND source = 'one-click'\").fetchone()[0])" subscribers/subscribers.db)
	echo "check: $events one-click unsubscribe events"
	[ "$events" -eq "$n" ] || die "$events of $n events recorded"
fi
echo "ok: no error, no lost unsubscribe"
