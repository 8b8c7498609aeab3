"""Verifies webhook requests as a Standard Webhooks receiver does, with Python's standard
library only (an implementation independent of the Rust signer), and also with the published
`standardwebhooks` package when it is installed. Used by tests/notify_webhooks.rs.

Input on stdin: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]}.
Output: {"verified": N, "with_library": bool}; exits 1 at the first request that fails."""

import base64
import hashlib
import hmac
import json
import sys
import time

TOLERANCE = 5 * 60


def verify(secret, headers, body):
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if "." in msg_id:
        raise ValueError("a webhook-id must not contain '.'")
    if abs(time.time() - int(timestamp)) > TOLERANCE:
        raise ValueError("timestamp outside the tolerance")
    signed = f"{msg_id}.{timestamp}.{body}".encode()
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for versioned in headers["webhook-signature"].split(" "):
        version, _, signature = versioned.partition(",")
        if version == "v1" and hmac.compare_digest(expected, base64.b64decode(signature)):
            return
    raise ValueError("no matching v1 signature")


def main():
    given = json.load(sys.stdin)
    try:
        from standardwebhooks import Webhook
    except ImportError:
        Webhook = None
    for request in given["requests"]:
        verify(given["secret"], request["headers"], request["body"])
        if Webhook is not None:
            Webhook(given["secret"]).verify(request["body"], request["headers"])
    json.dump({"verified": len(given["requests"]), "with_library": Webhook is not None}, sys.stdout)


main()
