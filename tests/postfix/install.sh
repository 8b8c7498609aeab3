#!/usr/bin/env bash
# Installs Debian's postfix for tests/postfix_relayhost.rs, if it is missing, without configuring
# or starting the system's own instance: the test runs a private instance of its own (temporary
# directory, loopback, a free port), and nothing may listen on port 25 or send mail anywhere.
#
# Quiet unless something fails. Needs root (or sudo) and apt-get; .ci/run calls it before
# `cargo test`.
set -euo pipefail

if [[ -x /usr/sbin/postfix ]]; then
    exit 0
fi
command -v apt-get >/dev/null || {
    echo "postfix is missing and there is no apt-get: install it by hand" >&2
    exit 1
}
sudo=()
((EUID == 0)) || sudo=(sudo)
log=$(mktemp "${TMPDIR:-/tmp}/postfix-install.XXXXXX")
trap 'rm -f "$log"' EXIT

# "No configuration": the package writes no main.cf for the system instance, so even a start
# attempt would do nothing.
echo "postfix postfix/main_mailer_type select No configuration" |
    "${sudo[@]}" debconf-set-selections

# Package scripts ask invoke-rc.d before starting a service; 101 means "not now". Only a policy
# this script put there is removed again.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from smtp2gmail tests/postfix/install.sh\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    trap 'rm -f "$log"; "${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "installing postfix (apt-get) for the Postfix relayhost test"
{
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends postfix
} </dev/null >"$log" 2>&1 || {
    cat "$log" >&2
    echo "apt-get install postfix failed" >&2
    exit 1
}
