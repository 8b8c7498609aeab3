#!/usr/bin/env python3
"""Client scenarios and checks for tests/e2e/run.sh.

Every check prints exactly one line, `ok - NAME` or `not ok - NAME: WHY`; run.sh counts them. A
scenario that crashes half-way is counted as a failure by run.sh from its exit status.

The server under test runs in file mode: each accepted message becomes `<id>.eml` + `<id>.json` in
E2E_MAIL_DIR, written before the server replies 250. So once a client has its 250 (or has exited
after QUIT), the files are there: no waiting. After checking them, a scenario moves them to
E2E_ARCHIVE, so the mail dir is empty again for the next one and every scenario sees only its own
messages (and any stray message makes the next count wrong, loudly).

Environment: E2E_PORT (the server's port), E2E_MAIL_DIR, E2E_ARCHIVE, E2E_MAX_SIZE (the
configured max_message_size), E2E_SPILL_DIR (the configured spill_dir).
"""


import argparse
import json
import os
import re
import smtplib
import socket
import sys
import time
from email.message import EmailMessage

from e2e_support import (
    Checks,
    HOST,
    REPLY_ID,
    RecordingSMTP,
    SENT,
    TIMEOUT,
    check_record,
    check_sent,
    connect,
    env,
    find,
    parse,
    port,
    setup_django,
    take_stored,
    text_of,
)


# --- scenarios ---------------------------------------------------------------------------------


RAW_MESSAGE = (
    b"From: Raw Sender <raw@example.com>\r\n"
    b"To: one@example.org, two@example.org\r\n"
    b"Subject: smtplib sendmail with exact bytes\r\n"
    b"Message-ID: <raw-1@e2e.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".a line starting with a dot (stuffed on the wire)\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"..\r\n"
    b"a dot at the end.\r\n"
    b" .a space, then a dot\r\n"
    b"8-bit text: h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93\r\n"
    b"a lone CR\rinside a line\r\n"
    b"trailing blanks   \r\n"
    b"\r\n"
    b"\r\n"
    + b"x" * 990
    + b"\r\n"
    b"last line\r\n"
)


def scenario_smtplib(c):
    # sendmail with exact bytes, several recipients, dot-stuffing and 8-bit data.
    conn = connect("e2e-smtplib")
    refused = conn.sendmail(
        "raw@example.com",
        ["one@example.org", "two@example.org"],
        RAW_MESSAGE,
        mail_options=["BODY=8BITMIME"],
    )
    c.equal("smtplib sendmail: all recipients accepted", refused, {})
    # send_message: recipients from To, Cc and Bcc; Bcc is not transmitted.
    msg = EmailMessage()
    msg["From"] = "Ann Sender <ann@example.com>"
    msg["To"] = "bob@example.org, Carl <carl@example.org>"
    msg["Cc"] = "dee@example.net"
    msg["Bcc"] = "eve@example.net"
    msg["Subject"] = "send_message: Gr\u00fc\u00dfe"
    msg.set_content("Hello from send_message.\n.a dotted line\n")
    msg.add_attachment(bytes(range(256)), maintype="application", subtype="octet-stream",
                       filename="bytes.bin")
    conn.send_message(msg)
    conn.quit()
    raw_sent, message_sent = SENT[-2:]
    stored = take_stored(c, "smtplib", 2)
    check_sent(c, "smtplib sendmail", raw_sent, stored, helo="e2e-smtplib")
    c.equal("smtplib sendmail: envelope as given", (raw_sent.mail_from, raw_sent.rcpt_to),
            ("raw@example.com", ["one@example.org", "two@example.org"]))
    s = check_sent(c, "smtplib send_message", message_sent, stored, helo="e2e-smtplib")
    if s:
        c.equal(
            "smtplib send_message: rcpt_to has To, Cc and Bcc",
            sorted(s.record["rcpt_to"]),
            ["bob@example.org", "carl@example.org", "dee@example.net", "eve@example.net"],
        )
        c.equal("smtplib send_message: mail_from from the From header",
                s.record["mail_from"], "ann@example.com")
        parsed = parse(s.eml)
        c.check("smtplib send_message: no Bcc header stored", parsed["Bcc"] is None,
                f"Bcc: {parsed['Bcc']}")
        attachments = list(parsed.iter_attachments())
        c.check(
            "smtplib send_message: attachment decodes to the bytes sent",
            len(attachments) == 1 and attachments[0].get_content() == bytes(range(256)),
            f"{len(attachments)} attachment(s)",
        )

    # SMTPUTF8: non-ASCII addresses in the envelope and the headers.
    sender, rcpt = "j\u00f6rg@ex\u00e4mple.org", "\u00f1and\u00fa@\u4f8b\u3048.jp"
    utf8 = (
        f"From: J\u00f6rg <{sender}>\r\nTo: {rcpt}\r\nSubject: SMTPUTF8 \u2713\r\n"
        f"\r\nGr\u00fc\u00dfe aus K\u00f6ln\r\n.dot\r\n"
    ).encode()
    conn = connect("e2e-smtplib")
    refused = conn.sendmail(sender, [rcpt, "plain@example.org"], utf8,
                            mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    c.equal("smtplib SMTPUTF8: all recipients accepted", refused, {})
    conn.quit()
    stored = take_stored(c, "smtplib SMTPUTF8", 1)
    check_sent(c, "smtplib SMTPUTF8", SENT[-1], stored, helo="e2e-smtplib")
    if stored and stored[0].record:
        c.equal("smtplib SMTPUTF8: UTF-8 addresses kept in the record",
                (stored[0].record["mail_from"], stored[0].record["rcpt_to"]),
                (sender, [rcpt, "plain@example.org"]))


def sized_message(size, subject):
    """A CRLF message of exactly `size` bytes (after unstuffing), many lines starting with '.'."""
    head = f"Subject: {subject}\r\n\r\n".encode()
    lines, left, n = [head], size - len(head), 0
    while left > 80:
        line = (b".dotted %07d " % n if n % 3 == 0 else b"line %07d " % n).ljust(76, b"-")
        lines.append(line + b"\r\n")
        left -= 78
        n += 1
    lines.append(b"z" * (left - 2) + b"\r\n")
    body = b"".join(lines)
    assert len(body) == size
    return body


def spill_files():
    spill = os.environ.get("E2E_SPILL_DIR")
    return sorted(os.listdir(spill)) if spill and os.path.isdir(spill) else []


def scenario_size(c):
    limit = int(env("E2E_MAX_SIZE"))
    conn = connect("e2e-size")
    exact = sized_message(limit, "exactly max_message_size")
    c.equal("size: a message of exactly max_message_size is accepted",
            conn.sendmail("big@example.com", ["r@example.org"], exact), {})
    exact_sent = SENT[-1]
    # smtplib declares SIZE= in MAIL when the server advertises SIZE: refused at MAIL.
    try:
        conn.sendmail("big@example.com", ["r@example.org"], sized_message(limit + 1, "too big"))
        c.check("size: MAIL with SIZE over the limit gets 552", False, "the message was accepted")
    except smtplib.SMTPSenderRefused as err:
        c.equal("size: MAIL with SIZE over the limit gets 552", err.smtp_code, 552)
    # Without SIZE= the body is read to its end and then refused.
    c.equal("size: MAIL without SIZE is accepted", conn.mail("big@example.com")[0], 250)
    c.equal("size: RCPT is accepted", conn.rcpt("r@example.org")[0], 250)
    code, text = conn.data(sized_message(limit + 1, "one byte too big"))
    c.check("size: DATA one byte over the limit gets 552 5.3.4",
            code == 552 and text.startswith(b"5.3.4"), f"got {code} {text!r}")
    c.equal("size: MAIL after the 552 (session still usable)", conn.mail("a@example.com")[0], 250)
    c.equal("size: RCPT after the 552", conn.rcpt("b@example.org")[0], 250)
    code, text = conn.data(sized_message(limit * 2, "twice the limit"))
    c.check("size: DATA twice the limit gets 552", code == 552, f"got {code} {text!r}")
    c.equal("size: NOOP after the 552", conn.noop()[0], 250)
    small = b"Subject: after the 552\r\n\r\nstill works\r\n"
    c.equal("size: a small message after the 552s is accepted",
            conn.sendmail("small@example.com", ["r@example.org"], small), {})
    small_sent = SENT[-1]
    conn.quit()
    stored = take_stored(c, "size", 2)
    check_sent(c, "size: exact-limit message", exact_sent, stored, helo="e2e-size")
    check_sent(c, "size: message after the 552s", small_sent, stored, helo="e2e-size")
    c.equal("size: spilled bodies are removed", spill_files(), [])


def read_reply(f):
    """Reads one (possibly multi-line) SMTP reply: (code, [texts])."""
    texts = []
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError(f"connection closed; reply so far {texts!r}")
        texts.append(line[4:].rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return int(line[:3]), texts


def scenario_chunking(c):
    """BDAT (CHUNKING) over a raw socket, pipelined: no client above uses it."""
    limit = int(env("E2E_MAX_SIZE"))
    chunk1 = b"Subject: BDAT\r\n\r\n.a dot that is content, not stuffing\r\n"
    chunk2 = b"..\r\n.\r\nno terminator in BDAT\r\nno final CRLF"
    with socket.create_connection((HOST, port()), timeout=TIMEOUT) as sock:
        f = sock.makefile("rb")
        c.equal("chunking: greeting", read_reply(f)[0], 220)
        sock.sendall(b"EHLO e2e-bdat\r\n")
        code, texts = read_reply(f)
        c.check("chunking: CHUNKING advertised", code == 250 and b"CHUNKING" in texts,
                f"{code} {texts}")
        sock.sendall(
            b"MAIL FROM:<chunky@example.com>\r\nRCPT TO:<r@example.org>\r\n"
            + b"BDAT %d\r\n" % len(chunk1) + chunk1
            + b"BDAT %d LAST\r\n" % len(chunk2) + chunk2
        )
        replies = [read_reply(f) for _ in range(4)]
        codes = [code for code, _ in replies]
        c.equal("chunking: pipelined MAIL, RCPT, BDAT, BDAT LAST all get 250", codes,
                [250] * 4)
        m = REPLY_ID.match(replies[3][1][0])
        reply_id = m.group(1).decode() if m else None
        over = limit + 1
        sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
                     + b"BDAT %d LAST\r\n" % over + b"y" * over + b"NOOP\r\n")
        codes = [read_reply(f)[0] for _ in range(4)]
        c.equal("chunking: BDAT over the limit gets 552, then NOOP 250", codes,
                [250, 250, 552, 250])
        sock.sendall(b"QUIT\r\n")
        c.equal("chunking: QUIT", read_reply(f)[0], 221)
    stored = take_stored(c, "chunking", 1)
    s = find(stored, reply_id)
    if c.check("chunking: 250 reply names the stored message", s is not None,
               f"reply {replies[3]!r}"):
        check_record(c, "chunking", s, "chunky@example.com", ["r@example.org"], "e2e-bdat")
        c.same_bytes("chunking: .eml is the chunks, byte for byte", s.eml, chunk1 + chunk2)


def scenario_django(c):
    setup_django(
        EMAIL_HOST=HOST,
        EMAIL_PORT=port(),
        EMAIL_USE_TLS=False,
        EMAIL_USE_SSL=False,
        DEFAULT_FROM_EMAIL="webmaster@example.com",
    )
    from django.core import mail
    from django.core.mail.utils import DNS_NAME

    # The stock backend, over an smtplib.SMTP that only records what went over the wire.
    smtplib.SMTP = RecordingSMTP
    helo = str(DNS_NAME)

    sent = mail.send_mail(
        "Django send_mail",
        "Plain body from send_mail.\n.a line starting with a dot\n",
        "noreply@example.com",
        ["alice@example.org"],
    )
    c.equal("django send_mail: returns 1", sent, 1)
    stored = take_stored(c, "django send_mail", 1)
    s = check_sent(c, "django send_mail", SENT[-1], stored, helo=helo)
    if s:
        c.equal("django send_mail: envelope", (s.record["mail_from"], s.record["rcpt_to"]),
                ("noreply@example.com", ["alice@example.org"]))
        parsed = parse(s.eml)
        c.equal("django send_mail: subject and body", (parsed["Subject"], text_of(parsed)),
                ("Django send_mail", "Plain body from send_mail.\n.a line starting with a dot\n"))

    subject = "Gr\u00fc\u00dfe \u2014 \u00e9t\u00e9 \u2713 \u65e5\u672c\u8a9e"
    body = "H\u00e9llo w\u00f6rld, \u0437\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435.\n.dot\nbye\n"
    csv = "name,city\nJ\u00f6rg,K\u00f6ln\n"
    blob = bytes(range(256)) * 4
    msg = mail.EmailMessage(
        subject,
        body,
        "\u00dcn\u00efc\u00f6de Sender <sender@example.com>",
        to=["To Person <to@example.org>"],
        cc=["cc@example.org"],
        bcc=["hidden1@example.net", "Hidden Two <hidden2@example.net>"],
        reply_to=["replies@example.com"],
        headers={"X-E2E": "django"},
    )
    msg.attach("report.csv", csv, "text/csv")
    msg.attach("blob.bin", blob, "application/octet-stream")
    c.equal("django EmailMessage: send returns 1", msg.send(), 1)
    stored = take_stored(c, "django EmailMessage", 1)
    s = check_sent(c, "django EmailMessage", SENT[-1], stored, helo=helo)
    if s:
        c.equal(
            "django EmailMessage: rcpt_to is to + cc + bcc",
            s.record["rcpt_to"],
            ["to@example.org", "cc@example.org", "hidden1@example.net", "hidden2@example.net"],
        )
        c.equal("django EmailMessage: mail_from", s.record["mail_from"], "sender@example.com")
        parsed = parse(s.eml)
        c.check("django EmailMessage: no Bcc header stored", parsed["Bcc"] is None,
                f"Bcc: {parsed['Bcc']}")
        c.equal("django EmailMessage: Cc header", str(parsed["Cc"]), "cc@example.org")
        c.equal("django EmailMessage: non-ASCII subject decodes", str(parsed["Subject"]),
                subject)
        c.equal("django EmailMessage: non-ASCII body decodes",
                text_of(parsed.get_body(("plain",))), body)
        got = {
            a.get_filename(): a.get_content() for a in parsed.iter_attachments()
        }
        c.check(
            "django EmailMessage: attachments decode to what was attached",
            set(got) == {"report.csv", "blob.bin"}
            and got["blob.bin"] == blob
            and got["report.csv"].replace("\r\n", "\n") == csv,
            f"attachments {sorted(got)}",
        )

    messages = [
        mail.EmailMessage("batch 1", "first\n", "batch@example.com", ["a1@example.org"]),
        mail.EmailMultiAlternatives("batch 2", "second\n", "batch@example.com",
                                    ["a2@example.org"], cc=["c2@example.org"]),
        mail.EmailMessage("batch 3 \u2713", "third \u00e9 " + "\u00e9" * 600 + "\n",
                          "batch@example.com", ["a3@example.org"], bcc=["b3@example.org"]),
    ]
    messages[1].attach_alternative("<p>second</p>", "text/html")
    before = len(SENT)
    with mail.get_connection() as connection:
        c.equal("django send_messages: 3 sent", connection.send_messages(messages), 3)
    batch = SENT[before:]
    c.check("django send_messages: one SMTP connection for all",
            len(batch) == 3 and len({id(x.conn) for x in batch}) == 1,
            f"{len(batch)} sendmail calls over {len({id(x.conn) for x in batch})} connections")
    stored = take_stored(c, "django send_messages", 3)
    found = [check_sent(c, f"django send_messages #{i + 1}", x, stored, helo=helo)
             for i, x in enumerate(batch)]
    if all(found):
        c.equal("django send_messages: envelopes",
                [(s.record["mail_from"], s.record["rcpt_to"]) for s in found],
                [("batch@example.com", ["a1@example.org"]),
                 ("batch@example.com", ["a2@example.org", "c2@example.org"]),
                 ("batch@example.com", ["a3@example.org", "b3@example.org"])])
        addrs = {s.record["remote_addr"] for s in found}
        c.check("django send_messages: the server saw one connection (same remote_addr)",
                len(addrs) == 1, f"remote addresses {sorted(addrs)}")
        c.equal("django send_messages: subjects",
                [str(parse(s.eml)["Subject"]) for s in found],
                ["batch 1", "batch 2", "batch 3 \u2713"])


def transcript_sent(transcript, received, sent):
    """The message body a client sent, reconstructed from its transcript: the lines marked `sent`
    between the 354 reply (marked `received`) and the lone dot, with dot-stuffing undone and CRLF
    line ends. swaks marks lines `<-  ` and ` -> `, msmtp --debug `<-- ` and `--> `."""
    lines = transcript.split(b"\n")
    is_354 = re.compile(re.escape(received) + rb"\s*354 ")
    start = next((i for i, line in enumerate(lines) if is_354.match(line)), None)
    if start is None:
        return None
    out = []
    for line in lines[start + 1:]:
        if line.rstrip(b"\r") == sent + b".":
            return b"".join(out)
        if not line.startswith(sent.rstrip(b" ")):
            return None
        content = line[len(sent):].rstrip(b"\r")
        if content.startswith(b"."):
            content = content[1:]
        out.append(content + b"\r\n")
    return None


def swaks_sent(transcript):
    """The message body swaks sent, from its transcript."""
    return transcript_sent(transcript, b"<-", b" -> ")


def msmtp_sent(transcript):
    """The message msmtp sent (its Date and Message-ID headers included), from its --debug
    transcript."""
    return transcript_sent(transcript, b"<--", b"--> ")


def curl_sent(path, crlf):
    """What curl sends for --upload-file PATH (before its dot-stuffing): the file as is, LF turned
    into CRLF with --crlf, and a CRLF added if the data does not end with one."""
    with open(path, "rb") as f:
        data = f.read()
    if crlf:
        data = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def scenario_django_secure(c):
    """Django's stock backend with a user and password, over STARTTLS (EMAIL_USE_TLS) and implicit
    TLS (EMAIL_USE_SSL); the certificate is trusted through SSL_CERT_FILE."""
    setup_django(
        EMAIL_HOST="localhost",
        EMAIL_HOST_USER=env("E2E_USER"),
        EMAIL_HOST_PASSWORD=env("E2E_PASSWORD"),
    )
    from django.core.mail import get_connection, send_mail

    for name, tls, ssl_, port_var in (
        ("django EMAIL_USE_TLS", True, False, "E2E_PORT"),
        ("django EMAIL_USE_SSL", False, True, "E2E_TLS_PORT"),
    ):
        connection = get_connection(port=int(env(port_var)), use_tls=tls, use_ssl=ssl_)
        try:
            sent = send_mail(name, "over TLS with AUTH\n", "app@example.com",
                             ["alice@example.org"], connection=connection)
        except Exception as err:  # the check reports any client-side failure
            c.check(f"{name}: send_mail succeeds", False, repr(err))
            continue
        c.equal(f"{name}: send_mail returns 1", sent, 1)
        stored = take_stored(c, name, 1)
        if stored and stored[0].record:
            c.equal(f"{name}: envelope sender", stored[0].record.get("mail_from"),
                    "app@example.com")

    # A sender outside the user's `senders` is refused with 550 5.7.1.
    connection = get_connection(port=port(), use_tls=True)
    try:
        send_mail("refused", "x\n", "ceo@elsewhere.test", ["alice@example.org"],
                  connection=connection)
        c.check("django: a sender the user may not use is refused", False, "it was accepted")
    except smtplib.SMTPSenderRefused as err:
        c.equal("django: a sender the user may not use is refused", err.smtp_code, 550)
    take_stored(c, "django refused sender", 0)


def scenario_count(c, args):
    """Checks that a client left `--count` messages in the mail dir (and archives them)."""
    take_stored(c, args.name, args.count)


def scenario_verify(c, args):
    """Checks what a command-line client (swaks, curl) left in the mail dir."""
    with open(args.transcript, "rb") as f:
        transcript = f.read()
    # Replies are marked `<-  ` by swaks, `< ` by curl -v and `<-- ` by msmtp --debug.
    ids = re.findall(rb"^<-{0,2}\s+250 2\.0\.0 OK (\S+)\s*$", transcript, re.M)
    stored = take_stored(c, args.name, 1)
    c.check(f"{args.name}: one 250 2.0.0 OK <id> reply in the transcript", len(ids) == 1,
            f"found {ids}")
    s = find(stored, ids[0].decode()) if ids else None
    if not c.check(f"{args.name}: 250 reply names the stored message", s is not None,
                   f"reply ids {ids}, stored {[x.id for x in stored]}"):
        return
    if args.pipelined:
        lines = transcript.split(b"\n")
        data = next((i for i, x in enumerate(lines) if x.startswith(b" -> DATA")), None)
        mail_ok = next((i for i, x in enumerate(lines) if re.match(rb"^<-\s+250 2\.1\.0", x)),
                       None)
        c.check(f"{args.name}: MAIL, RCPT and DATA sent before the first reply (pipelined)",
                data is not None and mail_ok is not None and data < mail_ok,
                f"DATA at transcript line {data}, MAIL's 250 at line {mail_ok}")
    mail_from = args.mail_from or None
    check_record(c, args.name, s, mail_from, args.rcpt, args.helo)
    kind, _, path = args.expect.partition(":")
    if kind in ("swaks", "msmtp"):
        expected = swaks_sent(transcript) if kind == "swaks" else msmtp_sent(transcript)
        if not c.check(f"{args.name}: transcript shows the DATA sent", expected is not None,
                       "no 354 ... lone-dot section in the transcript"):
            return
    elif kind in ("curl", "curl-crlf"):
        expected = curl_sent(path, kind == "curl-crlf")
    else:
        sys.exit(f"e2e.py: unknown --expect {args.expect}")
    c.same_bytes(f"{args.name}: .eml is exactly the bytes sent", s.eml, expected)
    for text in args.contains:
        c.check(f"{args.name}: .eml contains {text!r}", text.encode() in s.eml,
                f"{s.eml[:300]!r}...")


def scenario_console(c, args):
    """Console mode: the message goes to stdout, the logs to stderr, and nothing crosses."""
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    c.equal(f"console {args.format}: stdout is empty before any mail", read(args.stdout), b"")
    marker = "body-marker-" + os.urandom(8).hex()
    raw = (
        "From: Console <console@example.com>\r\nTo: dev@example.org\r\n"
        f"Subject: console {args.format} check\r\n\r\nHello console.\r\n{marker}\r\n"
    ).encode()
    conn = connect("e2e-console")
    conn.sendmail("console@example.com", ["dev@example.org", "ops@example.org"], raw)
    conn.quit()
    ident = SENT[-1].reply_id
    c.check(f"console {args.format}: 250 2.0.0 OK <id>", ident is not None, f"{conn.replies}")
    # Console mode prints after the 250 (docs/design.md: the console backlog): wait, bounded,
    # until the message's block is complete on stdout (its id ends the raw block's header and
    # the summary's first line, and the marker is the body's last line).
    deadline = time.monotonic() + 15
    out = read(args.stdout)
    while not (ident and ident.encode() in out and marker.encode() in out):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        out = read(args.stdout)
    err = read(args.stderr)
    name = f"console {args.format}"
    if args.format == "raw":
        c.check(f"{name}: stdout has the exact message bytes", raw in out, f"stdout {out!r}")
    else:
        for text in (marker, "Hello console.", f"console {args.format} check",
                     "console@example.com", "dev@example.org", "ops@example.org"):
            c.check(f"{name}: stdout shows {text!r}", text.encode() in out, f"stdout {out!r}")
    c.check(f"{name}: stdout names the message id", ident and ident.encode() in out,
            f"stdout {out!r}")
    leaked = [w for w in (b"listening on", b"INFO", b'"level"', b"outcome") if w in out]
    c.check(f"{name}: no log output on stdout", not leaked, f"found {leaked} in {out!r}")
    c.check(f"{name}: startup log on stderr", b"listening on" in err, f"stderr {err!r}")
    c.check(f"{name}: a log line for the message on stderr", ident and ident.encode() in err,
            f"stderr {err!r}")
    c.check(f"{name}: message content not on stderr", marker.encode() not in err,
            f"stderr {err!r}")
    if args.log_format == "json":
        bad = []
        for line in err.splitlines():
            try:
                if not isinstance(json.loads(line), dict):
                    bad.append(line)
            except ValueError:
                bad.append(line)
        c.check(f"{name}: every stderr line is a JSON log record", not bad, f"not JSON: {bad}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True)
    for name in ("smtplib", "size", "chunking", "django", "django_secure"):
        sub.add_parser(name)
    count = sub.add_parser("count", help="check how many messages a client left in the mail dir")
    count.add_argument("--name", required=True)
    count.add_argument("--count", type=int, required=True)
    verify = sub.add_parser("verify", help="check what swaks, msmtp or curl left in the mail dir")
    verify.add_argument("--name", required=True)
    verify.add_argument("--transcript", required=True, help="the client's output")
    verify.add_argument("--mail-from", required=True, help="'' for the null sender")
    verify.add_argument("--rcpt", action="append", required=True)
    verify.add_argument("--helo")
    verify.add_argument("--expect", required=True,
                        help="swaks or msmtp (from the transcript), curl:FILE or curl-crlf:FILE")
    verify.add_argument("--contains", action="append", default=[])
    verify.add_argument("--pipelined", action="store_true",
                        help="check that MAIL, RCPT and DATA went out before their replies")
    console = sub.add_parser("console")
    console.add_argument("--stdout", required=True)
    console.add_argument("--stderr", required=True)
    console.add_argument("--format", choices=("raw", "summary"), required=True)
    console.add_argument("--log-format", choices=("text", "json"), required=True)
    args = parser.parse_args()

    c = Checks()
    if args.scenario == "verify":
        scenario_verify(c, args)
    elif args.scenario == "count":
        scenario_count(c, args)
    elif args.scenario == "console":
        scenario_console(c, args)
    else:
        globals()["scenario_" + args.scenario](c)
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
