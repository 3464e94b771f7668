#!/usr/bin/env python3
"""Verifies a message's DKIM signature with dkimpy, the key looked up from
the TXT record given on the command line instead of DNS.

    dkim_verify.py MESSAGE.eml RECORD_NAME RECORD_VALUE

Prints one JSON object: {"original": bool, "tampered": bool}, where
"tampered" is the same message with its Subject changed."""
import json
import sys

import dkim

path, record_name, record_value = sys.argv[1:4]
with open(path, "rb") as f:
    message = f.read()


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    if name.rstrip(".").lower() == record_name.rstrip(".").lower():
        return record_value.encode()
    return None


tampered = message.replace(b"Subject: Hello Readers", b"Subject: Hello Readerz", 1)
assert tampered != message, "no Subject to tamper with"
print(json.dumps({
    "original": bool(dkim.verify(message, dnsfunc=dnsfunc)),
    "tampered": bool(dkim.verify(tampered, dnsfunc=dnsfunc)),
}))
