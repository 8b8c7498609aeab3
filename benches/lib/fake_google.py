"""The fake Google of the queue benchmarks (benches/queue-bench.sh, benches/pg-queue-bench.sh).

    python3 fake_google.py PORT LATENCY_MS

POST /token answers an access token (obviously fake); POST .../messages/send reads the upload
(streamed, not kept), waits LATENCY_MS and answers {"id": ...}. GET /stats counts uploads and the
most in flight at once. POST /gate/close makes uploads wait (a backlog builds up in the queue) until
POST /gate/open, which also restarts the arrival record that GET /rate summarises: how many uploads
arrived since (those that waited at the gate are counted in /stats "held" instead), over how long,
and the most that arrived within any one and any ten seconds (the send rate the queue kept; the
time from claim to arrival varies by some milliseconds, so one second can see a send more).
"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, latency = int(sys.argv[1]), float(sys.argv[2]) / 1000
lock = threading.Lock()
stats = {"uploads": 0, "bytes": 0, "in_flight": 0, "most_in_flight": 0, "tokens": 0, "held": 0}
gate = threading.Event()
gate.set()
opened_at = time.monotonic()
arrivals = []  # monotonic times at which uploads arrived since the gate last opened
finished = []  # ... and at which they were answered


def most_within(times, window):
    """The most arrivals within any `window` seconds."""
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def rate_summary():
    times = sorted(arrivals)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "arrived": len(times),
        "first_after_open_s": times[0] - opened_at if times else None,
        "span_s": span,
        "rate": (len(times) - 1) / span if span else None,
        "most_in_one_second": most_within(times, 1.0),
        "most_in_ten_seconds": most_within(times, 10.0),
        "last_answer_after_open_s": max(finished) - opened_at if finished else None,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body_size(self):
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                while size:
                    piece = self.rfile.read(min(size, 1 << 20))
                    if not piece:
                        return n
                    size -= len(piece)
                    n += len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", 0))
            while left:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    break
                left -= len(piece)
                n += len(piece)
        return n

    def do_GET(self):
        with lock:
            self.answer(200, rate_summary() if self.path == "/rate" else dict(stats))

    def do_POST(self):
        global opened_at
        if self.path.startswith("/token"):
            self.body_size()
            with lock:
                stats["tokens"] += 1
            self.answer(200, {"access_token": "fake-access-1", "expires_in": 3599,
                              "token_type": "Bearer",
                              "scope": "https://www.googleapis.com/auth/gmail.send"})
            return
        if self.path.startswith("/gate/"):
            self.body_size()
            with lock:
                if self.path == "/gate/open":
                    arrivals.clear()
                    finished.clear()
                    opened_at = time.monotonic()
                    gate.set()
                else:
                    gate.clear()
            self.answer(200, {"gate": self.path[len("/gate/"):]})
            return
        with lock:
            stats["in_flight"] += 1
            stats["most_in_flight"] = max(stats["most_in_flight"], stats["in_flight"])
        n = self.body_size()
        with lock:
            if gate.is_set():  # uploads held at a closed gate were started before it opened
                arrivals.append(time.monotonic())
            else:
                stats["held"] += 1
        gate.wait()
        time.sleep(latency)
        with lock:
            stats["in_flight"] -= 1
            stats["uploads"] += 1
            stats["bytes"] += n
            uploads = stats["uploads"]
            finished.append(time.monotonic())
        # An upload whose client gave up meanwhile (timed out at the closed gate) still counts:
        # Gmail would have sent it, and the queue sends it again (at least once).
        self.answer(200, {"id": "fake-gmail-%d" % uploads, "threadId": "t", "labelIds": ["SENT"]})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gave up (its request timed out at a closed gate) is no error of the fake.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


Server(("127.0.0.1", port), Handler).serve_forever()
