#!/usr/bin/env bash
# Starts or stops the local cluster of `make cluster` / `make stop`: one name server and two
# primary/backup pairs (ss1 with ss1_backup, ss2 with ss2_backup), all on loopback, with data,
# logs and PIDs under ./run/. A server named `X_backup` is paired with `X` by the name server.
#
#   scripts/cluster.sh start   # expects ./bin_nm ./bin_ss ./bin_client (built by `make`)
#   scripts/cluster.sh stop
#
# Processes are only ever stopped by the PIDs recorded in run/*.pid. Each PID file holds the
# PID and the process's start time (field 22 of /proc/PID/stat, fixed at fork), so a PID reused
# by another process after a crash is never taken for a server.
#
# Environment overrides (for tests, or a second cluster beside the usual one):
#   PAIRFS_RUN_DIR (./run), PAIRFS_BIN_DIR (.), PAIRFS_NM_PORT (5000),
#   PAIRFS_NM_HTTP_PORT (5080), PAIRFS_SERVERS ("ss1:6001 ss1_backup:6011 ss2:6002 ss2_backup:6012")
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${PAIRFS_RUN_DIR:-run}
BIN=${PAIRFS_BIN_DIR:-.}
NM_PORT=${PAIRFS_NM_PORT:-5000}
NM_HTTP_PORT=${PAIRFS_NM_HTTP_PORT:-5080}
KEY="$RUN/cluster.key"
# name:client-port of each storage server (primaries on 600N, their backups on 601N).
SERVERS=${PAIRFS_SERVERS:-"ss1:6001 ss1_backup:6011 ss2:6002 ss2_backup:6012"}
# How long a server may take to log that it is ready, and to exit on SIGTERM.
READY_WAIT_S=30
STOP_WAIT_S=15

# The start time of process $1 (clock ticks since boot; empty if it is gone). The command
# name in /proc/PID/stat may hold spaces and parentheses, so fields are counted after its end.
started() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    # After the name: state is field 3, start time field 22.
    set -- $stat
    echo "${20:-}"
}

# Launches "$@" in the background with output to log $2... and records its PID and start time
# in pidfile $1. The start time is read at once: it is fixed at fork, before the exec.
launch() {
    local pidfile=$1 log=$2 pid
    shift 2
    nohup "$@" </dev/null >"$log" 2>&1 &
    pid=$!
    echo "$pid $(started "$pid")" >"$pidfile"
}

# True when the process recorded in pidfile $1 is alive: its PID exists and has the recorded
# start time (so a PID reused since is not taken for it).
alive() {
    local pidfile=$1 pid at
    [ -f "$pidfile" ] || return 1
    read -r pid at <"$pidfile" || true
    [ -n "${pid:-}" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [ -z "${at:-}" ] || [ "$(started "$pid")" = "$at" ]
}

# Waits until log $2 has a line with event $3 (at least $4 of them), or fails loudly if the
# process in pidfile $1 died or the wait ran out.
wait_event() {
    local pidfile=$1 log=$2 event=$3 count=${4:-1} i n
    for ((i = 0; i < READY_WAIT_S * 10; i++)); do
        # The log may not exist yet: the background shell creates it.
        n=$(grep -c "\"event\":\"$event\"" "$log" 2>/dev/null || true)
        if [ "${n:-0}" -ge "$count" ]; then
            return 0
        fi
        if ! alive "$pidfile"; then
            echo "ERROR: $(basename "$pidfile" .pid) exited before logging $event; last lines of $log:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "ERROR: no $event in $log after ${READY_WAIT_S}s; last lines:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
}

start() {
    for b in bin_nm bin_ss bin_client; do
        [ -x "$BIN/$b" ] || { echo "ERROR: $BIN/$b missing: run 'make' first" >&2; exit 1; }
    done
    mkdir -p "$RUN"
    local running=""
    for f in "$RUN"/*.pid; do
        [ -e "$f" ] || continue
        if alive "$f"; then running="$running $(basename "$f" .pid)"; else rm -f "$f"; fi
    done
    if [ -n "$running" ]; then
        echo "The cluster is already running (${running# }); stop it with 'make stop'."
        return 0
    fi

    launch "$RUN/nm.pid" "$RUN/nm.log" "$BIN/bin_nm" --port "$NM_PORT" \
        --http-port "$NM_HTTP_PORT" --data "$RUN/nm_data" --cluster-key-file "$KEY"
    wait_event "$RUN/nm.pid" "$RUN/nm.log" nm_listen

    local n=0 entry name port
    for entry in $SERVERS; do
        name=${entry%%:*}
        port=${entry##*:}
        launch "$RUN/$name.pid" "$RUN/$name.log" "$BIN/bin_ss" --username "$name" \
            --client-port "$port" --nm-port "$NM_PORT" --storage "$RUN/storage_$name" \
            --cluster-key-file "$KEY"
        wait_event "$RUN/$name.pid" "$RUN/$name.log" ss_listen
        n=$((n + 1))
    done
    wait_event "$RUN/nm.pid" "$RUN/nm.log" nm_ss_register "$n"

    cat <<MSG
pairfs is running:
  name server      127.0.0.1:$NM_PORT (status http://127.0.0.1:$NM_HTTP_PORT/status)  log $RUN/nm.log
  servers          $SERVERS (name:port; X_backup is X's backup)
  logs             $RUN/nm.log, $RUN/<server>.log
  data             $RUN/nm_data, $RUN/storage_<server> (key $KEY)

Connect a client:
  ./bin_client --username alice
or pipe commands in:
  printf 'CREATE a.txt\nWRITE a.txt 0\n0 Hello world.\nETIRW\nREAD a.txt\nSTATUS\n' | ./bin_client --username alice

Stop it with: make stop
MSG
}

stop() {
    local found=0 f pid name i
    # Storage servers first, so they do not spend the shutdown reconnecting to a gone name server.
    for f in $(ls "$RUN"/ss*.pid 2>/dev/null) $(ls "$RUN"/nm.pid 2>/dev/null); do
        found=1
        name=$(basename "$f" .pid)
        if ! alive "$f"; then
            echo "$name was not running"
            rm -f "$f"
            continue
        fi
        read -r pid _ <"$f" || true
        kill -TERM "$pid"
        for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) did not exit ${STOP_WAIT_S}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        else
            echo "stopped $name (pid $pid)"
        fi
        rm -f "$f"
    done
    [ "$found" = 1 ] || echo "No cluster running (no pid files in $RUN/)."
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
