#!/bin/bash
# Stop everything env-up.sh started, by the PIDs it recorded.
#
# For each $BASE/pids/<name>: SIGTERM, wait up to 10 s, then SIGKILL.
# Processes are never looked up by name.  Safe to run twice.  Also
# deletes the throwaway registry storage $BASE/registry/data.
# Usage: BASE=/tmp/hermes-test scripts/env-down.sh
set -eu

BASE=${BASE:-/tmp/hermes-test}
STOP_TIMEOUT_S=10

# kill -0 also succeeds for a zombie, which a container without a reaping
# init may keep around; a zombie has already stopped, so it counts as gone.
alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
    [ "$state" != Z ]
}

stop_pid() {
    local name=$1 pid=$2 deadline
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    if alive "$pid"; then
        echo "env-down: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

main() {
    local f pid
    case $BASE in /*) ;; *) echo "env-down: BASE must be absolute" >&2
        exit 1 ;;
    esac
    for f in "$BASE"/pids/*; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        case $pid in
            ''|*[!0-9]*) echo "env-down: $f: not a pid: '$pid'" >&2 ;;
            *) stop_pid "$(basename "$f")" "$pid" ;;
        esac
        rm -f "$f"
    done
    rm -rf "$BASE/registry/data"
}

main
