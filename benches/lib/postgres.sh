# A private PostgreSQL server for the queue benchmarks; sourced, not run (see tests/common/postgres.rs
# for the tests' twin). Debian's binaries (bash tests/postgres/install.sh installs them), `initdb`
# into $work/pg, the socket inside it, TCP on 127.0.0.1:$PG_PORT; as root the cluster belongs to the
# `postgres` user and its commands run through runuser. The durability settings are PostgreSQL's
# defaults, as on a production server: fsync = on, synchronous_commit = on, full_page_writes = on.
# Role smtp2gmail (password obviously fake) owns database `queue`; pg_stop ends it.

PG_ROLE=smtp2gmail
PG_PASSWORD=fake-pg-password
PG_DATABASE=queue
pg_running=0

pg_bin() { # the directory of initdb, pg_ctl and psql: PATH, else Debian's newest version
    local dir
    dir=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || echo /nonexistent)")")
    if [[ ! -x $dir/pg_ctl ]]; then
        dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    fi
    [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/psql ]] || {
        echo "PostgreSQL's initdb, pg_ctl and psql not found: bash tests/postgres/install.sh" >&2
        exit 1
    }
    echo "$dir"
}

as_pg_owner() { # COMMAND...: as the cluster's owner (postgres when root)
    if ((EUID == 0)); then
        (cd "$pg_dir" && runuser -u postgres -- "$@")
    else
        (cd "$pg_dir" && "$@")
    fi
}

pg_start() {
    pg_dir=$work/pg
    pg=$(pg_bin)
    mkdir -p "$pg_dir/socket"
    echo fake-pg-superuser-password >"$pg_dir/pwfile"
    if ((EUID == 0)); then chown -R postgres: "$pg_dir"; fi
    as_pg_owner "$pg/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile="$pg_dir/pwfile" -E UTF8 --no-locale >"$pg_dir/initdb.log" 2>&1 ||
        { cat "$pg_dir/initdb.log" >&2; exit 1; }
    # Only where it listens, and autovacuum's work in the log; everything else as shipped.
    as_pg_owner tee -a "$pg_dir/data/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$pg_dir/socket'
log_autovacuum_min_duration = 0
CONF
    as_pg_owner "$pg/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 start >/dev/null ||
        { cat "$pg_dir/server.log" >&2; exit 1; }
    pg_running=1
    pg_sql postgres "CREATE ROLE $PG_ROLE LOGIN PASSWORD '$PG_PASSWORD'"
    pg_url=postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE?sslmode=disable
    echo "PostgreSQL $(pg_sql postgres 'SHOW server_version') on 127.0.0.1:$PG_PORT ($pg_dir):" \
        "$(pg_sql postgres "SELECT string_agg(name || ' = ' || current_setting(name), ', ' ORDER BY name) FROM pg_settings
            WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',
                           'shared_buffers', 'max_connections', 'autovacuum_naptime', 'commit_delay')")"
}

pg_stop() {
    if ((pg_running)); then
        as_pg_owner "$pg/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
        pg_running=0
    fi
}

pg_sql() { # DATABASE SQL: as the superuser over the socket; unaligned output
    as_pg_owner env PGOPTIONS='-c client_min_messages=warning' "$pg/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$pg_dir/socket" -p "$PG_PORT" -U postgres \
        -d "$1" -c "$2"
}

pg_fresh_database() { # an empty queue database, as a fresh spool is an empty directory
    pg_sql postgres "DROP DATABASE IF EXISTS $PG_DATABASE WITH (FORCE)"
    pg_sql postgres "CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE"
}

# The queue's tables: total size (heap, TOAST and indexes) in kB, live and dead rows of messages
# and of message_chunks.
pg_queue_size() {
    pg_sql "$PG_DATABASE" "SELECT (pg_total_relation_size('smtp2gmail.messages')
            + pg_total_relation_size('smtp2gmail.message_chunks')) / 1024 || ' kB, messages '
            || m.n_live_tup || ' live / ' || m.n_dead_tup || ' dead, chunks '
            || c.n_live_tup || ' live / ' || c.n_dead_tup || ' dead, autovacuum runs '
            || m.autovacuum_count || ' + ' || c.autovacuum_count
        FROM pg_stat_user_tables m, pg_stat_user_tables c
        WHERE m.relid = 'smtp2gmail.messages'::regclass AND c.relid = 'smtp2gmail.message_chunks'::regclass"
}
