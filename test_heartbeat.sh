#!/usr/bin/env bash
# Failure detection, failover and recovery end to end through the real binaries (SPEC §6 and
# §9): builds, starts its own name server and one pair (ss1 with ss1_backup) on free ports in a
# temporary directory with its own cluster key and millisecond heartbeats (200 ms interval,
# 1 s timeout), SIGKILLs the primary, asserts the failure is detected within the timeout and a
# READ succeeds through the promoted backup (target: within 3 s of the kill), writes during the
# failover, restarts the primary and asserts it recovers (replication_recover) holding those
# writes byte for byte. Prints one line per check and exits non-zero on the first failure. A
# trap stops the servers it started, by PID, and removes the temporary directory.
#
# Every wait polls for a condition (a log event, a file on disk, a command's output) with a
# deadline; nothing sleeps to synchronise.
set -euo pipefail
cd "$(dirname "$0")"

# How long any one condition may take before the check fails.
WAIT_S=${WAIT_S:-30}
# How long a server may take to exit after SIGTERM before it is killed.
STOP_WAIT_S=10
HEARTBEAT_MS=200
HEARTBEAT_TIMEOUT_MS=1000
# The target: READ through the backup within this many ms of the primary's SIGKILL.
READ_TARGET_MS=${READ_TARGET_MS:-3000}

TEST_NAME=hb
# shellcheck source=scripts/test_lib.sh
source scripts/test_lib.sh

# Milliseconds since the epoch (GNU date).
now_ms() {
    date +%s%3N
}

# ---------------------------------------------------------------- build and start
build_bins
start_nm

for ss in ss1 ss1_backup; do
    start_ss "$ss" 0
done
for ss in ss1 ss1_backup; do
    wait_for events_above "$TMP/$ss.log" ss_listen 0 || fail "$ss did not log ss_listen"
done
wait_for events_above "$TMP/nm.log" nm_ss_register 1 || fail "ss1 and ss1_backup did not both register"
wait_for events_above "$TMP/nm.log" replication_assign 0 "ss1_backup" ||
    fail "no replication_assign event pairing ss1 with ss1_backup"
SS1_ADDR=$(logged_addr "$TMP/ss1.log" ss_listen)
pass "name server on $NM_ADDR; ss1 ($SS1_ADDR) paired with ss1_backup; heartbeats every $HEARTBEAT_MS ms, timeout $HEARTBEAT_TIMEOUT_MS ms"

P="$TMP/storage_ss1/files"
B="$TMP/storage_ss1_backup/files"
same_on_both() {
    [ -f "$P/$1" ] && [ -f "$B/$1" ] && cmp -s "$P/$1" "$B/$1"
}

F=hb.txt
expect_client "CREATE $F\nWRITE $F 0\n0 Written before the failure.\nETIRW\n" \
    "File Created Successfully!
Sentence: Written before the failure.
Write Successful!"
wait_for same_on_both "$F" || fail "$F did not reach the backup"
pass "$F written and replicated"

# ---------------------------------------------------------------- SIGKILL the primary
fail_before=$(count_events "$TMP/nm.log" heartbeat_monitor_failure ss1)
done_before=$(count_events "$TMP/nm.log" failover_complete)
KILL_MS=$(now_ms)
# The shell reports the killed job on its own stderr; this kill is the point, so hush it.
exec 3>&2 2>/dev/null
kill -KILL "${PID_OF[ss1]}"
wait "${PID_OF[ss1]}" || true
exec 2>&3 3>&-

wait_for events_above "$TMP/nm.log" heartbeat_monitor_failure "$fail_before" "ss1" ||
    fail "no heartbeat_monitor_failure for ss1"
DETECT_MS=$(($(now_ms) - KILL_MS))
[ "$DETECT_MS" -le "$HEARTBEAT_TIMEOUT_MS" ] ||
    fail "detection took $DETECT_MS ms, more than the $HEARTBEAT_TIMEOUT_MS ms timeout"
pass "ss1 SIGKILLed; heartbeat_monitor_failure after $DETECT_MS ms (timeout $HEARTBEAT_TIMEOUT_MS ms)"

# READ through the backup: retried until it succeeds, then timed from the kill.
read_ok() {
    local out
    out=$(printf 'READ %s\n' "$F" | client 2>&1) || return 1
    [ "$out" = "Written before the failure." ]
}
wait_for read_ok || fail "READ through the backup never succeeded"
READ_MS=$(($(now_ms) - KILL_MS))
wait_for events_above "$TMP/nm.log" failover_complete "$done_before" || fail "no failover_complete"
PROMOTED_MS=$(($(now_ms) - KILL_MS))
[ "$READ_MS" -le "$READ_TARGET_MS" ] ||
    fail "READ through the backup succeeded only $READ_MS ms after the kill (target $READ_TARGET_MS ms)"
pass "READ through the backup succeeded $READ_MS ms after the kill (target $READ_TARGET_MS ms); backup promoted (failover_complete) by $PROMOTED_MS ms"

STATUS_OUT=$(printf 'STATUS\n' | client 2>&1) || fail "STATUS failed: $STATUS_OUT"
printf '%s\n' "$STATUS_OUT" | grep -q "ss1 -> ss1_backup  PRIMARY_DOWN  epoch 2  writer ss1_backup" ||
    fail "STATUS does not show the promoted backup: $STATUS_OUT"
pass "STATUS: PRIMARY_DOWN, epoch 2, writer ss1_backup"

# ---------------------------------------------------------------- writes during the failover
expect_client "WRITE $F 1\n0 Written during the failover.\nETIRW\n" \
    "Sentence: Written during the failover.
Write Successful!"
expect_client "CREATE during.txt\nWRITE during.txt 0\n0 Created during the failover.\nETIRW\n" \
    "File Created Successfully!
Sentence: Created during the failover.
Write Successful!"
EXPECT_F="Written before the failure. Written during the failover."
[ "$(cat "$B/$F")" = "$EXPECT_F" ] || fail "the backup holds '$(cat "$B/$F")'"
pass "WRITE and CREATE went to the promoted backup"

# ---------------------------------------------------------------- restart the primary
recover_before=$(count_events "$TMP/nm.log" replication_recover)
start_ss ss1 0
wait_for events_above "$TMP/nm.log" replication_recover "$recover_before" ||
    fail "no replication_recover after ss1 came back"
[ "$(cat "$P/$F")" = "$EXPECT_F" ] || fail "ss1 holds '$(cat "$P/$F" 2>/dev/null)' after recovery"
cmp -s "$P/$F" "$B/$F" || fail "$F differs between ss1 and ss1_backup after recovery"
cmp -s "$P/during.txt" "$B/during.txt" || fail "during.txt differs between ss1 and ss1_backup"
pass "ss1 recovered (replication_recover): it holds the failover's writes byte for byte"

STATUS_OUT=$(printf 'STATUS\n' | client 2>&1) || fail "STATUS failed: $STATUS_OUT"
printf '%s\n' "$STATUS_OUT" | grep -q "ss1 -> ss1_backup  ACTIVE  epoch 3  writer ss1 " ||
    fail "STATUS does not show ss1 writing again: $STATUS_OUT"
pass "STATUS: ACTIVE, epoch 3, writer ss1"

expect_client "WRITE $F 2\n0 Written after recovery.\nETIRW\n" \
    "Sentence: Written after recovery.
Write Successful!"
wait_for same_on_both "$F" || fail "the write after recovery did not reach the backup"
pass "the original primary takes writes again and replicates them"

echo "test_heartbeat.sh: all checks passed (detection $DETECT_MS ms, READ after kill $READ_MS ms, promoted by $PROMOTED_MS ms)"
