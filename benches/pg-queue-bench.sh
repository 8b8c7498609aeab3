#!/usr/bin/env bash
# Measures the PostgreSQL queue backend ([queue] backend = "postgres") against the Performance
# targets of issue 13, on loopback only, with a private PostgreSQL server started here:
#
#   1. ingest, 10 KB messages, 20 connections (smtp-source -s 20 -l 10240 -m 5000): smtp2gmail on
#      PostgreSQL against Postfix's disk queue, and the file spool for contrast, in the same run; the
#      three take turns (the order rotates each round) so that they share the machine's conditions;
#   2. Django's send_mail through its SMTP EmailBackend: median per call to smtp2gmail on PostgreSQL,
#      on the spool and to Postfix, in alternating blocks (fake Gmail answering after 150 ms);
#   3. a backlog of 10,000 messages delivered by three replicas sharing the database at the
#      account's send rate (max_send_rate 200/s here, so it runs in about a minute): time, the rate
#      Gmail saw against the configured one, and the size of the queue's tables before, at the peak
#      and after, twice in a row (the second backlog shows whether the space is reused).
#
#   benches/pg-queue-bench.sh     # from anywhere; ROUNDS=3 MESSAGES=5000 DJANGO_CALLS=200
#                                 # BACKLOG=10000 BACKLOG_ROUNDS=2 BACKLOG_RATE=200
#                                 # SECTIONS="ingest django backlog"
#
# Needs: Postfix (smtp-source, and a private instance; see benches/queue-bench.sh), PostgreSQL's
# server binaries (bash tests/postgres/install.sh: Debian's package, no system cluster), python3
# (the fake Google, and Django in a virtualenv under target/, created once). Runs as root (Postfix's
# master; the PostgreSQL cluster then belongs to the `postgres` user). PostgreSQL keeps its
# production defaults: fsync = on, synchronous_commit = on, full_page_writes = on. Every client is
# bounded by `timeout`; the servers, Postfix, PostgreSQL and the fake are stopped on exit and the
# work directory (under /tmp, where the spool, Postfix's queue and the database all live) removed.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-2545}               # smtp2gmail on the spool
PF_PORT=${PF_PORT:-2546}         # Postfix smtpd
GOOGLE_PORT=${GOOGLE_PORT:-2547} # the fake Google (token endpoint and Gmail upload)
CLOSED_PORT=${CLOSED_PORT:-2549} # nothing listens here: deliveries during the ingest runs fail
PG_SMTP_PORT=${PG_SMTP_PORT:-2550} # smtp2gmail on PostgreSQL; the replicas use the next two as well
PG_PORT=${PG_PORT:-2553}         # PostgreSQL
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-5000}
DJANGO_CALLS=${DJANGO_CALLS:-200}
LATENCY_MS=${LATENCY_MS:-150}
BACKLOG=${BACKLOG:-10000}
BACKLOG_ROUNDS=${BACKLOG_ROUNDS:-2}
BACKLOG_RATE=${BACKLOG_RATE:-200}          # max_send_rate of the replicas' one account
BACKLOG_SENDS=${BACKLOG_SENDS:-10}         # its max_concurrent_sends (Gmail allows about 10)
BACKLOG_LATENCY_MS=${BACKLOG_LATENCY_MS:-20} # 10 in flight × 20 ms: room for 500/s, above the rate
LEASE_TIME=${LEASE_TIME:-1m}
SECTIONS=${SECTIONS:-ingest django backlog} # which of 1, 2 and 3 to run
REPLICAS=${REPLICAS:-3}                    # on PG_SMTP_PORT and the ports after it

source benches/lib/common.sh
source benches/lib/postgres.sh
need_tools smtp-source postfix postconf postsuper python3 timeout runuser
check_ports PORT="$PORT" PF_PORT="$PF_PORT" GOOGLE_PORT="$GOOGLE_PORT" CLOSED_PORT="$CLOSED_PORT" \
    PG_SMTP_PORT="$PG_SMTP_PORT" "PG_SMTP_PORT+1=$((PG_SMTP_PORT + 1))" \
    "PG_SMTP_PORT+2=$((PG_SMTP_PORT + 2))" PG_PORT="$PG_PORT"
work=$(mktemp -d /tmp/smtp2gmail-pgbench.XXXXXX)
chmod 755 "$work" # Postfix's daemons (user postfix) and PostgreSQL (user postgres) work below it
sampler_pid=
waits_pid=
cleanup() {
    local status=$? pid
    for pid in $sampler_pid $waits_pid; do
        kill "$pid" 2>/dev/null || true
    done
    bench_cleanup
    pg_stop
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
build_release

# start_spool NAME PORT API_BASE: a fresh smtp2gmail on an empty spool; retries an hour apart so
# failed deliveries stay out of the way.
start_spool() {
    local dir=$work/$1
    rm -rf "$dir"
    gmail_config "$dir" "$2" queue "$3" 2.0
    printf 'dir = "%s"\nretry_min = "1h"\nretry_max = "1h"\n' "$dir/spool" >>"$dir/config.toml"
    serve "$dir"
}

# start_pg NAME PORT API_BASE MAX_SEND_RATE RETRY_MIN RETRY_MAX [MAX_CONCURRENT_SENDS]: smtp2gmail
# on the PostgreSQL queue (the database as it is: the caller empties it when it should be).
start_pg() {
    local dir=$work/$1
    rm -rf "$dir"
    gmail_config "$dir" "$2" queue "$3" "$4" "${7:-}"
    printf 'backend = "postgres"\nurl = "%s"\nlease_time = "%s"\nretry_min = "%s"\nretry_max = "%s"\n' \
        "$pg_url" "$LEASE_TIME" "$5" "$6" >>"$dir/config.toml"
    serve "$dir"
}

pg_count() { pg_sql "$PG_DATABASE" "SELECT count(*) FROM smtp2gmail.messages WHERE place = '${1:-queue}'"; }

# CPU seconds (user + system) of a process, its reaped children and its live children: a server's
# own work, or PostgreSQL's (the postmaster's) or Postfix's (the master's) with their workers.
cpu_tree() {
    local pid=$1 child total
    total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat")
    for child in $(ps -o pid= --ppid "$pid"); do
        [[ -r /proc/$child/stat ]] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$child/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
ticks=$(getconf CLK_TCK)
cpu_seconds() { awk -v a="$1" -v b="$2" -v t="$ticks" 'BEGIN { printf "%.1f", (b - a) / t }'; }
postmaster() { head -1 "$pg_dir/data/postmaster.pid"; }

# What smtp2gmail's database sessions are doing, sampled every 0.2 s from start_waits to
# stop_waits; waits_seen then prints how often each wait event (or CPU) was seen in an active one.
start_waits() {
    (
        while sleep 0.2; do
            pg_sql "$PG_DATABASE" "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
                FROM pg_stat_activity WHERE datname = '$PG_DATABASE' AND state = 'active'
                AND pid <> pg_backend_pid()" 2>/dev/null
        done
    ) >"$work/waits" &
    waits_pid=$!
}
stop_waits() {
    if [[ -n $waits_pid ]]; then
        kill "$waits_pid" 2>/dev/null || true
        wait "$waits_pid" 2>/dev/null || true
        waits_pid=
    fi
}
waits_seen() {
    sort "$work/waits" | uniq -c | sort -rn | awk '{ printf "%s%s %s", sep, $2, $1; sep = ", " }'
}

# One ingest round of each kind: prints rate, queue count and CPU.
ingest_postfix() {
    ((pf_ok)) || return 0
    pf_purge
    local before r master
    master=$(tr -d ' ' <"$pf/queue/pid/master.pid")
    before=$(cpu_tree "$master")
    r=$(source_rate "$PF_PORT" "$MESSAGES" -s 20 -l 10240)
    sleep 1 # the last messages move from incoming/ to deferred/
    echo "  postfix     $r; in its queue: $(pf_queued); Postfix CPU $(cpu_seconds "$before" "$(cpu_tree "$master")") s"
}
ingest_spool() {
    start_spool ingest-spool "$PORT" "$closed"
    local r
    r=$(source_rate "$PORT" "$MESSAGES" -s 20 -l 10240)
    echo "  spool       $r; in its queue: $(find "$server_dir/spool/queue" -name '*.msg' | wc -l);" \
        "server CPU $(cpu_seconds 0 "$(cpu_tree "$server_pid")") s"
    stop_servers
}
ingest_postgres() {
    pg_fresh_database
    pg_sql postgres CHECKPOINT
    start_pg ingest-pg "$PG_SMTP_PORT" "$closed" 2.0 1h 1h
    local r pg_before server_cpu
    pg_before=$(cpu_tree "$(postmaster)")
    start_waits
    r=$(source_rate "$PG_SMTP_PORT" "$MESSAGES" -s 20 -l 10240)
    stop_waits
    server_cpu=$(cpu_seconds 0 "$(cpu_tree "$server_pid")")
    echo "  postgres    $r; in its queue: $(pg_count); server CPU $server_cpu s," \
        "PostgreSQL CPU $(cpu_seconds "$pg_before" "$(cpu_tree "$(postmaster)")") s;" \
        "tables $(pg_queue_size | cut -d, -f1)"
    echo "              its database sessions (sampled every 0.2 s): $(waits_seen)"
    stop_servers
}

# --- measurements ----------------------------------------------------------------------------

echo "== machine"
machine_report
echo; echo "== PostgreSQL"
pg_start
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
if section ingest || section django; then
    echo; echo "== Postfix"
    start_postfix
fi
if section ingest; then
    echo; echo "== 1. ingest: smtp-source -s 20 -l 10240 -m $MESSAGES (new connection per message)"
    echo "   smtp2gmail: queue mode, a fresh spool / an empty database each round, Gmail at a closed port"
    echo "   (deliveries fail, retry in 1 h); the order of the three rotates from round to round"
    closed=http://127.0.0.1:$CLOSED_PORT
    kinds=(postfix spool postgres)
    for round in $(seq "$ROUNDS"); do
        echo "round $round ($(load_report))"
        for i in 0 1 2; do
            "ingest_${kinds[$(((round - 1 + i) % 3))]}"
        done
    done
    ((pf_ok)) && pf_purge
fi

if section django; then
    echo; echo "== 2. Django $DJANGO_VERSION send_mail, SMTP EmailBackend, $DJANGO_CALLS calls per target"
    echo "   fake Gmail answering after $LATENCY_MS ms; blocks of $((DJANGO_CALLS / 4)) calls alternate between the targets"
    start_google "$LATENCY_MS"
    load_report
    start_spool django-spool "$PORT" "$api"
    pg_fresh_database
    start_pg django-pg "$PG_SMTP_PORT" "$api" 2.0 1h 1h
    targets=("smtp2gmail-postgres=$PG_SMTP_PORT" "smtp2gmail-spool=$PORT")
    ((pf_ok)) && targets+=("postfix=$PF_PORT")
    django_send "$DJANGO_CALLS" 4 "${targets[@]}"
    echo "uploads to the fake Gmail meanwhile: $(google_stat uploads); still queued: $(pg_count) in the" \
        "database, $(find "$work/django-spool/spool/queue" -name '*.msg' | wc -l) in the spool"
    stop_servers
fi
stop_postfix

section backlog || { echo; echo "done $(date -u '+%H:%M UTC')"; exit 0; }
echo; echo "== 3. a backlog of $BACKLOG messages, $REPLICAS replicas on one database"
echo "   one account: max_send_rate = $BACKLOG_RATE, max_concurrent_sends = $BACKLOG_SENDS, lease_time = $LEASE_TIME,"
echo "   retry_min = 2s (uploads held at the closed gate may time out); fake Gmail answering after $BACKLOG_LATENCY_MS ms"
start_google "$BACKLOG_LATENCY_MS"
pg_fresh_database
for r in $(seq 0 $((REPLICAS - 1))); do
    start_pg "replica-$r" "$((PG_SMTP_PORT + r))" "$api" "$BACKLOG_RATE" 2s 10s "$BACKLOG_SENDS"
done
replicas=("${servers[@]}")
# The tables' size every second, from now to the end: the peak is the largest.
(
    while sleep 1; do
        echo "$(date +%s.%N) $(pg_queue_size 2>/dev/null)"
    done
) >"$work/sizes" &
sampler_pid=$!
per_replica=$((BACKLOG / REPLICAS))
wait_deadline=$(awk -v n="$BACKLOG" -v r="$BACKLOG_RATE" 'BEGIN { printf "%d", n / r * 3 + 120 }') # seconds
for round in $(seq "$BACKLOG_ROUNDS"); do
    echo "backlog $round ($(load_report))"
    echo "  before:         $(pg_queue_size)"
    lines_before=$(wc -l <"$work/sizes")
    google_gate close
    uploads_before=$(google_stat uploads)
    start=$(date +%s.%N)
    sources=()
    for r in $(seq 0 $((REPLICAS - 1))); do # an equal share to each replica, 7 sessions each
        n=$per_replica
        ((r < REPLICAS - 1)) || n=$((BACKLOG - per_replica * (REPLICAS - 1)))
        timeout 300 smtp-source -s 7 -l 10240 -m "$n" "127.0.0.1:$((PG_SMTP_PORT + r))" &
        sources+=($!)
    done
    for job in "${sources[@]}"; do
        wait "$job" || { echo "smtp-source failed" >&2; exit 1; }
    done
    end=$(date +%s.%N)
    echo "  ingested into $REPLICAS replicas in $(awk -v s="$start" -v e="$end" -v n="$BACKLOG" \
        'BEGIN { printf "%.1f s (%.0f msg/s)", e - s, n / (e - s) }'); queued: $(pg_count);" \
        "$(pg_queue_size)"
    google_gate open
    google_cpu=$(cpu_tree "$google_pid")
    open_at=$(date +%s.%N)
    start_waits
    for _ in $(seq $((wait_deadline * 2))); do # until the database has nothing queued (bounded)
        (($(pg_count) == 0)) && break
        sleep 0.5
    done
    stop_waits
    echo "  the fake Gmail (Python, one interpreter) used $(cpu_seconds "$google_cpu" "$(cpu_tree "$google_pid")") s of CPU" \
        "in the $(awk -v s="$open_at" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s of delivery"
    echo "  delivered: $(($(google_stat uploads) - uploads_before)) uploads to the fake Gmail for $BACKLOG" \
        "messages ($(google_stat held) held at the gate so far: an upload that timed out there is sent" \
        "again), still queued: $(pg_count), dead: $(pg_count dead)"
    echo "  Gmail saw: $(google_get /rate)"
    echo "  what the replicas' database sessions did while delivering: $(waits_seen)"
    echo "  just after:     $(pg_queue_size)"
    # Autovacuum (default naptime 1 min) clears deleted rows once a table has more than its
    # threshold (1000 + 2 %): wait (at most 150 s) until neither table has that many.
    for _ in $(seq 150); do
        (($(pg_sql "$PG_DATABASE" "SELECT count(*) FROM pg_stat_user_tables WHERE n_dead_tup >= 1000
            AND relid IN ('smtp2gmail.messages'::regclass, 'smtp2gmail.message_chunks'::regclass)") == 0)) && break
        sleep 1
    done
    echo "  after vacuum:   $(pg_queue_size)"
    echo "  peak:           $(tail -n +"$((lines_before + 1))" "$work/sizes" | sort -n -k2 | tail -1 | cut -d' ' -f2-)"
done
for r in $(seq 0 $((REPLICAS - 1))); do
    echo "  replica $r delivered $(grep -c 'gmail_id=' "$work/replica-$r/server.log" || true) in all," \
        "CPU $(cpu_seconds 0 "$(cpu_tree "${replicas[$r]}")") s"
done
echo "  autovacuum in PostgreSQL's log:"
grep -E 'automatic vacuum of table "queue.smtp2gmail' "$pg_dir/server.log" | sed 's/^/    /' | tail -20
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=
stop_servers
echo; echo "done $(date -u '+%H:%M UTC')"
