# Shared by the queue benchmarks (benches/queue-bench.sh, benches/pg-queue-bench.sh); sourced, not
# run. The caller sets `work` (a directory of mode 755 under /tmp, removed on exit) and the ports
# PF_PORT (Postfix), GOOGLE_PORT (the fake Google) and CLOSED_PORT (nothing listens: deliveries
# fail), then calls bench_cleanup from its EXIT trap.

bench_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
servers=()    # every smtp2gmail started by `serve`, stopped by stop_servers
server_pid=   # the last one started
server_dir=
google_pid=
pf_pid=
pf_ok=0
DJANGO_VERSION=5.2.19

need_tools() { # TOOL...
    for tool; do
        command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install postfix python3)" >&2; exit 1; }
    done
}

check_ports() { # NAME=PORT...: all must be free
    local p
    for p; do
        if (exec 3<>"/dev/tcp/127.0.0.1/${p#*=}") 2>/dev/null; then
            echo "port ${p#*=} is in use; choose another with ${p%%=*}=..." >&2
            exit 1
        fi
    done
}

# The release server and the load generator (benches/smtp_load.rs), run directly.
build_release() {
    cargo build --release --quiet
    load_bin=$(cargo bench --bench smtp_load --no-run --quiet --message-format=json |
        grep -o '"executable":"[^"]*/smtp_load-[^"]*"' | cut -d'"' -f4)
}

machine_report() {
    date -u '+%Y-%m-%d %H:%M UTC'
    echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(free -g | awk '/Mem:/ { print $2 }') GiB"
    uname -sr
    rustc --version
    echo "commit $(git rev-parse --short HEAD); queues on $(df -T "$work" | awk 'NR == 2 { print $2 }') ($work)"
    load_report
}

load_report() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; } # PID FIELD: from /proc/PID/status

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

# gmail_config DIR PORT DELIVERY API_BASE MAX_SEND_RATE [MAX_CONCURRENT_SENDS]: writes DIR/token.json
# (obviously fake values, token_uri API_BASE/token) and the [smtp], [relay] and [gmail] tables of
# DIR/config.toml (no HTTP endpoints, so that several servers can run at once); the caller appends
# the rest of its [queue] table.
gmail_config() {
    local dir=$1 port=$2 delivery=$3 api=$4 rate=$5 sends=${6:-}
    mkdir -p "$dir"
    cat >"$dir/token.json" <<JSON
{"token": "fake-stale-access-token", "refresh_token": "fake-refresh-token",
 "token_uri": "$api/token", "client_id": "fake-client-id.apps.googleusercontent.com",
 "client_secret": "fake-client-secret", "scopes": ["https://www.googleapis.com/auth/gmail.send"],
 "expiry": "2020-01-01T00:00:00.000000Z"}
JSON
    cat >"$dir/config.toml" <<TOML
[smtp]
listen = ["127.0.0.1:$port"]
[relay]
mode = "gmail"
delivery = "$delivery"
[gmail]
api_base = "$api"
credentials = "$dir/token.json"
${sends:+max_concurrent_sends = $sends}
[http]
listen = ""
[queue]
max_send_rate = $rate
TOML
}

# serve DIR: starts smtp2gmail on DIR/config.toml (log: DIR/server.log) and waits until it listens.
serve() {
    local dir=$1
    target/release/smtp2gmail serve --config "$dir/config.toml" 2>"$dir/server.log" &
    server_pid=$!
    server_dir=$dir
    servers+=("$server_pid")
    for _ in $(seq 600); do
        grep -q listening "$dir/server.log" && return
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "server did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
}

stop_servers() {
    local pid
    for pid in "${servers[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    servers=()
    server_pid=
}

# --- Postfix ---------------------------------------------------------------------------------
# A private Postfix: own config_directory, queue_directory and data_directory under $work, smtpd on
# 127.0.0.1:$PF_PORT only, nothing local, everything relayed to a closed port (so it is deferred
# and stays in the queue). Sets pf_ok=1 when it runs; says why when it does not.
start_postfix() {
    pf=$work/postfix
    mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
    chown postfix "$pf/data"
    cat >"$pf/etc/main.cf" <<CF
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
CF
    # The services of Debian's master.cf that smtpd, cleanup and qmgr need, none chrooted.
    cat >"$pf/etc/master.cf" <<CF
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
CF
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
    [[ -n ${pf:-} ]] || return 0
    if [[ -n $pf_pid ]]; then
        timeout 30 postfix -c "$pf/etc" stop >/dev/null 2>&1 || true
        kill "$pf_pid" 2>/dev/null || true
        wait "$pf_pid" 2>/dev/null || true
        pf_pid=
    fi
    pf_ok=0
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

# --- the fake Google (benches/lib/fake_google.py) ----------------------------------------------

start_google() { # LATENCY_MS: on 127.0.0.1:$GOOGLE_PORT, uploads answered after LATENCY_MS
    stop_google
    python3 "$bench_lib/fake_google.py" "$GOOGLE_PORT" "$1" &
    google_pid=$!
    wait_port "$GOOGLE_PORT" 10 || { echo "the fake Google did not start" >&2; exit 1; }
    api=http://127.0.0.1:$GOOGLE_PORT
}

stop_google() {
    if [[ -n $google_pid ]]; then
        kill "$google_pid" 2>/dev/null || true
        wait "$google_pid" 2>/dev/null || true
        google_pid=
    fi
}

google_get() { # PATH: the fake's JSON answer
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://127.0.0.1:$GOOGLE_PORT$1"
}

google_stat() { # FIELD of GET /stats
    python3 -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=5))[sys.argv[2]])' \
        "http://127.0.0.1:$GOOGLE_PORT/stats" "$1"
}

google_gate() { # open|close
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], b"", method="POST"), timeout=5).read()' \
        "http://127.0.0.1:$GOOGLE_PORT/gate/$1"
}

# --- Django (benches/lib/django_send.py) -------------------------------------------------------

# django_send CALLS ROUNDS NAME=PORT...: in a virtualenv with Django $DJANGO_VERSION ($BENCH_VENV,
# default target/bench-venv, created once).
django_send() {
    local venv=${BENCH_VENV:-$PWD/target/bench-venv}
    if ! "$venv/bin/python" -c "import django, sys; sys.exit(django.get_version() != '$DJANGO_VERSION')" 2>/dev/null; then
        echo "creating $venv with Django $DJANGO_VERSION"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q "Django==$DJANGO_VERSION"
    fi
    timeout 900 "$venv/bin/python" "$bench_lib/django_send.py" "$@"
}

bench_cleanup() {
    stop_servers
    stop_google
    stop_postfix
}
