#!/usr/bin/env bash
# Installs Debian's PostgreSQL server for the tests that run a private instance of it
# (tests/common/postgres.rs: initdb into a temporary directory, a free port on 127.0.0.1), if
# initdb is missing, without creating or starting the system's own cluster: nothing may listen
# on port 5432 or keep running after the tests.
#
# Quiet unless something fails. Needs root (or sudo) and apt-get; .ci/run calls it before
# `cargo test`.
set -euo pipefail

initdb_present() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if initdb_present; then
    exit 0
fi
sudo=()
((EUID == 0)) || sudo=(sudo)

install=$(dirname "${BASH_SOURCE[0]}")/../install-debian-package.sh
# postgresql-common (no cluster of its own) first: its createcluster.conf, read when the server
# package's postinst would create the "main" cluster, then says not to. Editing the file the
# package installed, rather than writing it beforehand, avoids dpkg's question about a
# configuration file it did not put there.
bash "$install" "for the shared-queue tests" postgresql-common
conf=/etc/postgresql-common/createcluster.conf
if ! grep -qs '^create_main_cluster *= *false' "$conf"; then
    echo "create_main_cluster = false" | "${sudo[@]}" tee -a "$conf" >/dev/null
fi
bash "$install" "for the shared-queue tests" postgresql
initdb_present || {
    echo "postgresql installed, but there is no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
}
