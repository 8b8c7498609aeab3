"""Reads a DSN (RFC 3464) from stdin with Python's own `email` package and prints what a
receiving program sees as JSON: the top-level fields, the parts, the delivery-status blocks and
the returned headers. Used by tests/notify_dsn.rs, so that the DSN is checked by a reader other
than the one that wrote it (and other than mail-parser)."""

import email
import email.policy
import json
import sys


def fields(message):
    return [[name, str(value)] for name, value in message.items()]


def main():
    raw = sys.stdin.buffer.read()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    out = {
        "defects": [type(d).__name__ for d in message.defects],
        "fields": fields(message),
        "content_type": message.get_content_type(),
        "report_type": message.get_param("report-type"),
        "parts": [],
    }
    for part in message.iter_parts():
        entry = {
            "content_type": part.get_content_type(),
            "defects": [type(d).__name__ for d in part.defects],
        }
        if part.get_content_type() == "message/delivery-status":
            # The package parses this type into one block of fields per message and recipient.
            entry["blocks"] = [fields(block) for block in part.get_payload()]
        elif part.get_content_type() == "message/global-headers":
            entry["headers"] = fields(part.get_payload()[0])
        elif part.get_content_type() == "text/rfc822-headers":
            text = part.get_content()
            entry["headers"] = fields(email.message_from_string(text, policy=email.policy.default))
            entry["text"] = text
        else:
            entry["text"] = part.get_content()
        out["parts"].append(entry)
    json.dump(out, sys.stdout)


main()
