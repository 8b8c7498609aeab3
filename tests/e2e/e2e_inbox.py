#!/usr/bin/env python3
"""The inbox's chaos API with Django, for tests/e2e/run.sh: a Recipient trigger at 100 % makes
Django's stock SMTP backend raise SMTPRecipientsRefused with the configured code, nothing is
captured, and once the triggers are reset the same send_mail goes through.

Environment: E2E_PORT (SMTP), E2E_HTTP (the inbox, http://127.0.0.1:PORT).
"""

import json
import smtplib
import sys
import urllib.request

from e2e_support import HOST, TIMEOUT, Checks, env, port, setup_django


def inbox(method, path, body=None):
    """One request to the inbox's API: its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(env("E2E_HTTP") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        return json.load(answer)


def scenario_django_chaos(c):
    setup_django(EMAIL_HOST=HOST, EMAIL_PORT=port())
    from django.core import mail

    set_ = inbox("PUT", "/api/v1/chaos", {"Recipient": {"ErrorCode": 451, "Probability": 100}})
    c.equal("chaos: the Recipient trigger is set", set_["Recipient"],
            {"ErrorCode": 451, "Probability": 100})
    try:
        mail.send_mail("Refused by chaos", "body", "app@example.com", ["alice@example.org"])
        c.check("django send_mail raises SMTPRecipientsRefused", False, "it returned")
    except smtplib.SMTPRecipientsRefused as refused:
        code, text = refused.recipients["alice@example.org"]
        c.equal("django send_mail raises SMTPRecipientsRefused with 451", code, 451)
        c.check("the reply has an enhanced status code", text.startswith(b"4.3.0 "), repr(text))
    c.equal("nothing is captured", inbox("GET", "/api/v1/messages")["total"], 0)

    inbox("PUT", "/api/v1/chaos", {})
    sent = mail.send_mail("After chaos", "body", "app@example.com", ["alice@example.org"])
    c.equal("after a reset, send_mail sends", sent, 1)
    listed = inbox("GET", "/api/v1/messages")
    c.equal("and the message is captured", [m["Subject"] for m in listed["messages"]],
            ["After chaos"])


def main():
    c = Checks()
    scenario_django_chaos(c)
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
