#!/bin/sh
# check_haproxy: keepalived vrrp_script for haproxy (install as /usr/local/sbin/check_haproxy,
# root-owned, mode 0755; see docs/install.md).
#
#   check_haproxy [PORT]
#
# Exit 0 = healthy, anything else = failed (keepalived counts `fall` failures in a row
# before it applies the script's weight or enters FAULT, and `rise` successes to undo it).
#
# Healthy means: a haproxy process is running and, when a port is given (argument or
# HAPROXY_CHECK_PORT), something listens on that TCP port. When unhealthy it tries ONE
# restart, then checks again. Restarts are rate-limited by a stamp file: within
# HAPROXY_RESTART_INTERVAL seconds of the last attempt it only reports the failure, so
# a haproxy that keeps dying makes keepalived fail over instead of being restarted every
# interval. knotify's "haproxy-on-master" rule restarts haproxy on a real MASTER
# transition; this script only repairs a haproxy that died under a node's feet.
#
# keepalived passes its own environment (the keepalived unit's) and no arguments of its
# own. Settings, all optional, for testing or via `script "/usr/bin/env NAME=VALUE ...
# /usr/local/sbin/check_haproxy"`:
#   HAPROXY_PIDFILE           check the pid(s) in this file instead of `pidof haproxy`
#   HAPROXY_CHECK_PORT        TCP port that must have a listener (default: none)
#   HAPROXY_RESTART_CMD       restart command, split on blanks, no shell
#                             (default: systemctl restart haproxy.service)
#   HAPROXY_RESTART_TIMEOUT   seconds the restart may take (default 8)
#   HAPROXY_RECHECK_WAIT      seconds to wait for haproxy to come back (default 3)
#   HAPROXY_RESTART_INTERVAL  seconds between two restart attempts (default 300)
#   HAPROXY_RESTART_STAMP     the stamp file (default /run/check_haproxy.restart)
# Keep RESTART_TIMEOUT + RECHECK_WAIT below the vrrp_script `timeout`, or keepalived
# kills the check (process group) and counts it as a failure.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022
set -f  # no globbing anywhere: the restart command and the pid file are split on blanks only

port=${1:-${HAPROXY_CHECK_PORT:-}}
pidfile=${HAPROXY_PIDFILE:-}
restart_cmd=${HAPROXY_RESTART_CMD:-systemctl restart haproxy.service}
restart_timeout=${HAPROXY_RESTART_TIMEOUT:-8}
recheck_wait=${HAPROXY_RECHECK_WAIT:-3}
interval=${HAPROXY_RESTART_INTERVAL:-300}
stamp=${HAPROXY_RESTART_STAMP:-/run/check_haproxy.restart}

say() {
    # keepalived sends the script's output to /dev/null: syslog is where this shows.
    logger -t check_haproxy -p daemon.warning -- "$*" 2>/dev/null
    echo "check_haproxy: $*" >&2
}

is_number() {
    case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac
}

running() {
    if [ -n "$pidfile" ]; then
        [ -r "$pidfile" ] || return 1
        # haproxy -W writes the master's pid; older set-ups one pid per line: any alive will do.
        for pid in $(cat "$pidfile"); do
            is_number "$pid" && kill -0 "$pid" 2>/dev/null && return 0
        done
        return 1
    fi
    pidof haproxy >/dev/null 2>&1
}

listening() {
    [ -z "$port" ] && return 0
    # ss comes with iproute2, which keepalived depends on. A listener is what matters:
    # the kernel completes TCP handshakes for it, so a connect test would say no more.
    [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]
}

healthy() {
    running && listening
}

for value in "$restart_timeout" "$recheck_wait" "$interval"; do
    if ! is_number "$value"; then
        say "settings must be whole seconds, found '$value'"
        exit 2
    fi
done
if [ -n "$port" ] && ! is_number "$port"; then
    say "the port must be a number, found '$port'"
    exit 2
fi

healthy && exit 0

now=$(date +%s)
last=$(cat "$stamp" 2>/dev/null)
is_number "$last" || last=0
if [ "$last" -gt "$now" ]; then
    last=0  # the clock went back: do not stay rate-limited for ever
fi
if [ $((now - last)) -lt "$interval" ]; then
    say "haproxy unhealthy; last restart attempt $((now - last))s ago (limit: one per ${interval}s), not restarting"
    exit 1
fi

# The stamp is written before the attempt, so a restart that hangs or kills us still counts.
if ! echo "$now" >"$stamp"; then
    say "cannot write the stamp file $stamp; not restarting (it would restart every interval)"
    exit 1
fi
say "haproxy unhealthy (running: $(running && echo yes || echo no), port: ${port:-not checked}); restarting: $restart_cmd"
# shellcheck disable=SC2086
timeout -k 2 "$restart_timeout" $restart_cmd >/dev/null 2>&1
rc=$?
[ "$rc" -eq 0 ] || say "restart command exited $rc"

waited=0
while :; do
    if healthy; then
        say "haproxy healthy again after the restart"
        exit 0
    fi
    [ "$waited" -ge "$recheck_wait" ] && break
    sleep 1
    waited=$((waited + 1))
done
say "haproxy still unhealthy after the restart"
exit 1
