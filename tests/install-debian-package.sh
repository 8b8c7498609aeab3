#!/usr/bin/env bash
# Installs Debian packages for a test without starting their services:
#   bash tests/install-debian-package.sh "WHAT FOR" PACKAGE...
# Used by tests/postfix/install.sh and tests/postgres/install.sh, which first check whether the
# package is already there and set what the package must not do (debconf, cluster creation).
#
# Quiet unless something fails. Needs root (or sudo) and apt-get.
set -euo pipefail

why=$1
shift
command -v apt-get >/dev/null || {
    echo "$* missing and there is no apt-get: install by hand ($why)" >&2
    exit 1
}
sudo=()
((EUID == 0)) || sudo=(sudo)
log=$(mktemp "${TMPDIR:-/tmp}/debian-install.XXXXXX")
trap 'rm -f "$log"' EXIT

# Package scripts ask invoke-rc.d before starting a service; 101 means "not now". Only a policy
# this script put there is removed again.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from smtp2gmail tests/install-debian-package.sh\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap 'rm -f "$log"; "${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "installing $* (apt-get) $why"
{
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "$@"
} </dev/null >"$log" 2>&1 || {
    cat "$log" >&2
    echo "apt-get install $* failed" >&2
    exit 1
}
