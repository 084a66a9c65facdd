#!/usr/bin/env bash
# Make sure a real Prometheus binary exists for the usage tests (tests/prometheus_harness.py).
# Debian's `prometheus` package is the source; the package's own service is not used (the tests
# start their own Prometheus on a free 127.0.0.1 port), so it is stopped if the install starts it.
# Exits 0 with a note when it cannot install (not root, no apt): the Prometheus tests then skip
# with a clear reason instead of failing the whole run.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_prometheus: prometheus missing and cannot apt-get install it (needs root + apt); Prometheus tests will skip" >&2
    exit 0
fi
echo "ensure_prometheus: installing Debian package 'prometheus' ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# policy-rc.d 101 keeps the package's post-install from starting a system Prometheus on :9090.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]
