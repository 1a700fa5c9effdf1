#!/bin/sh
# Vizier, Castra's in-guest agent. POSIX sh only (busybox included), any architecture.
#
#   vizier.sh run DIR LOG         the agent: heartbeat into DIR every few seconds
#   vizier.sh supervise DIR LOG   keep exactly one agent running (respawn loop, lock in DIR)
#   vizier.sh banner DIR          print VIZIER/<protocol> and a JSON line about the agent
#   vizier.sh watch DIR SECS      the banner every SECS seconds, or "gone <why>", until stdout
#                                 closes (castrad's health check: one session, not one a check)
#   vizier.sh stop DIR            stop the supervisor and the agent
#
# DIR holds: lock/ (the supervisor's lock: its pid, boot id and version), agent.pid, started_at,
# heartbeat; and `supervisor` (which supervisor runs it, written by pipeline/driver.sh).
VIZIER_VERSION=@VERSION@
VIZIER_PROTOCOL=1
HEARTBEAT_SECS=2

cmd=${1:-}
dir=${2:-}
log=${3:-/dev/null}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: vizier.sh run|supervise|banner|watch|stop DIR [LOG|SECS]" >&2; exit 2; }
self=$0

now() { date +%s; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
say() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) vizier $VIZIER_VERSION [$$] $*" >>"$log"; }

# The banner on stdout, or why there is none (on stderr for `banner`, as a "gone" line for
# `watch`). Files are read with the `read` builtin: `watch` calls this every few seconds.
banner() {
    pid= hb= started= version=
    { read -r pid <"$dir/agent.pid"; } 2>/dev/null
    alive "$pid" || { unavailable "not running"; return 1; }
    { read -r hb <"$dir/heartbeat"; } 2>/dev/null
    [ -n "$hb" ] || { unavailable "starting"; return 1; }
    { read -r started <"$dir/started_at"; } 2>/dev/null
    { read -r version <"$dir/lock/version"; } 2>/dev/null
    echo "VIZIER/$VIZIER_PROTOCOL"
    printf '{"version":"%s","pid":%s,"started_at":%s,"heartbeat":%s,"now":%s}\n' \
        "${version:-unknown}" "$pid" "${started:-0}" "$hb" "$(now)"
}
unavailable() {
    if [ "$cmd" = watch ]; then echo "gone vizier: $1"; else echo "vizier: $1" >&2; fi
}

case $cmd in
run)
    [ -d "$dir" ] || mkdir -p "$dir"
    # Heartbeat and start time first: a banner is only given once agent.pid names us, so this
    # first heartbeat needs no atomic replace (the later ones do: banners are read meanwhile).
    t=$(now)
    echo "$t" >"$dir/heartbeat"
    echo "$t" >"$dir/started_at"
    echo $$ >"$dir/agent.pid"
    say "agent started"
    trap 'say "agent stopping"; exit 0' TERM INT
    while :; do
        sleep "$HEARTBEAT_SECS" &
        wait $!
        now >"$dir/heartbeat.tmp" && mv -f "$dir/heartbeat.tmp" "$dir/heartbeat"
    done
    ;;
supervise)
    [ -d "$dir" ] && [ -d "${log%/*}" ] || mkdir -p "$dir" "${log%/*}"
    # The lock is a directory: mkdir is atomic, so two supervisors can never both hold it.
    # It names its holder's pid and boot: after a reboot (a supervisor started at boot by
    # systemd, say) the last boot's pid may name another process.
    boot= hboot=
    { read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null
    if ! mkdir "$dir/lock" 2>/dev/null; then
        holder=
        { read -r holder <"$dir/lock/pid"; read -r hboot <"$dir/lock/boot"; } 2>/dev/null
        if alive "$holder" && [ "${hboot:-$boot}" = "$boot" ]; then
            exit 0 # already supervised: enabling again changes nothing
        fi
        rm -rf "$dir/lock"
        mkdir "$dir/lock" 2>/dev/null || exit 0
    fi
    echo $$ >"$dir/lock/pid"
    echo "$boot" >"$dir/lock/boot"
    echo "$VIZIER_VERSION" >"$dir/lock/version"
    child=
    trap 'alive "$child" && kill "$child"; rm -rf "$dir/lock"; say "supervisor stopping"; exit 0' TERM INT
    # The agent first, the log line after: whoever enabled us is waiting for the agent.
    sh "$self" run "$dir" "$log" </dev/null &
    child=$!
    say "supervisor started"
    while :; do
        wait "$child"
        say "agent exited; restarting it"
        sleep 1
        sh "$self" run "$dir" "$log" </dev/null &
        child=$!
    done
    ;;
banner)
    banner
    ;;
watch)
    # Ends when castrad goes away: the next write to the closed session kills us (SIGPIPE).
    every=${3:-2}
    while :; do
        banner
        sleep "$every"
    done
    ;;
stop)
    sup=$(cat "$dir/lock/pid" 2>/dev/null)
    alive "$sup" && kill "$sup"
    pid=$(cat "$dir/agent.pid" 2>/dev/null)
    alive "$pid" && kill "$pid"
    i=0
    while alive "$sup" || alive "$pid"; do
        i=$((i + 1))
        [ "$i" -gt 50 ] && break
        sleep 0.1
    done
    rm -rf "$dir/lock"
    ;;
*)
    echo "vizier.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
