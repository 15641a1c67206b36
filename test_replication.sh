#!/usr/bin/env bash
# Replication end to end through the real binaries (SPEC §5 and §9): builds, starts its own
# name server and one pair (ss1 with ss1_backup) on free ports in a temporary directory with
# its own cluster key, then checks on disk that CREATE, WRITE, UNDO, DELETE and UPLOAD (of a
# binary file) reach the backup's files/ byte for byte. Prints one line per check and exits
# non-zero on the first failure. A trap stops the servers it started, by PID, and removes the
# temporary directory.
#
# Every wait polls for a condition (a log event, a file on disk) with a deadline; nothing sleeps
# to synchronise.
set -euo pipefail
cd "$(dirname "$0")"

# How long any one condition may take before the check fails.
WAIT_S=${WAIT_S:-30}
# How long a server may take to exit after SIGTERM before it is killed.
STOP_WAIT_S=10
HEARTBEAT_MS=200
HEARTBEAT_TIMEOUT_MS=2000

TEST_NAME=repl
# shellcheck source=scripts/test_lib.sh
source scripts/test_lib.sh

# ---------------------------------------------------------------- build and start
build_bins
start_nm

for ss in ss1 ss1_backup; do
    start_ss "$ss" 0
done
for ss in ss1 ss1_backup; do
    wait_for events_above "$TMP/$ss.log" ss_listen 0 || fail "$ss did not log ss_listen"
    [ -n "$(logged_addr "$TMP/$ss.log" ss_listen)" ] || fail "no address in $ss's ss_listen line"
done
wait_for events_above "$TMP/nm.log" nm_ss_register 1 || fail "ss1 and ss1_backup did not both register"
pass "name server on $NM_ADDR, ss1 and ss1_backup registered"

wait_for events_above "$TMP/nm.log" replication_assign 0 "ss1_backup" ||
    fail "no replication_assign event pairing ss1 with ss1_backup"
pass "paired: $(grep -F '"event":"replication_assign"' "$TMP/nm.log" | head -n 1 |
    sed -n 's/.*"msg":"\([^"]*\)".*/\1/p')"

P="$TMP/storage_ss1/files"
B="$TMP/storage_ss1_backup/files"

# True when the backup holds file $1 with exactly the primary's bytes.
same_on_both() {
    [ -f "$P/$1" ] && [ -f "$B/$1" ] && cmp -s "$P/$1" "$B/$1"
}

# True when the backup no longer holds file $1.
gone_from_backup() {
    [ ! -e "$B/$1" ]
}

# Waits for one more replication_worker_success event for file $1 (beyond $2 seen before the
# change) and for the backup to hold the primary's bytes; then reports check $3.
expect_replicated() {
    local file=$1 before=$2 what=$3
    wait_for events_above "$TMP/nm.log" replication_worker_success "$before" "$file" ||
        fail "$what: no replication_worker_success for $file"
    wait_for same_on_both "$file" || fail "$what: $B/$file differs from $P/$file"
    pass "$what reached the backup byte for byte ($(wc -c <"$B/$file") bytes)"
}

F=repl.txt

# ---------------------------------------------------------------- CREATE
n=$(count_events "$TMP/nm.log" replication_worker_success "$F")
expect_client "CREATE $F\n" "File Created Successfully!"
expect_replicated "$F" "$n" CREATE

# ---------------------------------------------------------------- WRITE
n=$(count_events "$TMP/nm.log" replication_worker_success "$F")
expect_client "WRITE $F 0\n0 Hello replicated world.\nETIRW\n" \
    "Sentence: Hello replicated world.
Write Successful!"
[ "$(cat "$P/$F")" = "Hello replicated world." ] || fail "WRITE: the primary holds '$(cat "$P/$F")'"
expect_replicated "$F" "$n" WRITE

n=$(count_events "$TMP/nm.log" replication_worker_success "$F")
expect_client "WRITE $F 1\n0 Second sentence here.\nETIRW\n" \
    "Sentence: Second sentence here.
Write Successful!"
expect_replicated "$F" "$n" "second WRITE"

# ---------------------------------------------------------------- UNDO
n=$(count_events "$TMP/nm.log" replication_worker_success "$F")
expect_client "UNDO $F\n" "Undo Successful!"
[ "$(cat "$P/$F")" = "Hello replicated world." ] || fail "UNDO: the primary holds '$(cat "$P/$F")'"
expect_replicated "$F" "$n" UNDO

# ---------------------------------------------------------------- UPLOAD (binary)
U=blob.bin
LOCAL="$TMP/local.bin"
# Random bytes (NULs and invalid UTF-8 included), more than two 1 MiB chunks.
head -c $((2 * 1024 * 1024 + 12345)) /dev/urandom >"$LOCAL"
SIZE=$(wc -c <"$LOCAL")
n=$(count_events "$TMP/nm.log" replication_worker_success "$U")
expect_client "UPLOAD $LOCAL $U\n" "Upload Successful! ($SIZE bytes)"
cmp -s "$LOCAL" "$P/$U" || fail "UPLOAD: the primary's $U differs from the uploaded file"
expect_replicated "$U" "$n" "UPLOAD of a $SIZE-byte binary file"
cmp -s "$LOCAL" "$B/$U" || fail "UPLOAD: the backup's $U differs from the uploaded file"

expect_client "DOWNLOAD $U $TMP/down.bin\n" "Download Successful! ($SIZE bytes)"
cmp -s "$LOCAL" "$TMP/down.bin" || fail "DOWNLOAD: the downloaded copy differs"
pass "DOWNLOAD returned the uploaded bytes"

# ---------------------------------------------------------------- DELETE
for f in "$F" "$U"; do
    n=$(count_events "$TMP/nm.log" replication_worker_delete_success "$f")
    expect_client "DELETE $f\n" "File deleted successfully!"
    [ ! -e "$P/$f" ] || fail "DELETE: the primary still holds $f"
    wait_for events_above "$TMP/nm.log" replication_worker_delete_success "$n" "$f" ||
        fail "DELETE: no replication_worker_delete_success for $f"
    wait_for gone_from_backup "$f" || fail "DELETE: the backup still holds $f"
    pass "DELETE of $f reached the backup"
done

# ---------------------------------------------------------------- STATUS
STATUS_OUT=$(printf 'STATUS\n' | client 2>&1) || fail "STATUS failed: $STATUS_OUT"
printf '%s\n' "$STATUS_OUT" | grep -q "ss1 -> ss1_backup" || fail "STATUS shows no pair: $STATUS_OUT"
printf '%s\n' "$STATUS_OUT" | grep -q "^Failed jobs: none$" || fail "STATUS shows failed jobs: $STATUS_OUT"
pass "STATUS shows the pair and no failed job"

echo "test_replication.sh: all checks passed"
