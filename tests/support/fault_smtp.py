#!/usr/bin/env python3
"""An SMTP server on loopback that injects faults, for tidings' send tests.

The recipient's local part chooses the fault, on its first attempt only
(later attempts succeed), so retries can be checked:
  t421-*   421 on RCPT TO (service closing), then OK
  t451-*   451 on RCPT TO (greylisting), then OK
  p550-*   550 5.1.1 on RCPT TO, always (unknown user: a bounce)
  p554-*   554 on DATA, always (content rejected: failed, not a bounce)
  drop-*   the connection is dropped during DATA, without a reply
  hang-*   no reply to DATA for 30 s (the client must time out)
Every accepted message is appended to --log as one JSON line:
{"rcpt": [...], "message_id": "...", "to": "<To header>", "bytes": N,
 "at": <Unix time, s>, "peer": <client port: one per SMTP session>}.
--smtputf8 offers SMTPUTF8 (RFC 6531); without it the server does not.
Prints "READY <port>" when listening.
"""
import argparse
import asyncio
import json
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

seen = {}  # address -> attempts so far


def first_time(address):
    n = seen.get(address, 0)
    seen[address] = n + 1
    return n == 0


class Handler:
    def __init__(self, log):
        self.log = log

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("p550-"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("t421-") and first_time(address):
            return "421 4.3.2 Service shutting down, try again later"
        if local.startswith("t451-") and first_time(address):
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for address in envelope.rcpt_tos:
            local = address.split("@", 1)[0].lower()
            if local.startswith("p554-"):
                return "554 5.7.1 Message rejected as spam"
            if local.startswith("drop-") and first_time(address):
                server.transport.abort()
                return "421 dropped"  # never reaches the client
            if local.startswith("hang-") and first_time(address):
                await asyncio.sleep(30)
                return "451 too late"
        message_id = ""
        to = ""
        for line in envelope.content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                message_id = line.split(b":", 1)[1].strip().decode()
            if line.lower().startswith(b"to:"):
                to = line.split(b":", 1)[1].strip().decode("utf-8", "replace")
            if not line:
                break
        with open(self.log, "a") as f:
            f.write(json.dumps({"rcpt": envelope.rcpt_tos, "message_id": message_id,
                                "to": to, "bytes": len(envelope.content),
                                "at": time.time(), "peer": session.peer[1]}) + "\n")
        return "250 2.0.0 Queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--cert", help="PEM certificate: offer and require STARTTLS")
    p.add_argument("--key", help="PEM key for --cert")
    p.add_argument("--smtputf8", action="store_true", help="offer SMTPUTF8")
    args = p.parse_args()
    import socket
    port = args.port
    if port == 0:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    tls = {}
    if args.cert:
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        tls = {"tls_context": context, "require_starttls": True}
    controller = Controller(Handler(args.log), hostname="127.0.0.1", port=port,
                            ready_timeout=10, decode_data=False,
                            enable_SMTPUTF8=args.smtputf8, **tls)
    controller.start()
    print("READY %d" % port, flush=True)
    try:
        sys.stdin.read()  # runs until the test closes our stdin or kills us
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
