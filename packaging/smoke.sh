#!/usr/bin/env bash
# Installs and runs what packaging/build.sh built, as a user would (docs/distribution.md):
#
#   bash packaging/smoke.sh wheel     the wheel in a fresh venv; Django sends it one message
#   bash packaging/smoke.sh image     the image under podman: one message (and one over 1 MiB,
#                                     which spills to /tmp), non-root, healthy, 0 on SIGTERM
#   bash packaging/smoke.sh windows   the .exe under Debian's wine in console mode: one message
#
# Each prints the message the server printed and fails if it did not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIST=target/dist
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
say() { printf '== smoke.sh: %s\n' "$*" >&2; }
fail() { printf 'smoke.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# The release build names the commit it was built from (build.rs).
expect_commit() { # VERSION-LINE
    local commit
    commit=$(git rev-parse --short=9 HEAD 2>/dev/null) || return 0
    case "$1" in *"($commit "*) ;; *) fail "--version says '$1', not commit $commit" ;; esac
}

smoke_wheel() {
    local wheel venv
    wheel=$(ls "$DIST"/smtp2gmail-"$VERSION"-*manylinux*"$(uname -m)".whl | head -n1)
    venv=$(mktemp -d)/venv
    python3 -m venv "$venv"
    say "pip install $wheel django (fresh venv)"
    "$venv/bin/pip" install -q "$wheel" "django>=4.2,<6"
    expect_commit "$("$venv/bin/smtp2gmail" --version)"
    "$venv/bin/python" packaging/smoke.py serve --client django -- "$venv/bin/smtp2gmail"
    rm -rf "$(dirname "$venv")"
}

smoke_image() {
    local name=smtp2gmail-smoke-$$ dir port user status logs flags=()
    dir=$(mktemp -d)
    cat >"$dir/config.toml" <<'EOF'
[smtp]
listen = ["0.0.0.0:2525"]
# Reachable only through the port published on 127.0.0.1 below.
allow_unauthenticated_remote = true

[relay]
mode = "console"

[http]
listen = "127.0.0.1:9925"
EOF
    # This VM's podman: crun cannot set the limits here; runc can, given explicit ones within
    # this shell's hard limits (nproc: 4096 works, the hard limit itself is refused).
    if command -v runc >/dev/null; then
        flags=(--runtime runc --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
    fi
    podman rm -f "$name" >/dev/null 2>&1 || true
    # Set before the run: a container that fails to start is left behind as "Created".
    trap "podman rm -f $name >/dev/null 2>&1 || true; rm -rf $dir" EXIT
    podman run -d --name "$name" "${flags[@]}" -p 127.0.0.1::2525 \
        -v "$dir/config.toml:/etc/smtp2gmail/config.toml:ro" "smtp2gmail:$VERSION" >/dev/null
    # The health check is the readiness signal: polled with a deadline, not slept on.
    local deadline=$((SECONDS + 60))
    until podman healthcheck run "$name" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "not healthy after 60 s: $(podman logs "$name" 2>&1 | tail -5)"
        sleep 0.2
    done
    say "healthy (smtp2gmail healthcheck inside the container)"
    port=$(podman port "$name" 2525/tcp | head -n1 | sed 's/.*://')
    python3 packaging/smoke.py send --port "$port" --subject "image smoke $$"
    python3 packaging/smoke.py send --port "$port" --subject "image smoke large $$" --size 2000000
    # Read from the process, in the container's user namespace (rootless podman too); the name
    # is the image's /etc/passwd entry for uid 10001.
    user=$(podman top "$name" user | tail -n1 | tr -d ' ')
    [ "$user" = smtp2gmail ] || fail "the server runs as '$user', not smtp2gmail (uid 10001)"
    say "runs as $user (uid 10001)"
    podman stop -t 60 "$name" >/dev/null
    status=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    logs=$(podman logs "$name" 2>&1)
    printf '%s\n' "$logs" | grep -E '^(Subject|Size):' || true
    grep -q "Subject: *image smoke $$\$" <<<"$logs" || fail "the message was not printed: $logs"
    grep -q "Subject: *image smoke large $$\$" <<<"$logs" || fail "the 2 MB message was not printed"
    [ "$status" = 0 ] || fail "exit status $status after SIGTERM"
    say "passed: two messages printed, stopped with SIGTERM, exit status 0"
}

smoke_windows() {
    local zip stage prefix exe
    command -v wine >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wine wine64 >/dev/null
    }
    command -v x86_64-w64-mingw32-gcc >/dev/null || fail "run packaging/build.sh windows first"
    zip=$DIST/smtp2gmail-$VERSION-x86_64-pc-windows-gnu.zip
    stage=$(mktemp -d)
    python3 -m zipfile -e "$zip" "$stage"
    exe=$(ls "$stage"/*/smtp2gmail.exe)
    # Wine 8 lacks ProcessPrng, which Rust's std needs: a stand-in DLL beside the .exe.
    x86_64-w64-mingw32-gcc -O2 -shared -o "$(dirname "$exe")/bcryptprimitives.dll" \
        packaging/wine/bcryptprimitives.c packaging/wine/bcryptprimitives.def -ladvapi32
    prefix=$PWD/target/wine-prefix
    say "wine $(wine --version) (prefix $prefix)"
    WINEPREFIX=$prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" \
        python3 packaging/smoke.py serve --stop kill \
        --expect-log "no SIGHUP on Windows" -- wine "$exe"
    rm -rf "$stage"
}

case "${1:-}" in
    wheel) smoke_wheel ;;
    image) smoke_image ;;
    windows) smoke_windows ;;
    *) echo "usage: bash packaging/smoke.sh wheel|image|windows" >&2; exit 2 ;;
esac
