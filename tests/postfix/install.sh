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
sudo=()
((EUID == 0)) || sudo=(sudo)

# "No configuration": the package writes no main.cf for the system instance, so even a start
# attempt would do nothing.
echo "postfix postfix/main_mailer_type select No configuration" |
    "${sudo[@]}" debconf-set-selections

bash "$(dirname "${BASH_SOURCE[0]}")/../install-debian-package.sh" \
    "for the Postfix relayhost test" postfix
