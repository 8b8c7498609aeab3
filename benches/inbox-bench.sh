#!/usr/bin/env bash
# The inbox's benchmark (docs/benchmarks.md, "The development inbox"), against MailDev, on
# loopback only:
#
#   1. ingest: 5000 × 10 KB over 20 sessions (benches/smtp_load.rs) into smtp2gmail's inbox in
#      console mode (stdout to /dev/null) and in file mode, and into MailDev; ROUNDS rounds;
#   2. 10,000 messages in file mode: the first page and subject searches (curl, 20 requests each)
#      and the RSS, against MailDev holding the same 10,000; then the same directory after a
#      restart;
#   3. startup over a directory of STARTUP_MESSAGES (100,000) messages: time to the first page,
#      and until every summary has been read (the first search answers then);
#   4. large mail: 200 x 5 MiB over 20 connections into console mode with the inbox (stdout to
#      /dev/null) against discard mode, a fresh server for each run: the rate the clients see,
#      the time until the inbox holds all 200, and the peak RSS (issue 24's goal: >= 0.5 x
#      discard's rate, peak RSS <= 100 MB).
#
#   benches/inbox-bench.sh          # from the repository root; ROUNDS=5 for more repeats
#   SECTIONS=4 benches/inbox-bench.sh   # only the large mail (no MailDev needed)
#
# Needs node and npm for parts 1 - 3 (MailDev, pinned below, is installed into a temporary
# directory), curl and python3. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MAILDEV_VERSION=${MAILDEV_VERSION:-3.0.0}
STARTUP_MESSAGES=${STARTUP_MESSAGES:-100000}
SECTIONS=${SECTIONS:-1234}    # which of the four parts to run
BIG_MESSAGES=${BIG_MESSAGES:-200}
BIG_SIZE=${BIG_SIZE:-5242880}

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
load_bin=$(cargo bench --bench smtp_load --no-run --quiet --message-format=json |
    grep -o '"executable":"[^"]*/smtp_load-[^"]*"' | cut -d'"' -f4)
if [[ $SECTIONS == *[123]* ]]; then
    echo "installing maildev@$MAILDEV_VERSION"
    (cd "$work" && npm install --no-audit --no-fund --loglevel=error "maildev@$MAILDEV_VERSION" >/dev/null)
fi
maildev=$work/node_modules/maildev/dist/bin/maildev.js

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "port $1 not open after 60 s" >&2; exit 1; }
        sleep 0.05
    done
}
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# start_inbox MODE DIR [-]: a fresh smtp2gmail in console or file mode (file.dir = DIR), with the
# inbox off when the third argument is "-"; sets PID, SMTP, HTTP.
start_inbox() {
    local enabled=true
    [[ ${3:-} == - ]] && enabled=false
    SMTP=$(free_port)
    HTTP=$(free_port)
    cat >"$work/config.toml" <<EOF
[smtp]
listen = ["127.0.0.1:$SMTP"]
max_connections = 1000
[http]
listen = "127.0.0.1:$HTTP"
[relay]
mode = "$1"
[file]
dir = '$2'
[inbox]
enabled = $enabled
max_messages = 20000
EOF
    target/release/smtp2gmail serve --config "$work/config.toml" >/dev/null 2>"$work/server.log" &
    PID=$!
    pids+=("$PID")
    wait_port "$SMTP"
    wait_port "$HTTP"
}

start_maildev() {
    SMTP=$(free_port)
    HTTP=$(free_port)
    node "$maildev" --smtp "$SMTP" --web "$HTTP" --ip 127.0.0.1 --web-ip 127.0.0.1 --silent \
        >"$work/maildev.log" 2>&1 &
    PID=$!
    pids+=("$PID")
    wait_port "$SMTP"
    wait_port "$HTTP"
}

# load N: sends N × 10 KB over 20 connections to $SMTP; prints the rate line.
load() {
    "$load_bin" --addr "127.0.0.1:$SMTP" --messages "$1" --size 10240 --connections 20 |
        tee "$work/load.log" | grep -E 'rate:|errors:'
}
rate() { grep -o 'rate: [0-9]*' "$work/load.log" | cut -d' ' -f2; }

inbox_total() { curl -sf "http://127.0.0.1:$HTTP/api/v1/messages?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
# MailDev 3's API: /api/email/summary pages what its UI lists ({items, total}).
maildev_total() { curl -sf "http://127.0.0.1:$HTTP/api/email/summary?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }

# latency URL: 20 requests; prints median and max in ms.
latency() {
    local i times=()
    for i in $(seq 20); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "$1")")
    done
    printf '%s\n' "${times[@]}" | sort -n |
        awk '{ t[NR] = $1 * 1000 } END { printf "median %.1f ms, max %.1f ms\n", t[int((NR + 1) / 2)], t[NR] }'
}

if [[ $SECTIONS == *1* ]]; then
echo
echo "== 1. ingest: 5000 x 10 KB over 20 connections, $ROUNDS rounds"
for round in $(seq "$ROUNDS"); do
    # console-/file- are the same modes with the inbox off: what capturing costs.
    for target in console console- file file- maildev; do
        case $target in
            maildev) start_maildev ;;
            *) rm -rf "$work/mail"; start_inbox "${target%-}" "$work/mail" "${target: -1}" ;;
        esac
        printf 'round %s, %-8s ' "$round" "$target"
        load 5000 | tr '\n' ' '
        case $target in
            maildev) kept=$(maildev_total) ;;
            *-) kept="- (inbox off)" ;;
            *) kept=$(inbox_total) ;;
        esac
        echo "| kept $kept | VmRSS $(rss "$PID") kB"
        stop "$PID"
    done
done

fi

if [[ $SECTIONS == *2* ]]; then
echo
echo "== 2. 10,000 messages of 10 KB"
rm -rf "$work/mail"
start_inbox file "$work/mail"
load 10000 >/dev/null
base="http://127.0.0.1:$HTTP/api/v1"
echo "smtp2gmail file mode, $(inbox_total) messages, VmRSS $(rss "$PID") kB (peak $(hwm "$PID") kB)"
echo "  first page:                 $(latency "$base/messages")"
echo "  search subject:smtp_load:   $(latency "$base/search?query=subject%3Asmtp_load")  (all 10,000 match)"
echo "  search subject:no-such:     $(latency "$base/search?query=subject%3Ano-such")  (none match)"
echo "  search a word in no body:   $(latency "$base/search?query=zzzz-no-such-word")  (every body read)"
echo "  VmRSS after the queries: $(rss "$PID") kB"
stop "$PID"
start_inbox file "$work/mail"
base="http://127.0.0.1:$HTTP/api/v1"
curl -sf "$base/messages" >/dev/null
curl -sf "$base/search?query=subject%3Ano-such" >/dev/null
echo "after a restart over the same directory, every summary read: VmRSS $(rss "$PID") kB"
echo "  first page:                 $(latency "$base/messages")"
echo "  search subject:no-such:     $(latency "$base/search?query=subject%3Ano-such")"
stop "$PID"
start_maildev
load 10000 >/dev/null
echo "MailDev $MAILDEV_VERSION, $(maildev_total) messages, VmRSS $(rss "$PID") kB (peak $(hwm "$PID") kB)"
echo "  first page (/api/email/summary): $(latency "http://127.0.0.1:$HTTP/api/email/summary?limit=50")"
echo "  search smtp_load:           $(latency "http://127.0.0.1:$HTTP/api/email/summary?limit=50&search=smtp_load")"
echo "  search no-such:             $(latency "http://127.0.0.1:$HTTP/api/email/summary?limit=50&search=no-such")"
stop "$PID"

fi

if [[ $SECTIONS == *3* ]]; then
echo
echo "== 3. startup over $STARTUP_MESSAGES messages in file.dir"
python3 - "$work/many" "$STARTUP_MESSAGES" <<'EOF'
import json, os, sys, time
directory, count = sys.argv[1], int(sys.argv[2])
os.makedirs(directory)
start = int(time.time() * 1000) - count
for n in range(count):
    ident = f"{start + n:011x}{n:08x}"
    body = (f"From: app@example.com\r\nTo: user{n}@example.org\r\nSubject: message number {n}\r\n"
            f"Message-ID: <{ident}@bench>\r\n\r\n" + "hello, this is a benchmark message\r\n" * 20)
    with open(os.path.join(directory, ident + ".eml"), "w") as f:
        f.write(body)
    with open(os.path.join(directory, ident + ".json"), "w") as f:
        json.dump({"id": ident, "mail_from": "app@example.com", "rcpt_to": [f"user{n}@example.org"],
                   "received_at": "", "remote_addr": "127.0.0.1:1", "helo": "bench", "size": len(body)}, f)
EOF
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null && echo "(page cache dropped: a cold start)" || echo "(page cache kept: a warm start)"
started=$(date +%s.%N)
start_inbox file "$work/many"
until curl -sf "http://127.0.0.1:$HTTP/api/v1/messages" -o "$work/first.json"; do sleep 0.01; done
first=$(date +%s.%N)
curl -sf "http://127.0.0.1:$HTTP/api/v1/search?query=subject%3Anumber" -o /dev/null
loaded=$(date +%s.%N)
python3 - "$work/first.json" "$started" "$first" "$loaded" <<'EOF'
import json, sys
page = json.load(open(sys.argv[1]))
started, first, loaded = map(float, sys.argv[2:])
print(f"first page after {first - started:.2f} s (total {page['total']}, newest: {page['messages'][0]['Subject']!r})")
print(f"every summary read (first search answered) after {loaded - started:.2f} s")
EOF
echo "VmRSS with every summary: $(rss "$PID") kB"
stop "$PID"
fi

if [[ $SECTIONS == *4* ]]; then
echo
echo "== 4. large mail: $BIG_MESSAGES x $BIG_SIZE B over 20 connections, console mode with the inbox vs discard, $ROUNDS rounds"
uptime
ratios=()
for round in $(seq "$ROUNDS"); do
    declare -A rates=()
    for target in discard console; do
        start_inbox "$target" "$work/mail"
        started=$(date +%s.%N)
        "$load_bin" --addr "127.0.0.1:$SMTP" --messages "$BIG_MESSAGES" --size "$BIG_SIZE" \
            --connections 20 >"$work/load.log"
        answered=$(date +%s.%N)
        kept="-"
        if [[ $target == console ]]; then # until the backlog is printed and captured
            until [[ $(inbox_total) == "$BIG_MESSAGES" ]]; do sleep 0.05; done
            kept=$(inbox_total)
        fi
        done_at=$(date +%s.%N)
        rates[$target]=$(rate)
        printf 'round %s, %-8s %s | errors %s | all in the inbox after %.2f s (%.0f msg/s; answers took %.2f s) | kept %s | VmHWM %s kB\n' \
            "$round" "$target" "$(grep -o 'rate: [0-9]* messages/s' "$work/load.log")" \
            "$(grep -o 'errors: [0-9]*' "$work/load.log" | cut -d' ' -f2)" \
            "$(echo "$done_at - $started" | bc)" "$(echo "$BIG_MESSAGES / ($done_at - $started)" | bc -l)" \
            "$(echo "$answered - $started" | bc)" "$kept" "$(hwm "$PID")"
        stop "$PID"
    done
    ratio=$(echo "${rates[console]} / ${rates[discard]}" | bc -l)
    ratios+=("$ratio")
    printf 'round %s: console with the inbox / discard = %.2f (goal >= 0.5)\n' "$round" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END { m = r[int((NR + 1) / 2)]; printf "median ratio %.2f (goal >= 0.5): %s\n", m, (m >= 0.5) ? "met" : "NOT met" }'
fi
