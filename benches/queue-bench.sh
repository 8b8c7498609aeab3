#!/usr/bin/env bash
# Measures the durable queue against the Performance targets of issue 5, on loopback only:
#
#   1. ingest into the queue, 10 KB messages, 20 connections (smtp-source -s 20 -l 10240 -m 5000),
#      against Postfix's smtpd accepting into its own queue, in the same run;
#   2. Django's send_mail through its SMTP EmailBackend: median per call to smtp2gmail in queue mode
#      with a fake Gmail answering after 150 ms, to Postfix, and (for contrast) to smtp2gmail in sync mode;
#   3. 10 concurrent 30 MiB messages (smtp_load): peak RSS (VmHWM) of the server while the queue
#      delivers them to the fake Gmail.
#
#   benches/queue-bench.sh        # from anywhere; ROUNDS=3 MESSAGES=5000 DJANGO_CALLS=200 BIG_ROUNDS=3
#
# Needs: Postfix (Debian: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; for
# smtp-source and for a private Postfix instance this script configures and runs in the foreground
# on 127.0.0.1:$PF_PORT with its own config and queue directories, so the system's Postfix is
# untouched), python3 (the fake Google and a virtualenv with Django under target/, created once).
# Runs as root (Postfix's master must). Every client command is bounded by `timeout`, and everything
# started here is stopped on exit. If Postfix cannot run, the script says why and goes on without it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PORT=${PORT:-2545}               # smtp2gmail (queue mode)
PF_PORT=${PF_PORT:-2546}         # Postfix smtpd
GOOGLE_PORT=${GOOGLE_PORT:-2547} # the fake Google (token endpoint and Gmail upload)
SYNC_PORT=${SYNC_PORT:-2548}     # smtp2gmail in sync mode, for contrast in the Django measurement
CLOSED_PORT=${CLOSED_PORT:-2549} # nothing listens here: deliveries during the ingest runs fail
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-5000}
DJANGO_CALLS=${DJANGO_CALLS:-200}
SYNC_CALLS=${SYNC_CALLS:-30}
BIG_ROUNDS=${BIG_ROUNDS:-3}
BIG=$((30 * 1024 * 1024))        # the "30 MB" messages: 30 MiB
LATENCY_MS=${LATENCY_MS:-150}
DJANGO_VERSION=5.2.19
VENV=${BENCH_VENV:-$ROOT/target/bench-venv}

for tool in smtp-source postfix postconf postsuper python3 timeout; do
    command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install postfix python3)" >&2; exit 1; }
done
for p in "$PORT" "$PF_PORT" "$GOOGLE_PORT" "$SYNC_PORT" "$CLOSED_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; choose other ports (PORT, PF_PORT, GOOGLE_PORT, SYNC_PORT, CLOSED_PORT)" >&2
        exit 1
    fi
done

work=$(mktemp -d /tmp/smtp2gmail-qbench.XXXXXX)
chmod 755 "$work" # Postfix's daemons run as user postfix and must reach their queue below it
server_pid=
google_pid=
pf_pid=
pf_ok=0
cleanup() {
    local status=$?
    stop_server
    if [[ -n $google_pid ]]; then
        kill "$google_pid" 2>/dev/null || true
        wait "$google_pid" 2>/dev/null || true
    fi
    stop_postfix
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

cargo build --release --quiet
load_bin=$(cargo bench --bench smtp_load --no-run --quiet --message-format=json |
    grep -o '"executable":"[^"]*/smtp_load-[^"]*"' | cut -d'"' -f4)

# --- helpers ---------------------------------------------------------------------------------

kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

wait_port() { # PORT SECONDS: until something accepts on 127.0.0.1:PORT
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.1
    done
}

# source_rate PORT COUNT ARGS...: smtp-source COUNT messages; prints time and rate.
source_rate() {
    local port=$1 count=$2 start end
    shift 2
    start=$(date +%s.%N)
    timeout 300 smtp-source "$@" -m "$count" "127.0.0.1:$port"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$count" \
        'BEGIN { printf "%.3f s, %.0f msg/s", e - s, n / (e - s) }'
}

# start_server NAME PORT DELIVERY API_BASE TOKEN_URI MAX_SEND_RATE: a fresh smtp2gmail in gmail
# mode on an empty spool; retries an hour apart so failed deliveries stay out of the way.
start_server() {
    local name=$1 port=$2 delivery=$3 api=$4 token_uri=$5 rate=$6 dir=$work/$1
    stop_server
    rm -rf "$dir"
    mkdir -p "$dir"
    cat >"$dir/token.json" <<EOF
{"token": "fake-stale-access-token", "refresh_token": "fake-refresh-token",
 "token_uri": "$token_uri", "client_id": "fake-client-id.apps.googleusercontent.com",
 "client_secret": "fake-client-secret", "scopes": ["https://www.googleapis.com/auth/gmail.send"],
 "expiry": "2020-01-01T00:00:00.000000Z"}
EOF
    cat >"$dir/config.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$port"]
[relay]
mode = "gmail"
delivery = "$delivery"
[queue]
dir = "$dir/spool"
retry_min = "1h"
retry_max = "1h"
max_send_rate = $rate
[gmail]
api_base = "$api"
credentials = "$dir/token.json"
EOF
    target/release/smtp2gmail serve --config "$dir/config.toml" 2>"$dir/server.log" &
    server_pid=$!
    server_dir=$dir
    for _ in $(seq 200); do
        grep -q listening "$dir/server.log" && return
        sleep 0.05
    done
    echo "server did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
}

stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}

queued() { find "$1" -name '*.msg' 2>/dev/null | wc -l; } # messages in a spool's queue/

# A private Postfix: own config_directory, queue_directory and data_directory under $work, smtpd on
# 127.0.0.1:$PF_PORT only, nothing local, everything relayed to a closed port (so it is deferred
# and stays in the queue).
pf=$work/postfix
start_postfix() {
    mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
    chown postfix "$pf/data"
    cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
myhostname = bench.localhost
mydomain = localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relay_domains =
relayhost = [127.0.0.1]:$CLOSED_PORT
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
biff = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
message_size_limit = 36700160
default_process_limit = 100
EOF
    # The services of Debian's master.cf that smtpd, cleanup and qmgr need, none chrooted.
    cat >"$pf/etc/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    postfix -c "$pf/etc" start-fg >"$pf/start-fg.out" 2>&1 &
    pf_pid=$!
    if wait_port "$PF_PORT" 20; then
        pf_ok=1
        echo "postfix $(postconf -d mail_version | cut -d' ' -f3) running in the foreground on 127.0.0.1:$PF_PORT"
    else
        echo "POSTFIX DID NOT START; its output and log:"
        sed 's/^/    /' "$pf/start-fg.out" "$pf/maillog" 2>/dev/null | tail -20
        # postfix(1) reports fatal errors only to syslog/maillog or a terminal: ask once more on a pty.
        command -v script >/dev/null &&
            timeout 10 script -qec "postfix -c $pf/etc start-fg" /dev/null 2>&1 | sed 's/^/    /' | tail -5
        stop_postfix
    fi
}

stop_postfix() {
    if [[ -n $pf_pid ]]; then
        timeout 30 postfix -c "$pf/etc" stop >/dev/null 2>&1 || true
        kill "$pf_pid" 2>/dev/null || true
        wait "$pf_pid" 2>/dev/null || true
        pf_pid=
    fi
    # Wait (bounded) for the master to be gone; should it still run, end it by the pid it recorded.
    if [[ -s $pf/queue/pid/master.pid ]]; then
        local mpid
        mpid=$(tr -d ' ' <"$pf/queue/pid/master.pid")
        for _ in $(seq 100); do
            [[ -n $mpid ]] && kill -0 "$mpid" 2>/dev/null && grep -q master "/proc/$mpid/comm" || return 0
            sleep 0.1
        done
        kill "$mpid" 2>/dev/null || true
    fi
}

pf_queued() { find "$pf/queue/incoming" "$pf/queue/active" "$pf/queue/deferred" -type f | wc -l; }
pf_purge() { postsuper -c "$pf/etc" -d ALL >/dev/null 2>&1 || true; }

# The fake Google: POST /token answers an access token, POST .../messages/send reads the upload
# (streamed, not kept), waits $LATENCY_MS and answers {"id": ...}; GET /stats counts uploads.
cat >"$work/fake_google.py" <<'EOF'
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, latency = int(sys.argv[1]), float(sys.argv[2]) / 1000
lock = threading.Lock()
stats = {"uploads": 0, "bytes": 0, "in_flight": 0, "most_in_flight": 0, "tokens": 0}

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
            self.answer(200, dict(stats))

    def do_POST(self):
        if self.path.startswith("/token"):
            self.body_size()
            with lock:
                stats["tokens"] += 1
            self.answer(200, {"access_token": "fake-access-1", "expires_in": 3599,
                              "token_type": "Bearer",
                              "scope": "https://www.googleapis.com/auth/gmail.send"})
            return
        with lock:
            stats["in_flight"] += 1
            stats["most_in_flight"] = max(stats["most_in_flight"], stats["in_flight"])
        n = self.body_size()
        time.sleep(latency)
        with lock:
            stats["in_flight"] -= 1
            stats["uploads"] += 1
            stats["bytes"] += n
            uploads = stats["uploads"]
        self.answer(200, {"id": "fake-gmail-%d" % uploads, "threadId": "t", "labelIds": ["SENT"]})

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
EOF
google_stat() { # FIELD
    python3 -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))[sys.argv[2]])' \
        "http://127.0.0.1:$GOOGLE_PORT/stats" "$1"
}

# Django's stock SMTP EmailBackend, one send_mail per call (a new connection each, as in a view).
cat >"$work/django_send.py" <<'EOF'
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
for r in range(rounds):  # the targets alternate in blocks, so drift on the VM hits them alike
    for name, port in targets:
        times[name] += [send(port) for _ in range(calls // rounds)]
for name, _ in targets:
    t = sorted(x * 1000 for x in times[name])
    print("%-22s %4d calls: median %7.2f ms, p90 %7.2f ms, min %7.2f ms, max %7.2f ms, mean %7.2f ms" % (
        name, len(t), statistics.median(t), t[int(len(t) * 0.9) - 1], t[0], t[-1], statistics.mean(t)))
EOF

# --- measurements ----------------------------------------------------------------------------

echo "== machine"
date -u '+%Y-%m-%d %H:%M UTC'
echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(free -g | awk '/Mem:/ { print $2 }') GiB"
uname -sr
rustc --version
echo "commit $(git rev-parse --short HEAD); spool and Postfix queue on $(df -T "$work" | awk 'NR == 2 { print $2 }') ($work)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

echo; echo "== Postfix"
start_postfix

echo; echo "== 1. ingest: smtp-source -s 20 -l 10240 -m $MESSAGES (new connection per message)"
echo "   smtp2gmail: queue mode, fresh spool each round, Gmail at a closed port (deliveries fail, retry in 1 h)"
closed=http://127.0.0.1:$CLOSED_PORT
for round in $(seq "$ROUNDS"); do
    if ((pf_ok)); then
        pf_purge
        r=$(source_rate "$PF_PORT" "$MESSAGES" -s 20 -l 10240)
        sleep 1
        echo "round $round: postfix     $r; in its queue: $(pf_queued)"
    fi
    start_server ingest "$PORT" queue "$closed" "$closed/token" 2.0
    r=$(source_rate "$PORT" "$MESSAGES" -s 20 -l 10240)
    echo "round $round: smtp2gmail  $r; in its queue: $(queued "$server_dir/spool/queue")"
done
echo "-- the same with -d (one connection per session, reused)"
for round in $(seq "$ROUNDS"); do
    if ((pf_ok)); then
        pf_purge
        echo "round $round: postfix     $(source_rate "$PF_PORT" "$MESSAGES" -d -s 20 -l 10240)"
    fi
    start_server ingest "$PORT" queue "$closed" "$closed/token" 2.0
    echo "round $round: smtp2gmail  $(source_rate "$PORT" "$MESSAGES" -d -s 20 -l 10240)"
done
echo "-- smtp_load (pipelined MAIL+RCPT+DATA), $MESSAGES x 10240 B over 20 connections"
for round in $(seq "$ROUNDS"); do
    if ((pf_ok)); then
        pf_purge
        echo "round $round: postfix"
        timeout 300 "$load_bin" --addr "127.0.0.1:$PF_PORT" --messages "$MESSAGES" | sed 's/^/    /'
    fi
    start_server ingest "$PORT" queue "$closed" "$closed/token" 2.0
    echo "round $round: smtp2gmail"
    timeout 300 "$load_bin" --addr "127.0.0.1:$PORT" --messages "$MESSAGES" --server-pid "$server_pid" |
        sed 's/^/    /'
done
stop_server
((pf_ok)) && pf_purge

echo; echo "== fake Google on 127.0.0.1:$GOOGLE_PORT, uploads answered after $LATENCY_MS ms"
python3 "$work/fake_google.py" "$GOOGLE_PORT" "$LATENCY_MS" &
google_pid=$!
wait_port "$GOOGLE_PORT" 10 || { echo "the fake Google did not start" >&2; exit 1; }
api=http://127.0.0.1:$GOOGLE_PORT

echo; echo "== 2. Django $DJANGO_VERSION send_mail, SMTP EmailBackend, $DJANGO_CALLS calls per target"
if ! "$VENV/bin/python" -c "import django, sys; sys.exit(django.get_version() != '$DJANGO_VERSION')" 2>/dev/null; then
    echo "creating $VENV with Django $DJANGO_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "Django==$DJANGO_VERSION"
fi
start_server django "$PORT" queue "$api" "$api/token" 2.0
targets=("smtp2gmail-queue=$PORT")
((pf_ok)) && targets+=("postfix=$PF_PORT")
timeout 600 "$VENV/bin/python" "$work/django_send.py" "$DJANGO_CALLS" 4 "${targets[@]}"
echo "uploads to the fake Gmail meanwhile: $(google_stat uploads); smtp2gmail queue now: $(queued "$server_dir/spool/queue")"
stop_server
echo "-- for contrast: smtp2gmail with delivery = \"sync\" (250 only after Gmail's answer)"
start_server sync "$SYNC_PORT" sync "$api" "$api/token" 2.0
timeout 300 "$VENV/bin/python" "$work/django_send.py" "$SYNC_CALLS" 1 "smtp2gmail-sync=$SYNC_PORT"
stop_server
stop_postfix

echo; echo "== 3. 10 concurrent 30 MiB messages, fresh server each round, delivered to the fake Gmail"
echo "   (max_send_rate 100, so up to max_concurrent_sends = 5 uploads overlap with the ingest)"
for round in $(seq "$BIG_ROUNDS"); do
    before=$(google_stat uploads)
    start_server big "$PORT" queue "$api" "$api/token" 100.0
    echo "round $round: idle VmRSS $(kb "$server_pid" VmRSS) kB"
    timeout 300 "$load_bin" --addr "127.0.0.1:$PORT" --server-pid "$server_pid" \
        --messages 10 --size "$BIG" --connections 10 | sed 's/^/    /'
    for _ in $(seq 1200); do # until all 10 are delivered (at most 120 s)
        (($(google_stat uploads) - before >= 10)) && break
        sleep 0.1
    done
    echo "    delivered $(($(google_stat uploads) - before))/10 ($(queued "$server_dir/spool/queue") left);" \
        "after delivery: VmRSS $(kb "$server_pid" VmRSS) kB, VmHWM $(kb "$server_pid" VmHWM) kB;" \
        "most uploads in flight at the fake so far: $(google_stat most_in_flight)"
done
stop_server
echo; echo "done $(date -u '+%H:%M UTC')"
