#!/usr/bin/env bash
# The write-side outage a user sees when a pair's primary dies: the time from SIGKILL of `ss1`
# until one piped WRITE (sent right after the kill, riding through the failover) returns
# success, for the default heartbeat flags and for 200 ms / 1 s heartbeats. The baseline is
# the heartbeat timeout itself (detection can take no less): the table gives the outage and
# its ratio to that timeout. Usage (after `cargo build --release`):
#   bench/write_outage.sh [ROUNDS]     (default 3; each default-flag round takes ~20 s)
# Servers listen on 127.0.0.1 on free ports in a temp dir and are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PAIRFS_BIN_DIR:-target/release}
ROUNDS=${1:-3}
ROOT=$(mktemp -d /tmp/pairfs-outage.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT

# wait_for CMD...: retries CMD every 50 ms for at most 60 s.
wait_for() {
    local i
    for ((i = 0; i < 1200; i++)); do
        if "$@"; then return 0; fi
        sleep 0.05
    done
    echo "timed out waiting for: $*" >&2
    exit 1
}

# one_round DIR INTERVAL_MS TIMEOUT_MS: prints the outage in ms.
one_round() {
    local d=$1 hb=$2 to=$3
    mkdir -p "$d"
    export XDG_CONFIG_HOME=$d/config
    "$BIN/bin_nm" --host 127.0.0.1 --port 0 --http-port 0 --data "$d/nm" \
        --cluster-key-file "$d/key" --heartbeat-interval-ms "$hb" --heartbeat-timeout-ms "$to" \
        >"$d/nm.log" 2>&1 &
    local nm=$!
    PIDS+=("$nm")
    wait_for grep -q '"event":"nm_listen"' "$d/nm.log"
    local port
    port=$(grep -o '"addr":"127.0.0.1:[0-9]*"' "$d/nm.log" | head -n 1 | grep -o '[0-9]*"$' | tr -d '"')
    local ss
    for ss in ss1 ss1_backup; do
        "$BIN/bin_ss" --username "$ss" --host 127.0.0.1 --client-port 0 --nm-port "$port" \
            --storage "$d/$ss" --cluster-key-file "$d/key" --heartbeat-interval-ms "$hb" \
            >"$d/$ss.log" 2>&1 &
        PIDS+=("$!")
        eval "pid_$ss=$!"
        wait_for grep -q '"event":"ss_listen"' "$d/$ss.log"
    done
    local client="$BIN/bin_client --nm-port $port --username alice"
    wait_for test "$(grep -c '"event":"nm_ss_register"' "$d/nm.log")" -ge 2
    printf 'CREATE m.txt\nWRITE m.txt 0\n0 Start.\nETIRW\n' | $client >/dev/null
    pair_active() { printf 'STATUS\n' | $client | grep 'ss1 -> ss1_backup' | grep -q ACTIVE; }
    wait_for pair_active
    local t0 t1
    t0=$(date +%s%N)
    # shellcheck disable=SC2154 # set by eval above
    kill -KILL "$pid_ss1"
    if ! printf 'WRITE m.txt 1\n0 After.\nETIRW\n' | $client >"$d/out" 2>"$d/err"; then
        echo "the WRITE after the kill failed: $(cat "$d/out" "$d/err")" >&2
        exit 1
    fi
    t1=$(date +%s%N)
    # shellcheck disable=SC2154
    kill -TERM "$pid_ss1_backup" "$nm" 2>/dev/null || true
    wait "$pid_ss1_backup" "$nm" 2>/dev/null || true
    echo $(((t1 - t0) / 1000000))
}

median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-28s %8s %22s %12s %10s\n' "heartbeat interval/timeout" rounds "outage ms (each)" "median ms" "÷ timeout"
for flags in "5000 15000" "200 1000"; do
    read -r hb to <<<"$flags"
    runs=()
    for ((r = 1; r <= ROUNDS; r++)); do
        runs+=("$(one_round "$ROOT/$hb-$r" "$hb" "$to")")
    done
    m=$(echo "${runs[*]}" | median)
    printf '%-28s %8s %22s %12s %10s\n' "$hb ms / $to ms" "$ROUNDS" "${runs[*]}" "$m" \
        "$(awk -v m="$m" -v t="$to" 'BEGIN {printf "%.2f", m / t}')"
done
