#!/usr/bin/env bash
# The whole test suite, against the real services it needs.
#
#   scripts/test.sh [test-name filter and other arguments for the test binaries]
#
# 1. Installs what is missing (needs root, or sudo): from Debian's packages
#    PostgreSQL, Postfix (its smtp-sink/smtp-source tools, and a throwaway
#    relay of its own config folder for the bounce test; the system's mail
#    daemon is never started), Dovecot's IMAP server (throwaway instances
#    on loopback for the bounce tests), Chromium, Python's aiosmtpd and dkimpy (the
#    outside DKIM verifier), openssl (makes the DKIM test keys), Node.js + npm
#    and /usr/bin/time; then the reference MJML compiler with `npm ci` into
#    bench/node_modules (git-ignored, pinned by bench/package-lock.json).
# 2. Starts a throwaway PostgreSQL cluster (temp folder, 127.0.0.1, a free
#    port, trust auth), stopped and removed on exit.
# 3. Exports where each service is (TIDINGS_TEST_*, read by tests/support),
#    then runs cargo fmt --check, cargo clippy --all-targets -D warnings and
#    cargo test -- --include-ignored, so the tests marked
#    #[ignore = "needs …: run scripts/test.sh"] run too.
#
# Idempotent: a second run installs nothing. Prints the time of each phase.
# Plain `cargo test` runs only the part of the suite that needs no service.
# .ci/run calls exactly this script.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# ---------------------------------------------------------------- helpers

T_START=$EPOCHREALTIME
PHASE=""
PHASE_START=$EPOCHREALTIME
TIMINGS=()
PG_CTL=""
PG_DATA=""
PG_TMP=""
PG_AS=()
POLICY_GUARD=""

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

phase() {
	PHASE=$1
	PHASE_START=$EPOCHREALTIME
	printf '\n==> %s\n' "$PHASE"
}

phase_done() {
	local took
	took=$(seconds_since "$PHASE_START")
	TIMINGS+=("$(printf '%-28s %7ss' "$PHASE" "$took")")
	printf '<== %s: %ss\n' "$PHASE" "$took"
	PHASE=""
}

die() {
	printf 'scripts/test.sh: error: %s\n' "$*" >&2
	exit 1
}

stop_postgres() {
	if [ -n "$PG_CTL" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
		"${PG_AS[@]}" "$PG_CTL" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	if [ -n "$PG_TMP" ]; then
		rm -rf "$PG_TMP"
	fi
}

finish() {
	local rc=$?
	trap - EXIT
	[ -z "$POLICY_GUARD" ] || as_root rm -f "$POLICY_GUARD"
	stop_postgres
	printf '\n==> timings\n'
	local t
	for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t"; done
	if [ "$rc" -ne 0 ] && [ -n "$PHASE" ]; then
		printf '  %-28s %7ss  FAILED\n' "$PHASE" "$(seconds_since "$PHASE_START")"
	fi
	printf '  %-28s %7ss\n' "total" "$(seconds_since "$T_START")"
	if [ "$rc" -ne 0 ]; then
		printf 'scripts/test.sh: FAILED%s (exit %s)\n' "${PHASE:+ in phase: $PHASE}" "$rc" >&2
	fi
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs as root directly, else through sudo (only when something must be
# installed).
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "installing needs root: run scripts/test.sh as root or install sudo (command: $*)"
	fi
}

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

# The newest PostgreSQL server's bin folder, or nothing.
postgres_bin() {
	local d best=""
	for d in /usr/lib/postgresql/*/bin; do
		if [ -x "$d/initdb" ]; then
			best=$(printf '%s\n%s\n' "$best" "$d" | sort -V | tail -n 1)
		fi
	done
	printf '%s' "$best"
}

# smtp-sink and smtp-source live in /usr/sbin, often not in a user's PATH.
smtp_tool() {
	if command -v "$1" 2>/dev/null; then
		:
	elif [ -x "/usr/sbin/$1" ]; then
		printf '/usr/sbin/%s\n' "$1"
	fi
}

# ------------------------------------------------------ system packages

phase "system packages"
missing=()
[ -n "$(postgres_bin)" ] || missing+=(postgresql)
[ -n "$(smtp_tool smtp-sink)" ] && [ -n "$(smtp_tool smtp-source)" ] || missing+=(postfix)
# The bounce tests start their own Dovecot (tests/support/mail.rs).
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Chromium's recommended fonts, metric-compatible with Arial/Helvetica that
# the templates ask for: layout and screenshots as in a mail client.
installed fonts-liberation || missing+=(fonts-liberation)
installed python3-aiosmtpd || missing+=(python3-aiosmtpd)
installed python3-dkim || missing+=(python3-dkim)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ! command -v node >/dev/null 2>&1; then
	missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
	missing+=(npm)
fi
[ -x /usr/bin/time ] || missing+=(time)

if [ ${#missing[@]} -eq 0 ]; then
	echo "all present: PostgreSQL, smtp-sink/smtp-source, Dovecot, Chromium, aiosmtpd, dkimpy, openssl, Node.js, npm, time"
else
	echo "installing with apt: ${missing[*]}"
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${missing[*]} yourself"
	if [[ " ${missing[*]} " == *" postfix "* ]]; then
		# Only the smtp-sink/smtp-source tools are wanted: no mail system.
		echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
	fi
	# Keep package scripts from starting daemons (PostgreSQL's system
	# cluster, Postfix): the suite starts what it needs itself.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		POLICY_GUARD=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_GUARD" >/dev/null
		as_root chmod 755 "$POLICY_GUARD"
	fi
	rc=0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
	if [ "$rc" -eq 0 ]; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" || rc=$?
	fi
	[ -z "$POLICY_GUARD" ] || as_root rm -f "$POLICY_GUARD"
	POLICY_GUARD=""
	[ "$rc" -eq 0 ] || die "apt-get could not install: ${missing[*]} (exit $rc)"
fi
# The Postfix mail daemon must not run: only its tools are used. (Checked
# as root only: a developer's own mail setup is left alone.)
if [ "$(id -u)" -eq 0 ] && [ -x /usr/sbin/postfix ] && /usr/sbin/postfix status >/dev/null 2>&1; then
	echo "stopping the Postfix mail daemon (only smtp-sink/smtp-source are used)"
	/usr/sbin/postfix stop || die "cannot stop the Postfix daemon"
fi
PG_BIN=$(postgres_bin)
SMTP_SINK=$(smtp_tool smtp-sink)
SMTP_SOURCE=$(smtp_tool smtp-source)
[ -n "$PG_BIN" ] || die "PostgreSQL's initdb not found under /usr/lib/postgresql/*/bin after installing postgresql"
[ -n "$SMTP_SINK" ] || die "smtp-sink not found after installing postfix"
[ -n "$SMTP_SOURCE" ] || die "smtp-source not found after installing postfix"
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium not found after installing chromium"
[ -x /usr/sbin/dovecot ] || die "/usr/sbin/dovecot not found after installing dovecot-imapd"
[ -x /usr/sbin/postfix ] || die "/usr/sbin/postfix not found after installing postfix"
command -v node >/dev/null 2>&1 || die "node not found after installing nodejs"
command -v npm >/dev/null 2>&1 || die "npm not found after installing npm"
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || die "/usr/bin/python3 cannot import aiosmtpd after installing python3-aiosmtpd"
/usr/bin/python3 -c 'import dkim' 2>/dev/null || die "/usr/bin/python3 cannot import dkim after installing python3-dkim"
command -v openssl >/dev/null 2>&1 || die "openssl not found after installing openssl"
echo "PostgreSQL: $PG_BIN; smtp-sink: $SMTP_SINK; Chromium: $(/usr/bin/chromium --version 2>/dev/null || echo '?'); Node.js: $(node --version)"
phase_done

# ---------------------------------------- the reference MJML compiler

phase "reference mjml (npm)"
want=$(node -p "require('./bench/package.json').dependencies.mjml")
# bench/node_modules is current when it was installed from this very lock
# file (a stamp with its hash): a new or changed dependency reinstalls.
lock_sum=$(sha256sum bench/package-lock.json | cut -d' ' -f1)
stamp=bench/node_modules/.tidings-lock-sha256
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_sum" ]; then
	echo "bench/node_modules is up to date with bench/package-lock.json"
else
	echo "installing bench/package-lock.json into bench/node_modules (npm ci)"
	# mjml 5 declares Node 22+ but runs on Node 20: its engine warnings are noise.
	(cd bench && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in bench/ failed"
	echo "$lock_sum" >"$stamp"
fi
have=$(node -p "require('./bench/node_modules/mjml/package.json').version")
[ "$have" = "$want" ] || die "bench/node_modules has mjml $have, bench/package.json pins $want"
phase_done

# ------------------------------------------------------------ PostgreSQL

phase "PostgreSQL"
PG_CTL=$PG_BIN/pg_ctl
PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tidings-pg.XXXXXX")
PG_DATA=$PG_TMP/data
if [ "$(id -u)" -eq 0 ]; then
	# The server refuses to run as root.
	id postgres >/dev/null 2>&1 || die "no postgres user: is the postgresql package installed?"
	chown postgres:postgres "$PG_TMP"
	PG_AS=(runuser -u postgres --)
fi
"${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C >"$PG_TMP/initdb.log" 2>&1 ||
	{ tail -n 20 "$PG_TMP/initdb.log" >&2; die "initdb failed"; }
PG_PORT=""
for _ in 1 2 3; do
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	if "${PG_AS[@]}" "$PG_CTL" -D "$PG_DATA" -l "$PG_TMP/server.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
		start >/dev/null; then
		PG_PORT=$port
		break
	fi
done
[ -n "$PG_PORT" ] || { tail -n 20 "$PG_TMP/server.log" >&2; die "PostgreSQL did not start"; }
PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
"$PG_BIN/psql" "$PG_URL" -Atqc 'select 1' >/dev/null || die "PostgreSQL started but does not answer at $PG_URL"
echo "PostgreSQL $("$PG_BIN/psql" "$PG_URL" -Atqc 'show server_version') at $PG_URL (data in $PG_DATA)"
phase_done

# ------------------------------------------------------------ the suite

export TIDINGS_TEST_POSTGRES_URL=$PG_URL
export TIDINGS_TEST_CHROMIUM=/usr/bin/chromium
export TIDINGS_TEST_MJML_DIR=$ROOT/bench
export TIDINGS_TEST_SMTP_SINK=$SMTP_SINK
export TIDINGS_TEST_SMTP_SOURCE=$SMTP_SOURCE
# Bounce tests: a throwaway Dovecot (IMAP, TLS from a private CA made with
# openssl) and a throwaway Postfix relay, each from its own config folder.
export TIDINGS_TEST_DOVECOT=/usr/sbin/dovecot
export TIDINGS_TEST_POSTFIX=/usr/sbin/postfix
# Debian's Python, which has aiosmtpd and dkimpy (a python3 earlier in PATH may not).
export TIDINGS_TEST_PYTHON=/usr/bin/python3
printf '\n'
env | grep '^TIDINGS_TEST_' | sort

locked=()
[ -z "${CI:-}" ] || locked=(--locked)

phase "cargo fmt --check"
cargo fmt --all -- --check || die "formatting differs: run cargo fmt"
phase_done

phase "cargo clippy"
cargo clippy "${locked[@]}" --all-targets -- -D warnings || die "clippy found problems (see above)"
phase_done

phase "cargo test"
cargo test "${locked[@]}" --no-fail-fast -- --include-ignored "$@" || die "tests failed (see above)"
phase_done

# The container image, only where an engine really runs (the client alone,
# as on these CI machines, cannot build): build it and ask its binary.
engine=""
for e in docker podman; do
	if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then
		engine=$e
		break
	fi
done
if [ -n "$engine" ]; then
	phase "container image ($engine)"
	"$engine" build -q -t tidings-test . >/dev/null || die "$engine build failed"
	"$engine" run --rm tidings-test tidings --version || die "the image's tidings does not run"
	phase_done
else
	printf '\n(no working docker or podman: the container image is not built here)\n'
fi
