#!/usr/bin/env python3
"""Parses .eml files with Python's email package (the stdlib's strict,
modern policy) and prints what tidings' tests assert on, as JSON."""
import email
import email.policy
import json
import sys



def text(value):
    """Raw UTF-8 in a header (RFC 6532) comes back as surrogate escapes:
    decode those bytes as the UTF-8 they are."""
    if value is None:
        return None
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


out = {}
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    parts = [p for p in msg.walk() if not p.is_multipart()]
    out[path] = {
        "defects": [repr(d) for d in msg.defects] + [repr(d) for p in parts for d in p.defects],
        # Defects the parser found inside header values (raw UTF-8 in an
        # address shows here, not in msg.defects).
        "header_defects": sorted("%s: %s" % (k, type(d).__name__)
                                 for k, v in msg.items() for d in getattr(v, "defects", ())),
        "from_address": text(msg["From"].addresses[0].addr_spec) if msg["From"] else None,
        "content_type": msg.get_content_type(),
        "parts": [p.get_content_type() for p in parts],
        "headers": sorted(set(k.lower() for k in msg.keys())),
        "to": text(msg["To"]),
        "to_name": text(msg["To"].addresses[0].display_name) if msg["To"] else None,
        "to_address": text(msg["To"].addresses[0].addr_spec) if msg["To"] else None,
        "subject": str(msg["Subject"]),
        "list_unsubscribe": str(msg["List-Unsubscribe"]),
        "list_unsubscribe_post": str(msg["List-Unsubscribe-Post"]),
        "list_id": str(msg["List-Id"]),
        "message_id": str(msg["Message-ID"]),
        "html": parts[1].get_content() if len(parts) > 1 else "",
        "text": parts[0].get_content() if parts else "",
    }
json.dump(out, sys.stdout)
