"""Django's stock SMTP EmailBackend, one send_mail per call (a new connection each, as in a view).

    python django_send.py CALLS ROUNDS NAME=PORT...

Warms each target up with 3 untimed calls, then sends CALLS messages to each, in ROUNDS blocks that
alternate between the targets (so drift on the machine hits them alike), and prints the latency
distribution per target.
"""
import statistics, sys, time
from django.conf import settings

settings.configure(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                   EMAIL_HOST="127.0.0.1", EMAIL_PORT=25, EMAIL_TIMEOUT=30,
                   DEFAULT_FROM_EMAIL="webmaster@example.com")
import django
django.setup()
from django.core import mail
from django.core.mail.utils import DNS_NAME

str(DNS_NAME)  # resolve the local host name once, before any timing
calls, rounds = int(sys.argv[1]), int(sys.argv[2])
targets = [(name, int(port)) for name, port in (t.split("=") for t in sys.argv[3:])]
times = {name: [] for name, _ in targets}

def send(port):
    settings.EMAIL_PORT = port
    start = time.perf_counter()
    sent = mail.send_mail("Password reset", "Follow this link to reset your password.\n" * 20,
                          None, ["user@example.org"])
    assert sent == 1
    return time.perf_counter() - start

for name, port in targets:  # warm-up, not timed
    for _ in range(3):
        send(port)
for r in range(rounds):
    for name, port in targets:
        times[name] += [send(port) for _ in range(calls // rounds)]
for name, _ in targets:
    t = sorted(x * 1000 for x in times[name])
    print("%-22s %4d calls: median %7.2f ms, p90 %7.2f ms, min %7.2f ms, max %7.2f ms, mean %7.2f ms" % (
        name, len(t), statistics.median(t), t[int(len(t) * 0.9) - 1], t[0], t[-1], statistics.mean(t)))
if "postfix" in times:  # the ratio the goals are stated in (issue 24: the file queue <= 0.8)
    postfix = statistics.median(times["postfix"])
    for name, _ in targets:
        if name != "postfix":
            print("%-22s median / Postfix's median = %.2f" % (name, statistics.median(times[name]) / postfix))
