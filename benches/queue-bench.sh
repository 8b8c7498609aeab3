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
#   SECTIONS=django benches/queue-bench.sh   # only some of "ingest django big"
#
# Needs: Postfix (Debian: DEBIAN_FRONTEND=noninteractive apt-get install -y postfix; for
# smtp-source and for a private Postfix instance this script configures and runs in the foreground
# on 127.0.0.1:$PF_PORT with its own config and queue directories, so the system's Postfix is
# untouched), python3 (the fake Google and a virtualenv with Django under target/, created once).
# Runs as root (Postfix's master must). Every client command is bounded by `timeout`, and everything
# started here is stopped on exit. If Postfix cannot run, the script says why and goes on without it.
# The pieces shared with benches/pg-queue-bench.sh (Postfix, the fake Google, Django) are in
# benches/lib/.
set -euo pipefail
cd "$(dirname "$0")/.."

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
SECTIONS=${SECTIONS:-ingest django big} # which of 1, 2 and 3 to run
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
BIG=$((30 * 1024 * 1024))        # the "30 MB" messages: 30 MiB
LATENCY_MS=${LATENCY_MS:-150}

source benches/lib/common.sh
need_tools smtp-source postfix postconf postsuper python3 timeout
check_ports PORT="$PORT" PF_PORT="$PF_PORT" GOOGLE_PORT="$GOOGLE_PORT" SYNC_PORT="$SYNC_PORT" \
    CLOSED_PORT="$CLOSED_PORT"

work=$(mktemp -d /tmp/smtp2gmail-qbench.XXXXXX)
chmod 755 "$work" # Postfix's daemons run as user postfix and must reach their queue below it
trap 'status=$?; bench_cleanup; rm -rf "$work"; exit $status' EXIT
build_release

# start_server NAME PORT DELIVERY API_BASE MAX_SEND_RATE: a fresh smtp2gmail in gmail mode on an
# empty spool (the only one running); retries an hour apart so failed deliveries stay out of the way.
start_server() {
    local dir=$work/$1
    stop_servers
    rm -rf "$dir"
    gmail_config "$dir" "$2" "$3" "$4" "$5"
    cat >>"$dir/config.toml" <<EOF
dir = "$dir/spool"
retry_min = "1h"
retry_max = "1h"
EOF
    serve "$dir"
}

queued() { find "$1" -name '*.msg' 2>/dev/null | wc -l; } # messages in a spool's queue/

# --- measurements ----------------------------------------------------------------------------

echo "== machine"
machine_report

echo; echo "== Postfix"
start_postfix

if section ingest; then
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
    start_server ingest "$PORT" queue "$closed" 2.0
    r=$(source_rate "$PORT" "$MESSAGES" -s 20 -l 10240)
    echo "round $round: smtp2gmail  $r; in its queue: $(queued "$server_dir/spool/queue")"
done
echo "-- the same with -d (one connection per session, reused)"
for round in $(seq "$ROUNDS"); do
    if ((pf_ok)); then
        pf_purge
        echo "round $round: postfix     $(source_rate "$PF_PORT" "$MESSAGES" -d -s 20 -l 10240)"
    fi
    start_server ingest "$PORT" queue "$closed" 2.0
    echo "round $round: smtp2gmail  $(source_rate "$PORT" "$MESSAGES" -d -s 20 -l 10240)"
done
echo "-- smtp_load (pipelined MAIL+RCPT+DATA), $MESSAGES x 10240 B over 20 connections"
for round in $(seq "$ROUNDS"); do
    if ((pf_ok)); then
        pf_purge
        echo "round $round: postfix"
        timeout 300 "$load_bin" --addr "127.0.0.1:$PF_PORT" --messages "$MESSAGES" | sed 's/^/    /'
    fi
    start_server ingest "$PORT" queue "$closed" 2.0
    echo "round $round: smtp2gmail"
    timeout 300 "$load_bin" --addr "127.0.0.1:$PORT" --messages "$MESSAGES" --server-pid "$server_pid" |
        sed 's/^/    /'
done
stop_servers
((pf_ok)) && pf_purge
fi

echo; echo "== fake Google on 127.0.0.1:$GOOGLE_PORT, uploads answered after $LATENCY_MS ms"
start_google "$LATENCY_MS"

if section django; then
echo; echo "== 2. Django $DJANGO_VERSION send_mail, SMTP EmailBackend, $DJANGO_CALLS calls per target"
start_server django "$PORT" queue "$api" 2.0
targets=("smtp2gmail-queue=$PORT")
((pf_ok)) && targets+=("postfix=$PF_PORT")
django_send "$DJANGO_CALLS" 4 "${targets[@]}"
echo "uploads to the fake Gmail meanwhile: $(google_stat uploads); smtp2gmail queue now: $(queued "$server_dir/spool/queue")"
stop_servers
echo "-- for contrast: smtp2gmail with delivery = \"sync\" (250 only after Gmail's answer)"
start_server sync "$SYNC_PORT" sync "$api" 2.0
django_send "$SYNC_CALLS" 1 "smtp2gmail-sync=$SYNC_PORT"
stop_servers
fi
stop_postfix

if section big; then
echo; echo "== 3. 10 concurrent 30 MiB messages, fresh server each round, delivered to the fake Gmail"
echo "   (max_send_rate 100, so up to max_concurrent_sends = 5 uploads overlap with the ingest)"
for round in $(seq "$BIG_ROUNDS"); do
    before=$(google_stat uploads)
    start_server big "$PORT" queue "$api" 100.0
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
stop_servers
fi
echo; echo "done $(date -u '+%H:%M UTC')"
