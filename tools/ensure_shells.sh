#!/usr/bin/env bash
# Make sure real zsh and fish exist for the completion tests (tests/test_cli_completion.py loads
# what `maas completion SHELL` prints into each shell and asks it to complete). Bash is already
# there. Debian's `zsh` and `fish` packages are the source.
# Exits 0 with a note when it cannot install (not root, no apt): the completion tests then fail,
# saying to run this script, rather than the whole run stopping here.
set -euo pipefail

have_all() { command -v zsh >/dev/null 2>&1 && command -v fish >/dev/null 2>&1; }

if have_all; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_shells: zsh or fish missing and cannot apt-get install them (needs root + apt); the completion tests will fail" >&2
    exit 0
fi
# Two runs of this script at once (two `make test`s) queue here; the second finds the shells installed.
lock_dir=/run/lock
[ -d "$lock_dir" ] && [ -w "$lock_dir" ] || lock_dir=/tmp
exec 8>"$lock_dir/maas-ensure-shells.lock"
flock 8
if have_all; then
    exit 0
fi
echo "ensure_shells: installing Debian packages 'zsh' and 'fish' ..." >&2
export DEBIAN_FRONTEND=noninteractive
# The other ensure_*.sh scripts take apt's locks without waiting: wait for them rather than fail.
# The timeout covers dpkg's lock; apt-get update's lists lock is not covered, hence the retries.
apt_opts=(-o DPkg::Lock::Timeout=300)
# Quiet when it works (debconf's notes are noise); the whole log when it does not.
quietly() {
    local out attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if out=$("$@" 2>&1); then
            return 0
        fi
        # Only a lock held by another apt is worth waiting out; any other failure is reported now.
        grep -q "Could not get lock\|Unable to lock\|is another process using it" <<<"$out" || break
        sleep 3
    done
    echo "$out" >&2
    echo "ensure_shells: '$*' failed" >&2
    return 1
}
quietly apt-get "${apt_opts[@]}" update -qq
quietly apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends zsh fish
have_all
