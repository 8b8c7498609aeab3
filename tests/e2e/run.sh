#!/usr/bin/env bash
# End-to-end test: real SMTP clients against the real smtp2gmail binary.
#
# Builds the binary, installs what the clients need if it is missing (swaks, curl and msmtp from
# apt, a virtualenv with Django under target/), starts the server in file mode on a free loopback
# port with a temporary mail dir, and sends mail with Python's smtplib, Django's stock SMTP
# EmailBackend, swaks and curl. Each accepted message must appear as <id>.eml (the exact bytes the
# client sent, dot-unstuffed) and <id>.json (the envelope); the checks are in e2e.py next to this
# file (its helpers in e2e_support.py). A second server with TLS and AUTH is used by swaks, curl,
# msmtp and Django over STARTTLS and implicit TLS. Then two console-mode servers check that stdout
# carries only mail and stderr only logs, and one with the inbox's chaos API on checks that Django
# meets a Recipient trigger's 451 as SMTPRecipientsRefused (e2e_inbox.py).
#
# Prints one `ok - ...` / `not ok - ...` line per check and ends with `N passed, M failed`; exits 1
# if anything failed (the temporary directory is then kept for inspection).
#
# Environment: E2E_RELEASE=1 tests a release build (default: debug, which `cargo test` has mostly
# built already); E2E_VENV=DIR puts the virtualenv elsewhere; CARGO_TARGET_DIR is honoured.
set -euo pipefail

DJANGO_VERSION=5.2.19
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/e2e
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac

PASS=0
FAIL=0
FAILED=()
PIDS=()
RUNS=0
DONE=0
APT_UPDATED=0
STARTED=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtp2gmail-e2e.XXXXXX")

header() { printf '\n=== e2e: %s\n' "$*"; }
die() {
    printf '\ne2e: FATAL: %s\n' "$*" >&2
    exit 1
}
pass() {
    PASS=$((PASS + 1))
    printf 'ok - %s\n' "$1"
}
fail() {
    FAIL=$((FAIL + 1))
    FAILED+=("$1")
    printf 'not ok - %s\n' "$1"
}

# --- cleanup ---------------------------------------------------------------------------------

# Stops one server started by start_server: SIGTERM, then a bounded wait for it to exit (SIGKILL
# after 20 s). Sets STOP_RC to its exit status.
stop_server() {
    local pid=$1 deadline=$((SECONDS + 20)) p rest=()
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "e2e: server (pid $pid) still running 20 s after SIGTERM: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.05
    done
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}

on_exit() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do stop_server "$pid"; done
    if ((DONE == 0)); then
        # Aborted before the summary (setup failed or a bug in this script): say so loudly.
        printf '\ne2e: ABORTED (exit status %s); output so far is above\n' "$status" >&2
        [[ -d $WORK ]] && printf 'e2e: files kept in %s\n' "$WORK" >&2
        printf '%d passed, %d failed\n' "$PASS" "$((FAIL + 1))"
        exit 1
    fi
    ((FAIL > 0)) || rm -rf "$WORK"
}
trap on_exit EXIT

# --- setup -----------------------------------------------------------------------------------

apt_install() {
    command -v apt-get >/dev/null || die "$* missing and there is no apt-get: install by hand"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "$* missing; run as root or install them by hand"
        sudo=(sudo)
    fi
    if ((APT_UPDATED == 0)); then
        echo "e2e: apt-get update"
        "${sudo[@]}" apt-get update -qq </dev/null >"$WORK/apt.log" 2>&1 ||
            { cat "$WORK/apt.log"; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    echo "e2e: apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" </dev/null >"$WORK/apt.log" 2>&1 ||
        { cat "$WORK/apt.log"; die "apt-get install $* failed"; }
}

install_tools() {
    local missing=() tool
    for tool in swaks curl msmtp python3; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    # swaks --tls needs Net::SSLeay; openssl makes the test certificate.
    perl -MNet::SSLeay -e1 2>/dev/null || missing+=(libnet-ssleay-perl)
    command -v openssl >/dev/null || missing+=(openssl)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    fi
    echo "e2e: $(swaks --version | head -n1); $(curl --version | head -n1 | cut -d' ' -f1-2);" \
        "$(msmtp --version | head -n1)"
    curl --version | grep -qw smtp || die "this curl has no smtp:// support"
}

setup_python() {
    VENV=${E2E_VENV:-$TARGET/e2e-venv}
    PY=$VENV/bin/python
    if "$PY" -c "import django, sys; sys.exit(django.get_version() != '$DJANGO_VERSION')" \
        2>/dev/null; then
        echo "e2e: reusing $VENV (Django $DJANGO_VERSION)"
        return
    fi
    echo "e2e: creating $VENV with Django $DJANGO_VERSION"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "Django $DJANGO_VERSION needs Python 3.10+, python3 is $(python3 --version)"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
        # Debian's own python3 needs python3-venv for ensurepip.
        apt_install python3-venv
        rm -rf "$VENV"
        python3 -m venv "$VENV" || die "cannot create a virtualenv in $VENV"
    fi
    "$PY" -m pip install --disable-pip-version-check --no-input -q "Django==$DJANGO_VERSION" ||
        die "pip install Django==$DJANGO_VERSION failed"
}

build() {
    local profile=debug args=(--bin smtp2gmail)
    if [[ ${E2E_RELEASE:-} == 1 ]]; then
        profile=release
        args+=(--release)
    fi
    cargo build "${args[@]}" || die "cargo build failed"
    BIN=$TARGET/$profile/smtp2gmail
    [[ -x $BIN ]] || die "no binary at $BIN after the build"
}

# --- the server ------------------------------------------------------------------------------

# start_server NAME CONFIG [FLAGS...]: starts the server with cwd $WORK, stdout and stderr in
# $WORK/NAME.stdout and $WORK/NAME.stderr; sets SERVER_PID and PORT. The config listens on port 0,
# so the kernel picks a free port and the server logs which.
start_server() {
    local name=$1 config=$2
    shift 2
    local out=$WORK/$name.stdout err=$WORK/$name.stderr deadline=$((SECONDS + 30)) line
    : >"$out"
    : >"$err"
    (cd "$WORK" && exec "$BIN" serve --config "$config" "$@") >"$out" 2>"$err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # Startup: bounded polling for the address log line, then for the port to accept.
    until line=$(grep -so 'listening on 127\.0\.0\.1:[0-9]*' "$err"); do
        kill -0 "$SERVER_PID" 2>/dev/null ||
            die "the $name server exited during startup; its stderr:
$(cat "$err")"
        ((SECONDS < deadline)) || die "the $name server did not log its address within 30 s"
        sleep 0.05
    done
    PORT=${line##*:}
    until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
        kill -0 "$SERVER_PID" 2>/dev/null || die "the $name server exited: $(cat "$err")"
        ((SECONDS < deadline)) || die "127.0.0.1:$PORT does not accept connections after 30 s"
        sleep 0.05
    done
    echo "e2e: $name server (pid $SERVER_PID) on 127.0.0.1:$PORT"
}

# checks LABEL CMD...: runs a command that prints `ok - ...` / `not ok - ...` lines and counts
# them; other output is shown indented. A non-zero exit without a `not ok` line is a failure too.
checks() {
    local label=$1
    shift
    RUNS=$((RUNS + 1))
    local log=$WORK/checks-$RUNS.log rc=0 line failed=0
    "$@" >"$log" 2>&1 || rc=$?
    while IFS= read -r line || [[ -n $line ]]; do
        case $line in
        "ok - "*)
            PASS=$((PASS + 1))
            printf '%s\n' "$line"
            ;;
        "not ok - "*)
            FAIL=$((FAIL + 1))
            FAILED+=("${line#not ok - }")
            failed=1
            printf '%s\n' "$line"
            ;;
        *) printf '    | %s\n' "$line" ;;
        esac
    done <"$log"
    if ((rc != 0 && failed == 0)); then
        fail "$label: exited with status $rc (output above)"
    fi
    # A scenario that stopped half-way may have left messages behind: set them aside so that the
    # next scenario's count is not thrown off too.
    if ((rc != 0)) && [[ -d ${E2E_MAIL_DIR:-} ]] && [[ -n $(ls -A "$E2E_MAIL_DIR") ]]; then
        mkdir -p "$WORK/leftover-$RUNS"
        mv "$E2E_MAIL_DIR"/{*,.[!.]*} "$WORK/leftover-$RUNS/" 2>/dev/null || true
    fi
}

py() { "$PY" "$HERE/e2e.py" "$@"; }

# client NAME TRANSCRIPT CMD...: runs a command-line SMTP client, keeping its output.
client() {
    local name=$1 transcript=$2 rc=0
    shift 2
    timeout 60 "$@" >"$transcript" 2>&1 </dev/null || rc=$?
    if ((rc == 0)); then
        pass "$name: client exited 0"
    else
        fail "$name: client exited with status $rc; its output:"
        sed 's/^/    | /' "$transcript"
    fi
}

# --- the scenarios ---------------------------------------------------------------------------

file_mode() {
    header "file mode: smtplib, Django, swaks, curl"
    mkdir -p "$WORK/mail" "$WORK/archive" "$WORK/spill"
    export E2E_MAIL_DIR=$WORK/mail E2E_ARCHIVE=$WORK/archive E2E_SPILL_DIR=$WORK/spill
    export E2E_MAX_SIZE=2097152
    cat >"$WORK/file.toml" <<EOF
[http]
listen = ""
[smtp]
listen = ["127.0.0.1:0"]
hostname = "e2e.smtp2gmail.test"
max_message_size = $E2E_MAX_SIZE
max_recipients = 100
idle_timeout = "60s"
shutdown_grace = "5s"
spill_dir = '$E2E_SPILL_DIR'

[relay]
mode = "file"

[file]
dir = '$E2E_MAIL_DIR'
EOF
    start_server file "$WORK/file.toml"
    local pid=$SERVER_PID
    export E2E_PORT=$PORT

    echo "--- Python smtplib"
    checks "smtplib" py smtplib
    echo "--- size limit (smtplib)"
    checks "size" py size
    echo "--- CHUNKING (raw socket)"
    checks "chunking" py chunking
    echo "--- Django $DJANGO_VERSION SMTP EmailBackend"
    checks "django" py django

    echo "--- swaks"
    local t=$WORK/swaks-default.txt
    client "swaks default" "$t" swaks --server 127.0.0.1 --port "$PORT" --timeout 15 \
        --helo e2e-swaks --from swaks@example.com --to r1@example.org
    checks "swaks default" py verify --name "swaks default" --transcript "$t" \
        --mail-from swaks@example.com --rcpt r1@example.org --helo e2e-swaks --expect swaks \
        --contains "This is a test mailing"

    printf 'Subject: swaks pipelined\nX-E2E: swaks\n\n.leading dot\n..two dots\n.\nend\n' \
        >"$WORK/swaks-data.txt"
    t=$WORK/swaks-pipeline.txt
    client "swaks --pipeline" "$t" swaks --server 127.0.0.1 --port "$PORT" --timeout 15 \
        --helo e2e-swaks --pipeline --from pipe@example.com \
        --to r1@example.org,r2@example.org,r3@example.net --data "$WORK/swaks-data.txt"
    checks "swaks --pipeline" py verify --name "swaks --pipeline" --transcript "$t" \
        --mail-from pipe@example.com --rcpt r1@example.org --rcpt r2@example.org \
        --rcpt r3@example.net --helo e2e-swaks --expect swaks --pipelined \
        --contains $'\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n'

    t=$WORK/swaks-null.txt
    client "swaks null sender" "$t" swaks --server 127.0.0.1 --port "$PORT" --timeout 15 \
        --helo e2e-swaks -f '<>' --to bounce-target@example.org
    checks "swaks null sender" py verify --name "swaks -f '<>'" --transcript "$t" \
        --mail-from '' --rcpt bounce-target@example.org --helo e2e-swaks --expect swaks

    echo "--- curl"
    local url="smtp://127.0.0.1:$PORT/e2e-curl"
    printf 'From: c@example.com\r\nSubject: curl CRLF\r\n\r\n.leading dot\r\n..two\r\n.\r\nno final CRLF' \
        >"$WORK/curl-crlf.txt"
    t=$WORK/curl-crlf.log
    client "curl CRLF upload" "$t" curl -v -sS --max-time 15 "$url" \
        --mail-from c@example.com --mail-rcpt r1@example.org --mail-rcpt r2@example.org \
        --upload-file "$WORK/curl-crlf.txt"
    checks "curl CRLF upload" py verify --name "curl CRLF upload" --transcript "$t" \
        --mail-from c@example.com --rcpt r1@example.org --rcpt r2@example.org \
        --helo e2e-curl --expect "curl:$WORK/curl-crlf.txt"

    printf 'Subject: curl LF\n\n.leading dot\n..two\nh\xc3\xa9llo\nend\n' >"$WORK/curl-lf.txt"
    t=$WORK/curl-lf-crlf.log
    client "curl --crlf upload" "$t" curl -v -sS --max-time 15 --crlf "$url" \
        --mail-from c@example.com --mail-rcpt r1@example.org --upload-file "$WORK/curl-lf.txt"
    checks "curl --crlf upload" py verify --name "curl --crlf upload" --transcript "$t" \
        --mail-from c@example.com --rcpt r1@example.org --helo e2e-curl \
        --expect "curl-crlf:$WORK/curl-lf.txt" --contains $'\r\n.leading dot\r\n'

    # Without --crlf curl sends the bare LFs as they are (and only dot-stuffs after CRLF); the
    # server must store exactly that.
    t=$WORK/curl-lf.log
    client "curl LF upload" "$t" curl -v -sS --max-time 15 "$url" \
        --mail-from c@example.com --mail-rcpt r1@example.org --upload-file "$WORK/curl-lf.txt"
    checks "curl LF upload" py verify --name "curl LF upload (bare LF kept)" --transcript "$t" \
        --mail-from c@example.com --rcpt r1@example.org --helo e2e-curl \
        --expect "curl:$WORK/curl-lf.txt"

    echo "--- stopping the file-mode server"
    stop_server "$pid"
    if ((STOP_RC == 0)); then pass "file mode: server exits 0 on SIGTERM"; else
        fail "file mode: server exited with status $STOP_RC on SIGTERM"
    fi
    local err=$WORK/file.stderr
    if grep -q 'stopped' "$err"; then pass "file mode: shutdown logged on stderr"; else
        fail "file mode: no 'stopped' log line on stderr"
    fi
    if grep -Eq 'WARN|ERROR' "$err"; then
        fail "file mode: the server logged warnings or errors:"
        grep -E 'WARN|ERROR' "$err" | sed 's/^/    | /'
    else
        pass "file mode: no warnings or errors logged"
    fi
    if [[ -s $WORK/file.stdout ]]; then
        fail "file mode: the server wrote to stdout: $(head -c 300 "$WORK/file.stdout")"
    else
        pass "file mode: nothing on stdout"
    fi
}

# expect_refusal NAME TRANSCRIPT CODE CMD...: runs a client that must fail with reply CODE.
expect_refusal() {
    local name=$1 transcript=$2 code=$3 rc=0
    shift 3
    timeout 60 "$@" >"$transcript" 2>&1 </dev/null || rc=$?
    if ((rc != 0)) && grep -q "$code" "$transcript"; then
        pass "$name: refused with $code"
    else
        fail "$name: expected a $code refusal (client status $rc); its output:"
        sed 's/^/    | /' "$transcript"
    fi
}

secure_mode() {
    header "TLS and AUTH: swaks, curl, msmtp, Django over STARTTLS and implicit TLS"
    # Run after file_mode, which exported its own mail dir.
    local dir=$WORK/secure
    mkdir -p "$dir/mail" "$dir/archive"
    export E2E_MAIL_DIR=$dir/mail E2E_ARCHIVE=$dir/archive
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$dir/openssl.log" ||
        die "openssl cannot make a certificate: $(cat "$dir/openssl.log")"
    export E2E_USER=app E2E_PASSWORD='e2e pa55 word'
    local hash
    hash=$(printf '%s\n' "$E2E_PASSWORD" | "$BIN" hash-password)
    cat >"$dir/secure.toml" <<EOF
[smtp]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
auth_required = true
shutdown_grace = "5s"

[smtp.tls]
cert = '$dir/cert.pem'
key = '$dir/key.pem'

[[smtp.users]]
name = "$E2E_USER"
password_hash = "$hash"
senders = ["*@example.com"]

[relay]
mode = "file"

[file]
dir = '$E2E_MAIL_DIR'
EOF
    start_server secure "$dir/secure.toml"
    local pid=$SERVER_PID err=$WORK/secure.stderr tls_port
    tls_port=$(grep -so 'listening on 127\.0\.0\.1:[0-9]*, 127\.0\.0\.1:[0-9]*' "$err" |
        sed 's/.*://')
    export E2E_PORT=$PORT E2E_TLS_PORT=$tls_port
    local auth=(--auth-user "$E2E_USER" --auth-password "$E2E_PASSWORD")
    local swaks=(swaks --server 127.0.0.1 --timeout 15 --helo e2e-swaks --from app@example.com
        --to r1@example.org)

    echo "--- swaks"
    client "swaks --tls --auth PLAIN" "$dir/swaks-tls.txt" \
        "${swaks[@]}" --port "$PORT" --tls --auth PLAIN "${auth[@]}"
    client "swaks --tls-on-connect --auth LOGIN" "$dir/swaks-ssl.txt" \
        "${swaks[@]}" --port "$tls_port" --tls-on-connect --auth LOGIN "${auth[@]}"
    checks "swaks TLS" py count --name "swaks TLS and AUTH" --count 2
    expect_refusal "swaks without AUTH" "$dir/swaks-noauth.txt" "530 5.7.0" \
        "${swaks[@]}" --port "$PORT" --tls
    expect_refusal "swaks wrong password" "$dir/swaks-wrong.txt" "535 5.7.8" \
        "${swaks[@]}" --port "$PORT" --tls --auth PLAIN --auth-user "$E2E_USER" \
        --auth-password wrong
    # On loopback AUTH works without TLS too (Django without EMAIL_USE_TLS); that AUTH is not
    # offered in clear on other addresses is checked in tests/session_fuzz.rs.
    client "swaks --auth on loopback without TLS" "$dir/swaks-clear.txt" \
        "${swaks[@]}" --port "$PORT" --auth PLAIN "${auth[@]}"
    checks "swaks TLS" py count --name "swaks AUTH without TLS on loopback" --count 1

    echo "--- curl"
    printf 'From: app@example.com\r\nSubject: curl TLS\r\n\r\nhello\r\n' >"$dir/curl.txt"
    client "curl smtps:// with the CA" "$dir/curl-smtps.log" curl -sS --max-time 15 \
        --cacert "$dir/cert.pem" "smtps://127.0.0.1:$tls_port/e2e-curl" \
        --user "$E2E_USER:$E2E_PASSWORD" --mail-from app@example.com \
        --mail-rcpt r1@example.org --upload-file "$dir/curl.txt"
    client "curl smtp:// --ssl-reqd --insecure" "$dir/curl-starttls.log" curl -sS \
        --max-time 15 --insecure --ssl-reqd "smtp://127.0.0.1:$PORT/e2e-curl" \
        --user "$E2E_USER:$E2E_PASSWORD" --mail-from app@example.com \
        --mail-rcpt r1@example.org --upload-file "$dir/curl.txt"
    checks "curl TLS" py count --name "curl TLS and AUTH" --count 2

    echo "--- msmtp"
    # A user's msmtprc: the password in the file (msmtp insists on mode 0600 then), the test
    # certificate as the only trusted one, one account per kind of TLS. --debug prints the
    # dialogue, from which e2e.py reads what was sent (msmtp adds Date and Message-ID headers).
    cat >"$dir/msmtprc" <<EOF
defaults
auth on
user $E2E_USER
password "$E2E_PASSWORD"
from app@example.com
domain e2e-msmtp
host 127.0.0.1
tls on
tls_trust_file $dir/cert.pem

account starttls
port $PORT
tls_starttls on

account implicit
port $tls_port
tls_starttls off
EOF
    chmod 600 "$dir/msmtprc"
    printf 'From: app@example.com\r\nTo: r1@example.org\r\nSubject: msmtp\r\n\r\n.leading dot\r\nhello\r\n' \
        >"$dir/msmtp-message.txt"
    local account t
    for account in starttls implicit; do
        t=$dir/msmtp-$account.txt
        # client() gives commands no stdin; msmtp reads the message from it.
        client "msmtp $account + AUTH" "$t" sh -c 'exec msmtp -C "$1" -a "$2" --debug "$3" <"$4"' \
            sh "$dir/msmtprc" "$account" r1@example.org "$dir/msmtp-message.txt"
        checks "msmtp $account" py verify --name "msmtp $account + AUTH" --transcript "$t" \
            --mail-from app@example.com --rcpt r1@example.org --helo e2e-msmtp --expect msmtp \
            --contains $'\r\n\r\n.leading dot\r\nhello\r\n'
    done
    # Which TLS each account used: STARTTLS after a plaintext greeting, or TLS from the start.
    if grep -q '^--> STARTTLS' "$dir/msmtp-starttls.txt" &&
        ! grep -q '^--> STARTTLS' "$dir/msmtp-implicit.txt" &&
        grep -q 'TLS session parameters' "$dir/msmtp-implicit.txt"; then
        pass "msmtp: STARTTLS on listen, implicit TLS on listen_tls"
    else
        fail "msmtp: expected STARTTLS on $PORT only and TLS from the start on $tls_port"
    fi

    echo "--- Django"
    SSL_CERT_FILE=$dir/cert.pem checks "django secure" py django_secure

    stop_server "$pid"
    if ((STOP_RC == 0)); then pass "secure: server exits 0 on SIGTERM"; else
        fail "secure: server exited with status $STOP_RC on SIGTERM"
    fi
    if grep -qF "$E2E_PASSWORD" "$err" || grep -qF "$hash" "$err"; then
        fail "secure: a password or its hash is in the log"
    else
        pass "secure: no password or hash in the log"
    fi
    if grep -q 'authentication failed' "$err"; then
        pass "secure: failed AUTH is logged"
    else
        fail "secure: no 'authentication failed' log line"
    fi
}

console_mode() {
    local format=$1 log_format=$2 name=console-$1
    header "console mode ($format, $log_format logs): stdout carries mail, stderr logs"
    {
        printf '[http]\nlisten = ""\n[smtp]\nlisten = ["127.0.0.1:0"]\nshutdown_grace = "5s"\n\n[relay]\nmode = "console"\n'
        # summary is the default format: leave it implicit.
        [[ $format == summary ]] || printf '\n[console]\nformat = "%s"\n' "$format"
    } >"$WORK/$name.toml"
    start_server "$name" "$WORK/$name.toml" --log-format "$log_format"
    local pid=$SERVER_PID out=$WORK/$name.stdout err=$WORK/$name.stderr
    E2E_PORT=$PORT checks "$name" py console --stdout "$out" --stderr "$err" \
        --format "$format" --log-format "$log_format"
    local before
    before=$(wc -c <"$out")
    stop_server "$pid"
    if ((STOP_RC == 0)); then pass "$name: server exits 0 on SIGTERM"; else
        fail "$name: server exited with status $STOP_RC on SIGTERM"
    fi
    if [[ $(wc -c <"$out") == "$before" ]] && grep -q 'stopped' "$err"; then
        pass "$name: shutdown logs went to stderr, not stdout"
    else
        fail "$name: shutdown output: stdout grew from $before to $(wc -c <"$out") bytes or no 'stopped' on stderr"
    fi
}

inbox_chaos() {
    header "inbox chaos: Django meets the 451 of a Recipient trigger"
    printf '[http]\nlisten = "127.0.0.1:0"\n[smtp]\nlisten = ["127.0.0.1:0"]\nshutdown_grace = "5s"\n\n[relay]\nmode = "console"\n\n[inbox]\nchaos = true\n' \
        >"$WORK/chaos.toml"
    start_server chaos "$WORK/chaos.toml"
    local pid=$SERVER_PID http
    http=$(grep -so 'inbox at http://127\.0\.0\.1:[0-9]*' "$WORK/chaos.stderr" | head -n1)
    E2E_PORT=$PORT E2E_HTTP=${http#inbox at } checks "inbox chaos" "$PY" "$HERE/e2e_inbox.py"
    stop_server "$pid"
}

# --- main ------------------------------------------------------------------------------------

header "tools"
install_tools
setup_python
header "build"
build
BUILT=$SECONDS

file_mode
secure_mode
console_mode raw json
console_mode summary text
inbox_chaos

DONE=1
header "done in $((SECONDS - BUILT)) s after the build ($((SECONDS - STARTED)) s in all)"
if ((FAIL > 0)); then
    echo "FAILED CHECKS:"
    printf '  - %s\n' "${FAILED[@]}"
    printf 'e2e: files kept for inspection in %s\n' "$WORK"
    printf '%d passed, %d failed\n' "$PASS" "$FAIL"
    exit 1
fi
printf '%d passed, %d failed\n' "$PASS" "$FAIL"
