#!/usr/bin/env bash
# Import benchmark: generates a CSV of ROWS rows (default 1,000,000) with a
# few attribute columns, imports it with the release binary into a fresh
# SQLite file and (if a server is given) into a fresh PostgreSQL database,
# then imports it again (every row unchanged). Prints rows/s and peak RSS.
#
#   bench/import.sh                                   # SQLite only
#   PG_URL=postgres://postgres@127.0.0.1:5432/postgres bench/import.sh
#   ROWS=3000000 bench/import.sh                      # memory must not grow
#   TIDINGS_BIN=path bench/import.sh                  # measure that binary
#
# PG_URL (or TIDINGS_TEST_POSTGRES_URL) names a server where a database
# may be created and dropped; psql must be installed. Needs GNU time
# (/usr/bin/time, Debian package `time`) for the peak RSS.
set -euo pipefail

ROWS=${ROWS:-1000000}
PG_URL=${PG_URL:-${TIDINGS_TEST_POSTGRES_URL:-}}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidings-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ ! -x /usr/bin/time ]; then
    echo "bench/import.sh: /usr/bin/time is missing: apt-get install time" >&2
    exit 2
fi

if [ -n "${TIDINGS_BIN:-}" ]; then
    BIN=$(realpath "$TIDINGS_BIN")
    # The binary refuses TIDINGS_* variables it does not know.
    unset TIDINGS_BIN
else
    echo "== building the release binary"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/tidings"
fi

echo "== generating $ROWS rows"
awk -v n="$ROWS" 'BEGIN {
    split("Portland Bangor Lewiston Augusta Saco Biddeford Brunswick", city, " ");
    split("free basic gold", plan, " ");
    print "email,first_name,last_name,city,plan,member_since,lists";
    for (i = 1; i <= n; i++) {
        printf "user%d@example.org,First%d,Läst%d,%s,%s,20%02d-%02d-01,%s\n",
            i, i, i, city[i % 7 + 1], plan[i % 3 + 1], i % 25, i % 12 + 1,
            (i % 4 == 0 ? "monthly;events" : "monthly");
    }
}' > "$WORK/members.csv"
ls -lh "$WORK/members.csv" | awk '{print "   file size " $5}'

# Runs one import; prints rows/s and peak RSS from GNU time.
run() {
    local label=$1 database=$2
    local out="$WORK/time.txt"
    printf 'database = "%s"\n' "$database" > "$WORK/tidings.toml"
    # Start each run with nothing left to write back from the last one.
    sync
    # Only the variables the binary knows: it refuses unknown TIDINGS_*.
    env -u TIDINGS_TEST_POSTGRES_URL -u TIDINGS_DATABASE_URL \
        /usr/bin/time -v "$BIN" --config "$WORK/tidings.toml" \
        subscribers import "$WORK/members.csv" 2> "$out" | sed 's/^/   /'
    local secs rss
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, t, ":"); s = 0;
        for (i = 1; i <= n; i++) s = s * 60 + t[i];
        print s }' "$out")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$out")
    awk -v l="$label" -v r="$ROWS" -v s="$secs" -v k="$rss" 'BEGIN {
        printf "   %-28s %8.2f s  %10.0f rows/s  peak RSS %6.1f MB\n", l, s, r / s, k / 1024 }'
}

echo "== SQLite"
run "sqlite, fresh file" "sqlite:$WORK/subscribers.db"
run "sqlite, same file again" "sqlite:$WORK/subscribers.db"
ls -lh "$WORK/subscribers.db" | awk '{print "   database size " $5}'

if [ -n "$PG_URL" ]; then
    DB="tidings_bench_$$"
    BASE=${PG_URL%/*}
    psql -q "$PG_URL" -c "CREATE DATABASE $DB"
    trap 'psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
    echo "== PostgreSQL"
    run "postgres, fresh database" "$BASE/$DB"
    run "postgres, same database again" "$BASE/$DB"
else
    echo "== PostgreSQL skipped (set PG_URL)"
fi
