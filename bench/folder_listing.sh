#!/usr/bin/env bash
# Folder listing against the size of the index: VIEWFOLDER of a small folder is a range scan,
# so its cost must not grow with the number of files elsewhere; VIEW -a (which lists every
# file) is the baseline measured in the same run.
#
# Usage: bench/folder_listing.sh [FILES] (default 20000), after `cargo build --release`.
# It starts its own name server and storage server on free ports in a temp dir (files are
# put under the storage directory by hand and adopted at startup), prints one table, and
# stops its servers by PID.
set -euo pipefail
N=${1:-20000}
REPS=${REPS:-2000}
B=${BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
T=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
wait_for() { # file pattern
    for _ in $(seq 1 600); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for $2 in $1" >&2
    tail -5 "$1" >&2
    return 1
}
mkdir -p "$T/ss1/files/big" "$T/ss1/files/small"
(cd "$T/ss1/files/big" && seq -f 'f%g.txt' 1 "$N" | xargs touch)
touch "$T/ss1/files/small/a.txt" "$T/ss1/files/small/b.txt" "$T/ss1/files/small/c.txt"
"$B/bin_nm" --port 0 --http-port 0 --data "$T/nm" --cluster-key-file "$T/key" >"$T/nm.log" &
PIDS+=($!)
wait_for "$T/nm.log" '"event":"nm_listen"'
PORT=$(grep -o '"addr":"127.0.0.1:[0-9]*"' "$T/nm.log" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
"$B/bin_ss" --nm-port "$PORT" --client-port 0 --storage "$T/ss1" --username ss1 \
    --cluster-key-file "$T/key" >"$T/ss1.log" &
PIDS+=($!)
wait_for "$T/nm.log" '"event":"nm_ss_register"'
# Milliseconds one command takes: the fastest of three clients each running it `reps` times,
# divided by `reps` (the client's start-up, a few ms, is spread over the runs; the fastest
# run is the one least disturbed by other work on the machine).
run_us() { # command reps -> total microseconds
    local input start end
    input=$(for _ in $(seq 1 "$2"); do echo "$1"; done)
    start=$(date +%s%N)
    echo "$input" | "$B/bin_client" --nm-port "$PORT" --username bench >/dev/null
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
}
per_cmd_ms() { # command reps
    local best=0 t
    for _ in 1 2 3; do
        t=$(run_us "$1" "$2")
        if [ "$best" -eq 0 ] || [ "$t" -lt "$best" ]; then best=$t; fi
    done
    awk -v t="$best" -v r="$2" 'BEGIN { printf "%.3f", t / r / 1000 }'
}
small=$(per_cmd_ms "VIEWFOLDER /small" "$REPS")
root=$(per_cmd_ms "VIEWFOLDER /" "$REPS")
big=$(per_cmd_ms "VIEWFOLDER /big" 20)
all=$(per_cmd_ms "VIEW -a" 20)
echo "| command | entries listed | files in the index | ms per command |"
echo "|---|---:|---:|---:|"
echo "| VIEWFOLDER /small | 3 | $((N + 3)) | $small |"
echo "| VIEWFOLDER / | 2 | $((N + 3)) | $root |"
echo "| VIEWFOLDER /big | $N | $((N + 3)) | $big |"
echo "| VIEW -a (baseline: every file) | $((N + 3)) | $((N + 3)) | $all |"
