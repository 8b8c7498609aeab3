#!/usr/bin/env bash
# Runs every measurement in docs/benchmarks.md against a release build, on loopback only.
#
#   benches/run-benchmarks.sh            # from the repository root; ROUNDS=5 for more repeats
#
# Needs Postfix's smtp-source and smtp-sink (Debian: DEBIAN_FRONTEND=noninteractive apt-get
# install -y postfix; the postfix daemon itself is not needed and not started here). Each server
# is started fresh where its VmHWM (peak RSS) matters, and everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-2525}            # smtp2gmail
SINK_PORT=${SINK_PORT:-2526}  # smtp-sink, for comparison
ROUNDS=${ROUNDS:-3}
BIG=$((5 * 1024 * 1024))      # the "5 MB" messages: 5 MiB of payload

for tool in smtp-source smtp-sink; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install postfix" >&2; exit 1; }
done

work=$(mktemp -d)
server_pid=
sink_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [[ -n $sink_pid ]] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
# The load generator (benches/smtp_load.rs), built once and run directly so that two can run at once.
load_bin=$(cargo bench --bench smtp_load --no-run --quiet --message-format=json |
    grep -o '"executable":"[^"]*/smtp_load-[^"]*"' | cut -d'"' -f4)
load() { "$load_bin" "$@"; }

# start_server MAX_CONNECTIONS: a fresh discard-mode server on $PORT, logging at the default level
# (one info line per message) to a file.
start_server() {
    stop_server
    cat >"$work/config.toml" <<EOF
[http]
listen = ""
[smtp]
listen = ["127.0.0.1:$PORT"]
max_connections = $1
[relay]
mode = "discard"
EOF
    : >"$work/server.log"
    target/release/smtp2gmail serve --config "$work/config.toml" 2>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q listening "$work/server.log" && return
        sleep 0.05
    done
    echo "server did not start:" >&2; cat "$work/server.log" >&2; exit 1
}

stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid"; wait "$server_pid" || true; server_pid=
    fi
}

# kb PID FIELD: a /proc/PID/status field (VmRSS, VmHWM) in kB.
kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# source_rate PORT COUNT ARGS...: sends COUNT messages with smtp-source; prints time and rate.
source_rate() {
    local port=$1 count=$2 start end
    shift 2
    start=$(date +%s.%N)
    smtp-source "$@" -m "$count" "127.0.0.1:$port"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v n="$count" \
        'BEGIN { printf "%.3f s, %.0f msg/s\n", e - s, n / (e - s) }'
}

echo "== machine"
date -u '+%Y-%m-%d %H:%M UTC'
echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(free -g | awk '/Mem:/ { print $2 }') GiB"
uname -sr
rustc --version
echo "postfix $(postconf -d mail_version 2>/dev/null | cut -d' ' -f3)"

echo; echo "== idle RSS"
start_server 1000
sleep 1
echo "smtp2gmail idle: VmRSS $(kb "$server_pid" VmRSS) kB"

echo; echo "== 5000 x 10 KB over 20 connections: smtp-source -d -s 20 -l 10240 -m 5000"
smtp-sink -u nobody -m 1000 "127.0.0.1:$SINK_PORT" 1000 &
sink_pid=$!
sleep 0.5
for round in $(seq "$ROUNDS"); do
    echo "round $round: smtp-sink   $(source_rate "$SINK_PORT" 5000 -d -s 20 -l 10240)"
    echo "round $round: smtp2gmail  $(source_rate "$PORT" 5000 -d -s 20 -l 10240)"
done
echo "-- the same, one connection per message (no -d)"
for round in $(seq "$ROUNDS"); do
    echo "round $round: smtp-sink   $(source_rate "$SINK_PORT" 5000 -s 20 -l 10240)"
    echo "round $round: smtp2gmail  $(source_rate "$PORT" 5000 -s 20 -l 10240)"
done
echo "-- smtp_load (pipelined MAIL+RCPT+DATA), 5000 x 10240 B over 20 connections"
for round in $(seq "$ROUNDS"); do
    echo "round $round: smtp-sink"
    load --addr "127.0.0.1:$SINK_PORT" | sed 's/^/    /'
    echo "round $round: smtp2gmail"
    load --addr "127.0.0.1:$PORT" --server-pid "$server_pid" | sed 's/^/    /'
done
kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true; sink_pid=
echo "smtp2gmail after these runs: VmRSS $(kb "$server_pid" VmRSS) kB, VmHWM $(kb "$server_pid" VmHWM) kB"

echo; echo "== 1000 idle connections (max_connections = 1100: room for the probes and the load)"
start_server 1100
sleep 1
load --addr "127.0.0.1:$PORT" --server-pid "$server_pid" --idle 1000
echo "-- the same with max_connections = 1000: the 1001st client is refused"
start_server 1000
load --addr "127.0.0.1:$PORT" --idle 1000 --probes 3 --messages 0 --connections 1 || true

echo; echo "== 200 x 5 MiB over 20 connections, fresh server each time (VmHWM = peak RSS)"
for round in $(seq "$ROUNDS"); do
    echo "round $round: smtp_load"
    start_server 1000
    load --addr "127.0.0.1:$PORT" --server-pid "$server_pid" --messages 200 --size "$BIG" |
        sed 's/^/    /'
    start_server 1000
    echo "round $round: smtp-source -d -s 20 -l $BIG -m 200:" \
        "$(source_rate "$PORT" 200 -d -s 20 -l "$BIG"), VmHWM $(kb "$server_pid" VmHWM) kB"
done
echo "-- greeting times from a separate process during 400 x 5 MiB (smtp_load)"
start_server 1000
load --addr "127.0.0.1:$PORT" --messages 400 --size "$BIG" >"$work/big.txt" &
big_pid=$!
sleep 0.2
load --addr "127.0.0.1:$PORT" --idle 1 --probes 40 --messages 0 | grep 'before the load'
wait "$big_pid"
grep -E 'rate|latency' "$work/big.txt"
stop_server
