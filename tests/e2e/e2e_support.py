"""Helpers for the end-to-end scenarios in e2e.py: the one-line checks, the mail dir the server
writes in file mode, and an smtplib client that records what it sent on the wire."""

import email
import email.policy
import json
import os
import re
import shutil
import smtplib
import socket
import sys
from email.message import EmailMessage

HOST = "127.0.0.1"
TIMEOUT = 15
JSON_KEYS = {"id", "mail_from", "rcpt_to", "received_at", "remote_addr", "helo", "size"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
REPLY_ID = re.compile(rb"^2\.0\.0 OK (\S+)$")



# --- reporting -------------------------------------------------------------------------------


class Checks:
    """Prints one line per check."""

    def __init__(self):
        self.failed = 0

    def check(self, name, passed, why=""):
        if passed:
            print(f"ok - {name}", flush=True)
        else:
            self.failed += 1
            print(f"not ok - {name}: {why}", flush=True)
        return passed

    def equal(self, name, got, expected):
        return self.check(name, got == expected, f"got {got!r}, expected {expected!r}")

    def same_bytes(self, name, got, expected):
        return self.check(name, got == expected, bytes_diff(got, expected))


def bytes_diff(got, expected):
    """Says where two byte strings first differ, with some context."""
    if got is None:
        return "nothing stored"
    at = next(
        (i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
        min(len(got), len(expected)),
    )
    lo = max(0, at - 30)
    return (
        f"{len(got)} bytes stored, {len(expected)} expected; first difference at byte {at}: "
        f"stored {got[lo:at + 30]!r}, expected {expected[lo:at + 30]!r}"
    )


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"e2e.py: {name} is not set")
    return value


def port():
    return int(env("E2E_PORT"))


def setup_django(**email_settings):
    """Configures Django's stock SMTP EmailBackend with `email_settings` (EMAIL_HOST, ...) and the
    timeout, and starts Django."""
    from django.conf import settings

    settings.configure(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_TIMEOUT=TIMEOUT,
        **email_settings,
    )
    import django

    django.setup()


# --- the mail dir ----------------------------------------------------------------------------


class Stored:
    """One message the server wrote: its id, .eml bytes and .json record (None if missing)."""

    def __init__(self, ident, eml, record):
        self.id = ident
        self.eml = eml
        self.record = record


def take_stored(c, name, count):
    """Checks that exactly `count` complete messages are in the mail dir, moves them to the
    archive and returns them in id (arrival) order."""
    mail_dir, archive = env("E2E_MAIL_DIR"), env("E2E_ARCHIVE")
    names = sorted(os.listdir(mail_dir)) if os.path.isdir(mail_dir) else []
    emls = {n[: -len(".eml")] for n in names if n.endswith(".eml") and not n.startswith(".")}
    jsons = {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}
    stray = [n for n in names if n.startswith(".") or not n.endswith((".eml", ".json"))]
    c.check(
        f"{name}: {count} message(s) stored, each as .eml + .json",
        len(emls) == count and emls == jsons,
        f".eml files for {sorted(emls)}, .json files for {sorted(jsons)}",
    )
    c.check(f"{name}: no temporary or stray files in the mail dir", not stray, f"found {stray}")
    stored = []
    for ident in sorted(emls | jsons):
        eml_path = os.path.join(mail_dir, ident + ".eml")
        json_path = os.path.join(mail_dir, ident + ".json")
        eml = record = None
        if os.path.exists(eml_path):
            with open(eml_path, "rb") as f:
                eml = f.read()
            shutil.move(eml_path, os.path.join(archive, ident + ".eml"))
        if os.path.exists(json_path):
            with open(json_path, "rb") as f:
                text = f.read()
            shutil.move(json_path, os.path.join(archive, ident + ".json"))
            try:
                record = json.loads(text)
            except ValueError as err:
                c.check(f"{name}: {ident}.json is valid JSON", False, f"{err}: {text[:200]!r}")
        stored.append(Stored(ident, eml, record))
    return stored


def find(stored, ident):
    return next((s for s in stored if s.id == ident), None)


def check_record(c, name, s, mail_from, rcpt_to, helo=None):
    """Checks one message's .json against the envelope the client used."""
    r = s.record
    if not c.check(f"{name}: envelope record present", isinstance(r, dict), f"record is {r!r}"):
        return
    problems = []
    if set(r) != JSON_KEYS:
        problems.append(f"keys {sorted(r)} instead of {sorted(JSON_KEYS)}")
    if r.get("id") != s.id:
        problems.append(f"id {r.get('id')!r} but file name {s.id!r}")
    if r.get("mail_from") != mail_from:
        problems.append(f"mail_from {r.get('mail_from')!r}, expected {mail_from!r}")
    if r.get("rcpt_to") != rcpt_to:
        problems.append(f"rcpt_to {r.get('rcpt_to')!r}, expected {rcpt_to!r}")
    if s.eml is not None and r.get("size") != len(s.eml):
        problems.append(f"size {r.get('size')!r} but the .eml has {len(s.eml)} bytes")
    if not RFC3339_UTC.match(str(r.get("received_at"))):
        problems.append(f"received_at {r.get('received_at')!r} is not RFC 3339 UTC")
    if not str(r.get("remote_addr")).startswith(HOST + ":"):
        problems.append(f"remote_addr {r.get('remote_addr')!r} is not {HOST}:port")
    if helo is not None and r.get("helo") != helo:
        problems.append(f"helo {r.get('helo')!r}, expected {helo!r}")
    c.check(f"{name}: envelope record", not problems, "; ".join(problems))


# --- an smtplib client that remembers what it did --------------------------------------------


def bare(address):
    """The address smtplib puts between the angle brackets in MAIL/RCPT."""
    return smtplib.quoteaddr(address)[1:-1]


def wire_body(msg):
    """What smtplib's data() sends for `msg`, before dot-stuffing: the server must store this."""
    if isinstance(msg, str):
        msg = re.sub(r"(?:\r\n|\n|\r(?!\n))", "\r\n", msg).encode("ascii")
    return msg if msg.endswith(b"\r\n") else msg + b"\r\n"


class Sent:
    """One sendmail() call as it went over the wire, and the id from its 250 reply."""

    def __init__(self, mail_from, rcpt_to, body, reply_id, conn):
        self.mail_from = mail_from
        self.rcpt_to = rcpt_to
        self.body = body
        self.reply_id = reply_id
        self.conn = conn


SENT = []


class RecordingSMTP(smtplib.SMTP):
    """smtplib.SMTP that records replies, MAIL/RCPT addresses and each sendmail() message."""

    def __init__(self, *args, **kwargs):
        self.replies = []
        self.envelope = None
        super().__init__(*args, **kwargs)

    def getreply(self):
        code, text = super().getreply()
        self.replies.append((code, text))
        return code, text

    def mail(self, sender, options=()):
        self.envelope = (bare(sender) or None, [])
        return super().mail(sender, options)

    def rcpt(self, recip, options=()):
        code, text = super().rcpt(recip, options)
        if code in (250, 251) and self.envelope is not None:
            self.envelope[1].append(bare(recip))
        return code, text

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        self.replies = []
        refused = super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        SENT.append(Sent(*self.envelope, wire_body(msg), self.last_id(), self))
        return refused

    def last_id(self):
        """The id from the last `250 2.0.0 OK <id>` reply, or None."""
        for code, text in reversed(self.replies):
            m = REPLY_ID.match(text)
            if code == 250 and m:
                return m.group(1).decode()
        return None


def connect(helo=None):
    conn = RecordingSMTP(HOST, port(), local_hostname=helo, timeout=TIMEOUT)
    conn.ehlo()
    return conn


def check_sent(c, name, sent, stored, helo=None):
    """Checks that the message of one sendmail() call was stored byte for byte under the id of
    its 250 reply, with the envelope the client used."""
    s = find(stored, sent.reply_id)
    if not c.check(
        f"{name}: 250 reply names a stored message",
        sent.reply_id is not None and s is not None,
        f"reply id {sent.reply_id!r}, stored {[x.id for x in stored]}",
    ):
        return None
    check_record(c, name, s, sent.mail_from, sent.rcpt_to, helo)
    c.same_bytes(f"{name}: .eml is exactly the bytes sent (dot-unstuffed)", s.eml, sent.body)
    return s


def parse(eml):
    return email.message_from_bytes(eml, policy=email.policy.default)


def text_of(part):
    return part.get_content().replace("\r\n", "\n")
