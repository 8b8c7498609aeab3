#!/usr/bin/env bash
# Installs Debian's PostgreSQL server for the tests that run a private instance of it
# (tests/common/postgres.rs: initdb into a temporary directory, a free port on 127.0.0.1), if
# initdb is missing, without creating or starting the system's own cluster: nothing may listen
# on port 5432 or keep running after the tests.
#
# Quiet unless something fails. Needs root (or sudo) and apt-get; .ci/run calls it before
# `cargo test`.
set -euo pipefail

if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    exit 0
fi
command -v apt-get >/dev/null || {
    echo "PostgreSQL's initdb is missing and there is no apt-get: install the server by hand" >&2
    exit 1
}
sudo=()
((EUID == 0)) || sudo=(sudo)
log=$(mktemp "${TMPDIR:-/tmp}/postgresql-install.XXXXXX")
trap 'rm -f "$log"' EXIT

# postgresql-common reads this before the server package's postinst creates the "main" cluster:
# with it off, no cluster (no data directory, no service to start) is made.
conf=/etc/postgresql-common/createcluster.conf
"${sudo[@]}" mkdir -p "$(dirname "$conf")"
if ! grep -qs '^create_main_cluster *= *false' "$conf"; then
    echo "create_main_cluster = false" | "${sudo[@]}" tee -a "$conf" >/dev/null
fi

# Package scripts ask invoke-rc.d before starting a service; 101 means "not now". Only a policy
# this script put there is removed again.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from smtp2gmail tests/postgres/install.sh\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap 'rm -f "$log"; "${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "installing postgresql (apt-get) for the shared-queue tests"
{
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends postgresql
} </dev/null >"$log" 2>&1 || {
    cat "$log" >&2
    echo "apt-get install postgresql failed" >&2
    exit 1
}
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || {
    echo "postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
}
