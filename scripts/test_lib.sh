# Shared by test_replication.sh and test_heartbeat.sh (sourced, never run): the temporary
# directory, servers started in the background and stopped by PID when the script exits (with
# their last log lines on failure), pass/fail lines, and waits that poll a condition with a
# deadline (WAIT_S) instead of sleeping to synchronise, and starting the name server and
# storage servers of one test cluster. The sourcing script sets WAIT_S, STOP_WAIT_S,
# HEARTBEAT_MS, HEARTBEAT_TIMEOUT_MS and TEST_NAME (the temporary directory's prefix) first.

BIN=target/release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pairfs_${TEST_NAME}.XXXXXX")
PIDS=()
NM_PORT=""

cleanup() {
    local status=$? pid i
    # Storage servers first (started last), then the name server.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || continue
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < STOP_WAIT_S * 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for log in "$TMP"/*.log; do
            [ -f "$log" ] || continue
            echo "--- last lines of $(basename "$log"):" >&2
            tail -n 15 "$log" >&2 || true
        done
    fi
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

pass() {
    echo "ok: $*"
}

# Lines of log $1 with event $2 that also contain the fixed string $3 (if given).
count_events() {
    local log=$1 event=$2 also=${3:-}
    if [ -n "$also" ]; then
        { grep -F "\"event\":\"$event\"" "$log" 2>/dev/null || true; } | grep -cF -- "$also" || true
    else
        grep -cF "\"event\":\"$event\"" "$log" 2>/dev/null || true
    fi
}

# Polls the shell condition "$@" until it holds; false when WAIT_S ran out.
wait_for() {
    local deadline=$((SECONDS + WAIT_S))
    while ! "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

events_above() {
    local n
    n=$(count_events "$1" "$2" "${4:-}")
    [ "${n:-0}" -gt "$3" ]
}

# The address a server logged in its first event $2 line of log $1.
logged_addr() {
    grep -F "\"event\":\"$2\"" "$1" 2>/dev/null | head -n 1 |
        sed -n 's/.*"addr":"\([^"]*\)".*/\1/p'
}

# Starts a server in the background with its log at $TMP/$1.log; the rest are its arguments.
declare -A PID_OF
start() {
    local name=$1
    shift
    "$@" </dev/null >>"$TMP/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]=$!
}

# The client's user key lives in the temp dir, not in the real home.
client() {
    XDG_CONFIG_HOME="$TMP/config" "$BIN/bin_client" --nm-port "$NM_PORT" --username alice
}

# Runs client commands $1 and fails unless the output is exactly $2.
expect_client() {
    local out
    out=$(printf '%b' "$1" | client 2>&1) || true
    [ "$out" = "$2" ] || fail "client '$1' printed '$out', expected '$2'"
}


# Builds the three binaries the scripts run.
build_bins() {
    cargo build --release --quiet --bin bin_nm --bin bin_ss --bin bin_client
}

# Starts the name server with its own cluster key ($KEY) and the script's heartbeat settings,
# waits until it listens, and sets NM_ADDR and NM_PORT from its nm_listen line.
start_nm() {
    KEY="$TMP/cluster.key"
    start nm "$BIN/bin_nm" --port 0 --http-port 0 --data "$TMP/nm_data" \
        --heartbeat-interval-ms "$HEARTBEAT_MS" --heartbeat-timeout-ms "$HEARTBEAT_TIMEOUT_MS" \
        --cluster-key-file "$KEY"
    wait_for events_above "$TMP/nm.log" nm_listen 0 || fail "the name server did not log nm_listen"
    NM_ADDR=$(logged_addr "$TMP/nm.log" nm_listen)
    NM_PORT=${NM_ADDR##*:}
    [ -n "$NM_PORT" ] || fail "no address in the name server's nm_listen line"
}

# Starts storage server $1 on client port $2 (0: any free one) with its storage in $TMP.
start_ss() {
    local ss=$1 port=$2
    start "$ss" "$BIN/bin_ss" --nm-port "$NM_PORT" --client-port "$port" --username "$ss" \
        --storage "$TMP/storage_$ss" --heartbeat-interval-ms "$HEARTBEAT_MS" \
        --cluster-key-file "$KEY"
}
