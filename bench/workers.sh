#!/usr/bin/env bash
# Several senders on one PostgreSQL (issue 6): total throughput with 1, 2
# and 4 `tidings send --worker-id` processes, unthrottled, against Postfix's
# smtp-sink on loopback.
#
#   bench/workers.sh [RECIPIENTS]        (default 20000)
#
# Uses $TIDINGS_TEST_POSTGRES_URL when set (scripts/test.sh exports it),
# else starts a throwaway PostgreSQL cluster. On a 2-core machine the
# workers, PostgreSQL and smtp-sink all share the same two cores: the
# numbers say where that ceiling is, not how a cluster of machines scales.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-20000}

die() { printf 'bench/workers.sh: error: %s\n' "$*" >&2; exit 1; }
sink=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$sink" ] || die "smtp-sink is missing: apt-get install postfix (scripts/test.sh does)"
command -v psql >/dev/null || die "psql is missing: apt-get install postgresql"

work=$(mktemp -d)
chmod 755 "$work"
sink_pid=""
pg_ctl=""
cleanup() {
	[ -z "$sink_pid" ] || kill "$sink_pid" 2>/dev/null || true
	[ -z "$pg_ctl" ] || runuser -u postgres -- "$pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

url=${TIDINGS_TEST_POSTGRES_URL:-}
if [ -z "$url" ]; then
	bin_dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	pg_ctl=$bin_dir/pg_ctl
	port=$((30000 + RANDOM % 20000))
	mkdir -p "$work/pg" && chown postgres "$work/pg"
	runuser -u postgres -- "$bin_dir/initdb" -D "$work/pg" -U postgres -A trust >/dev/null
	runuser -u postgres -- "$pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $work -c fsync=off" start >/dev/null
	url=postgres://postgres@127.0.0.1:$port/postgres
fi
base=${url%/*}

echo "building (release)…"
cargo build --release --quiet
bin=$PWD/target/release/tidings
unset "${!TIDINGS_@}"
export TIDINGS_UNSUBSCRIBE_SECRET=bench-secret-0123456789abcdef

mkdir -p "$work/project/content"
cp tidings.toml "$work/project/"
cp content/issue-17.md "$work/project/content/"
python3 - "$n" "$work/project/list.csv" <<'EOF'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("email,first_name\n")
    for i in range(n):
        f.write(f"reader{i:07d}@example.org,Reader{i}\n")
EOF

sport=$((20000 + RANDOM % 10000))
"$sink" -u nobody "127.0.0.1:$sport" 1000 >/dev/null 2>&1 &
sink_pid=$!
sleep 0.5

declare -A rate
for workers in 1 2 4; do
	db=tidings_bench_w$workers
	psql "$url" -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
	export TIDINGS_DATABASE_URL=$base/$db TIDINGS_SMTP_HOST=127.0.0.1 TIDINGS_SMTP_PORT=$sport TIDINGS_SMTP_TLS=none
	# The campaign (and its recipients) first, so every worker times sending only.
	(cd "$work/project" && "$bin" send content/issue-17.md --subscribers list.csv --yes --quiet --limit 0 --worker-id w0 >/dev/null 2>&1) || true
	pids=()
	for w in $(seq 1 "$workers"); do
		(cd "$work/project" && /usr/bin/time -f "w$w %U user %S sys" -a -o "$work/cpu$workers" \
			"$bin" send content/issue-17.md --subscribers list.csv --yes --quiet --rate unlimited --concurrency 4 --worker-id "w$w" >"$work/w$workers-$w.out" 2>&1) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "a worker failed: $(cat "$work"/w"$workers"-*.out)"; done
	rate[$workers]=$(psql "$TIDINGS_DATABASE_URL" -tA -c \
		"SELECT round(COUNT(*) / ((MAX(sent_at) - MIN(sent_at)) / 1000.0), 0) FROM deliveries WHERE status = 'sent'")
	sent=$(psql "$TIDINGS_DATABASE_URL" -tA -c "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
	[ "$sent" -eq "$n" ] || die "$workers workers sent $sent of $n"
done

echo
echo "results: $n messages of issue 17 to smtp-sink, unthrottled, 4 connections per worker"
for workers in 1 2 4; do
	printf '  %d worker(s): %s messages/s in total   (CPU: %s)\n' "$workers" "${rate[$workers]}" \
		"$(tr '\n' ';' <"$work/cpu$workers" | sed 's/;$//; s/;/, /g')"
done
