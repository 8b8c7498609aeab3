"""Smoke tests of a built artefact, as a user meets it: one message from a real SMTP client
(Python's smtplib, or Django's stock SMTP backend) reaches the server and is printed.

    python3 packaging/smoke.py send --port PORT --subject S [--client django] [--size BYTES]
    python3 packaging/smoke.py serve [--client django] [--stop term|kill] [--expect-log TEXT] -- COMMAND...

`serve` runs `COMMAND --version`, then `COMMAND serve` in console mode on a free loopback port
(in an empty directory, so no config.toml is read), sends one message, waits until the server
prints its subject, and stops it: SIGTERM (Ctrl-Break on Windows) must end it with status 0;
`--stop kill` for a server under wine, whose console events wine does not deliver.

Used by packaging/smoke.sh and by the release workflow's macOS and Windows jobs. Every wait has
a deadline: a server that never answers fails the test instead of hanging it.
"""

import argparse
import os
import queue
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage

DEADLINE = 60.0


def send(port, subject, client, size=0):
    body = "Sent by packaging/smoke.py.\n" + "x" * 76 * (size // 77) + "\n"
    if client == "django":
        from django.conf import settings

        if not settings.configured:
            settings.configure(
                EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                EMAIL_HOST="127.0.0.1",
                EMAIL_PORT=port,
            )
        from django.core.mail import send_mail

        sent = send_mail(subject, body, "app@example.com", ["user@example.com"])
        assert sent == 1, f"Django sent {sent} messages"
    else:
        message = EmailMessage()
        message["From"] = "app@example.com"
        message["To"] = "user@example.com"
        message["Subject"] = subject
        message.set_content(body)
        with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as smtp:
            refused = smtp.send_message(message)
            assert not refused, refused
    print(f"smoke: sent {subject!r} ({client}) to 127.0.0.1:{port}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lines_of(stream, name, into):
    for line in iter(stream.readline, ""):
        into.put((name, line.rstrip("\r\n")))
    into.put((name, None))


def wait_for(lines, name, text, seen):
    """Reads `lines` until stream `name` shows `text`; fails after DEADLINE."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            stream, line = lines.get(timeout=end - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            continue
        seen.append(f"{stream}: {line}")
        if stream == name and text in line:
            return line
    sys.exit("smoke: FAILED: never saw %r on %s; output:\n%s" % (text, name, "\n".join(seen)))


def serve(command, client, stop, expect_log):
    version = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=DEADLINE)
    print(f"smoke: {version.stdout.strip()}", flush=True)
    assert version.returncode == 0 and version.stdout.startswith("smtp2gmail "), version
    port = free_port()
    windows = os.name == "nt"
    with tempfile.TemporaryDirectory() as empty:
        server = subprocess.Popen(
            command + ["serve", "--listen", f"127.0.0.1:{port}", "--http-listen", ""],
            cwd=empty,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"},
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if windows else 0,
        )
        lines, seen = queue.Queue(), []
        for name, stream in (("stdout", server.stdout), ("stderr", server.stderr)):
            threading.Thread(target=lines_of, args=(stream, name, lines), daemon=True).start()
        try:
            print("smoke: " + wait_for(lines, "stderr", "listening on", seen), flush=True)
            if expect_log:
                print("smoke: " + wait_for(lines, "stderr", expect_log, seen), flush=True)
            subject = f"smoke test {os.getpid()}"
            send(port, subject, client)
            wait_for(lines, "stdout", subject, seen)
            print("smoke: the server printed the message", flush=True)
        finally:
            if stop == "kill" or server.poll() is not None:
                server.kill()
            elif windows:
                server.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                server.send_signal(signal.SIGTERM)
            status = server.wait(timeout=DEADLINE)
        if stop == "term" and status != 0:
            sys.exit(f"smoke: FAILED: the server exited with {status} on the stop signal")
    print(f"smoke: passed ({client}; stopped with {stop}, exit status {status})", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("send")
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--subject", required=True)
    one.add_argument("--size", type=int, default=0, help="body bytes (spills past 1 MiB)")
    run = sub.add_parser("serve")
    run.add_argument("--stop", choices=["term", "kill"], default="term")
    run.add_argument("--expect-log", help="a line the server must log at start")
    run.add_argument("command", nargs="+")
    for p in (one, run):
        p.add_argument("--client", choices=["smtplib", "django"], default="smtplib")
    args = parser.parse_args()
    if args.what == "send":
        send(args.port, args.subject, args.client, args.size)
    else:
        serve(args.command, args.client, args.stop, args.expect_log)


if __name__ == "__main__":
    main()
