#!/usr/bin/env bash
# Bounce import benchmark (issue 12): generates MESSAGES RFC 3464 DSNs
# (default 100,000; each a Postfix-shaped multipart/report with a signed
# VERP tag, a delivery-status part and the original's headers) in a
# Maildir, then runs `tidings bounces import --dry-run --quiet` on it and
# prints messages/s and peak RSS. Then the same at a tenth of the size:
# the peak RSS must not grow with the mailbox (one message at a time).
#
#   bench/bounces.sh
#   MESSAGES=300000 bench/bounces.sh
#   TIDINGS_BIN=path bench/bounces.sh      # measure that binary, build none
#
# Then the same imports applied to a fresh SQLite store (each finding one
# transaction: the policy, the event, the bounce row): every address is
# new, so each is suppressed (a tenth counted as soft). Needs GNU time (/usr/bin/time, Debian package `time`) and
# python3 (to make the tags and files quickly). Target: >= 5,000
# messages/s, flat memory.
set -euo pipefail

MESSAGES=${MESSAGES:-100000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tidings-bounces-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SECRET=bench-secret-0123456789abcdef

if [ ! -x /usr/bin/time ]; then
	echo "bench/bounces.sh: /usr/bin/time is missing: apt-get install time" >&2
	exit 2
fi

if [ -n "${TIDINGS_BIN:-}" ]; then
	BIN=$(realpath "$TIDINGS_BIN")
else
	echo "== building the release binary"
	(cd "$ROOT" && cargo build --release --quiet)
	BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/tidings
fi

# Writes $2 DSNs into the Maildir $1 (tags made as src/bounces/verp.rs
# makes them, for campaign 1; a tenth soft, the rest hard).
generate() {
	python3 - "$1" "$2" "$SECRET" <<'EOF'
import base64, hashlib, hmac, os, sys
root, n, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
H = lambda k, m: hmac.new(k, m, hashlib.sha256).digest()
kmac, kpad = H(secret, b"tidings verp tag v1: mac"), H(secret, b"tidings verp tag v1: pad")
def tag(email):
    key = hashlib.sha256(email.encode()).digest()[:8]
    mac = H(kmac, b"verp1|\x01" + key)[:8]
    pad = H(kpad, b"verp1|" + mac)[:8]
    raw = bytes([1, 1]) + bytes(a ^ b for a, b in zip(key, pad)) + mac
    return base64.b32encode(raw).decode().rstrip("=").lower()
for d in ("new", "cur", "tmp"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
for i in range(n):
    rcpt = f"user{i}@example.org"
    t = tag(rcpt)
    soft = i % 10 == 0
    status, code = ("4.2.2", "452") if soft else ("5.1.1", "550")
    b = f"Q{i:08X}.1764655200/relay.example.net"
    msg = f"""Return-Path: <>
Delivered-To: bounces+{t}@news.example.org
Date: Wed,  2 Dec 2026 06:00:00 +0000 (UTC)
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces+{t}@news.example.org
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="{b}"
Message-Id: <20261202060000.Q{i:08X}@relay.example.net>

This is a MIME-encapsulated message.

--{b}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{rcpt}>: host mx.example.org[192.0.2.25] said: {code} {status}
    <{rcpt}>: Recipient address rejected (in reply to RCPT TO command)

--{b}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net
X-Postfix-Queue-ID: Q{i:08X}
X-Postfix-Sender: rfc822; bounces+{t}@news.example.org
Arrival-Date: Wed,  2 Dec 2026 05:59:58 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; {code} {status} <{rcpt}>: Recipient address rejected

--{b}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounces+{t}@news.example.org>
From: Test Letter <news@news.example.org>
To: <{rcpt}>
Subject: Issue 17
Message-ID: <{hashlib.md5(rcpt.encode()).hexdigest()}@news.example.org>
Date: Wed, 02 Dec 2026 05:59:57 +0000

--{b}--
"""
    with open(os.path.join(root, "new", f"{1764655200 + i}.M{i}P1.bench"), "w") as f:
        f.write(msg)
EOF
}

# Imports the Maildir $2 ($4: a database URL to apply to; none: a dry
# run); prints label, seconds, messages/s, peak RSS.
run() {
	local label=$1 maildir=$2 n=$3 db=${4:-}
	local out="$WORK/time.txt"
	local mode=(--dry-run)
	[ -z "$db" ] || mode=()
	# Only the variables the binary knows: it refuses unknown TIDINGS_*.
	env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
		TIDINGS_UNSUBSCRIBE_SECRET=$SECRET \
		TIDINGS_BOUNCES_ADDRESS=bounces@news.example.org \
		TIDINGS_NEWSLETTER_FROM="Bench <news@news.example.org>" \
		${db:+TIDINGS_DATABASE_URL=$db} \
		/usr/bin/time -v "$BIN" --config /dev/null bounces import "${mode[@]}" --quiet "$maildir" \
		2> "$out" >/dev/null || { cat "$out" >&2; exit 1; }
	grep -E '^[0-9]+ messages:' "$out" | sed 's/^/   /'
	local secs rss
	secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {
		n = split($2, t, ":"); s = 0;
		for (i = 1; i <= n; i++) s = s * 60 + t[i];
		print s }' "$out")
	rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$out")
	awk -v l="$label" -v r="$n" -v s="$secs" -v k="$rss" 'BEGIN {
		printf "   %-30s %8.2f s  %10.0f messages/s  peak RSS %6.1f MB\n", l, s, r / s, k / 1024 }'
}

SMALL=$((MESSAGES / 10))
echo "== generating $MESSAGES + $SMALL DSNs in Maildirs"
generate "$WORK/big" "$MESSAGES"
generate "$WORK/small" "$SMALL"
du -sh "$WORK/big" | awk '{print "   big Maildir " $1}'

echo "== bounces import --dry-run (parse, verify tags, decide; no store)"
# Warm the page cache first: the number is the parser's, not the disk's.
find "$WORK/big/new" -type f -exec cat {} + >/dev/null
run "$SMALL messages" "$WORK/small" "$SMALL"
run "$MESSAGES messages" "$WORK/big" "$MESSAGES"

echo "== bounces import (applied to a fresh SQLite store)"
run "$SMALL messages" "$WORK/small" "$SMALL" "sqlite:$WORK/small.db"
run "$MESSAGES messages" "$WORK/big" "$MESSAGES" "sqlite:$WORK/big.db"
