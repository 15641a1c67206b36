#!/usr/bin/env bash
# Starts or stops the local cluster of `make cluster` / `make stop`: one name server and two
# primary/backup pairs (ss1 with ss1_backup, ss2 with ss2_backup), all on loopback, with data,
# logs and PIDs under ./run/. A server named `X_backup` is paired with `X` by the name server.
#
#   scripts/cluster.sh start   # expects ./bin_nm ./bin_ss ./bin_client (built by `make`)
#   scripts/cluster.sh stop
#
# Processes are only ever stopped by the PIDs recorded in run/*.pid.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=run
NM_PORT=5000
NM_HTTP_PORT=5080
KEY="$RUN/cluster.key"
# name:client-port of each storage server (primaries on 600N, their backups on 601N).
SERVERS="ss1:6001 ss1_backup:6011 ss2:6002 ss2_backup:6012"
# How long a server may take to log that it is ready, and to exit on SIGTERM.
READY_WAIT_S=30
STOP_WAIT_S=15

# True when the PID in file $1 is a live pairfs process (guards against a reused PID).
alive() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q 'bin_' "/proc/$pid/cmdline" 2>/dev/null || return 1
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
        [ -x "./$b" ] || { echo "ERROR: ./$b missing: run 'make' first" >&2; exit 1; }
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

    nohup ./bin_nm --port "$NM_PORT" --http-port "$NM_HTTP_PORT" --data "$RUN/nm_data" \
        --cluster-key-file "$KEY" </dev/null >"$RUN/nm.log" 2>&1 &
    echo $! >"$RUN/nm.pid"
    wait_event "$RUN/nm.pid" "$RUN/nm.log" nm_listen

    local n=0 entry name port
    for entry in $SERVERS; do
        name=${entry%%:*}
        port=${entry##*:}
        nohup ./bin_ss --username "$name" --client-port "$port" --nm-port "$NM_PORT" \
            --storage "$RUN/storage_$name" --cluster-key-file "$KEY" \
            </dev/null >"$RUN/$name.log" 2>&1 &
        echo $! >"$RUN/$name.pid"
        wait_event "$RUN/$name.pid" "$RUN/$name.log" ss_listen
        n=$((n + 1))
    done
    wait_event "$RUN/nm.pid" "$RUN/nm.log" nm_ss_register "$n"

    cat <<MSG
pairfs is running:
  name server      127.0.0.1:$NM_PORT (status http://127.0.0.1:$NM_HTTP_PORT/status)  log $RUN/nm.log
  pair ss1         ss1 127.0.0.1:6001 -> ss1_backup 127.0.0.1:6011
  pair ss2         ss2 127.0.0.1:6002 -> ss2_backup 127.0.0.1:6012
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
        pid=$(cat "$f")
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
