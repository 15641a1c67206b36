//! Pairs: which member of each pair may take changes, in which epoch, and until when.
//!
//! # The part
//!
//! [`Pairs`] owns the pairs' durable states (the `pair_states` table) and decides every
//! transition from them plus what the core tells it of the members ([`Members`]): liveness,
//! lease bounds and what is owed to them. It writes its changes into the store batch it is
//! handed and names the members to tell of their new role; the core routes those to the
//! registry and the namespace (`forget_moves_before`). All times here are monotonic (see
//! [`super::clock`]). Invariants:
//! * at most one member of a pair holds a write lease: the writer moves only once the old
//!   writer's last lease has surely ended (`switch_at_ms`), and every move raises the epoch;
//! * the primary resumes after a handback only when nothing is owed to it, so it holds every
//!   change the promoted backup took.
//!
//! # Pairs
//!
//! A server named `X_backup`, or registering with `--backup-of X`, is `X`'s backup, whichever
//! registers first; the pair is recorded durably (`pairs` table) and logged as
//! `replication_assign` `Paired X → X_backup`. New files are placed on pairs (named by their
//! primaries): the pair with the fewest files whose writer may take changes, on that writer.
//! A member that is not its pair's writer is told so (`REGISTERED.backup`, then every
//! `HEARTBEAT_ACK.writer`) and refuses client changes (WRITE_BEGIN, UPLOAD, SS_CREATE,
//! SS_UNDO, SS_CHECKPOINT, SS_REVERT, SS_MOVE); the name server never mints a change ticket
//! for it. The one ticket minted outside that choice, a repeated SS_MOVE's, copies the first
//! ticket's server and epoch, so a member deposed meanwhile still refuses it: the epoch
//! changes only after its lease has ended.
//!
//! # Per-file holdings
//!
//! A file record names its pair (`ss`, the primary's name), the current `version`, and what
//! each member is known to hold: `backup_version`, and for the primary `primary_held` (set
//! while it is behind) / `primary_missing`. Reads go to a live member holding the current
//! version, the writer first; a client that finds a copy down or stale asks once more with
//! `LOCATE.avoid` and gets the other one or `UNAVAILABLE`.
//!
//! # The pair record and its transitions
//!
//! The `pair_states` table holds `phase` (SERVING / FAILING_OVER / HANDBACK), `epoch`,
//! `writer` (primary or backup) and `switch_at_ms`. STATUS combines it with liveness into
//! ACTIVE, SYNCING, BACKUP_DOWN, FAILING_OVER, PRIMARY_DOWN, RECOVERING, HANDBACK, DOWN
//! (`Core::pair_state_name`). Every transition is decided by [`Pairs::step`], which
//! `Core::advance_pairs` runs for each pair on every tick, close and registration:
//!
//! * SERVING with the writer down → FAILING_OVER (`failover_start`).
//! * The writer back first → SERVING, same epoch.
//! * Past `switch_at_ms` with the other member up → that member writes in epoch + 1
//!   (`failover_complete`).
//! * The promoted backup serving while the primary is up and owed nothing → HANDBACK (its
//!   leases stop, and it is told at once).
//! * Past the lease bound with nothing owed → the primary writes in epoch + 1
//!   (`replication_recover`). The bound is cut short when the backup's next heartbeat says it
//!   applied `writer: false` (acks arrive in order on one connection, so no earlier grant can
//!   renew its lease after that); a commit it made just before and reports after the switch
//!   is refused, so it was never acknowledged, and its copy is quarantined.
//!
//! # Leases
//!
//! Every heartbeat ack says whether the server is its pair's writer, the epoch, and
//! `lease_ms` = two thirds of `--heartbeat-timeout-ms` (the third left over absorbs
//! clock-rate differences and scheduling delay). The storage server may take changes until
//! (the moment it *sent* the acknowledged heartbeat) + lease; REGISTERED grants the first one
//! from the moment REGISTER_END was sent. It drops the lease at once when an ack says
//! `writer: false` or its link fails, and in any case when the lease runs out: a primary cut
//! off from the name server stops taking changes on its own (`ss/nmlink.rs`). The name server
//! records, per server, `lease_until_ms` = (when it received the heartbeat it acknowledged) +
//! lease, an upper bound of what the server holds, and never moves the writer before that
//! bound (`switch_at_ms`). After a name-server restart every server's bound is start + lease,
//! and nobody is promoted within one heartbeat timeout of the start, so members can
//! re-register.
//!
//! # Epochs in tickets
//!
//! Tickets for changes (write, upload, create, undo, client delete, and the name server's
//! checkpoint, revert and move calls: `Core::mint_change`) carry the pair's epoch,
//! inside the MAC. A storage server refuses one unless it is the writer, holds a live lease,
//! and is on that epoch; a session's COMMIT and an upload's install check again, and UNDO,
//! REVERT and MOVE check the lease again under the file lock. A ticket a moment ahead of the
//! server's own state (just promoted) waits up to 1 s for the ack that brings it.
//!
//! # A promoted backup takes only what it holds
//!
//! CREATE goes to any pair whose writer may take changes. WRITE, UPLOAD and UNDO of a file
//! need the writer to hold its current version; otherwise the answer is `no live copy of f`,
//! and the file waits for the member that has it. Changes on the promoted backup are job rows
//! owed to the primary (same table, same relay, source = the member holding the current
//! copy).
//!
//! # Correctness argument
//!
//! 1. *One writer per epoch, at most one writer at a time.* The epoch changes only in
//!    [`Pairs::step`], together with `writer`, and only at or after `switch_at_ms`, which is
//!    at or after the end of every lease the previous writer was granted; the new writer gets
//!    leases only in the new epoch; a storage server takes a change only under a live lease
//!    and only for a ticket of its own epoch. So at any instant at most one member may take
//!    changes, and each epoch's versions come from one member.
//! 2. *Sync mode loses no acknowledged write.* A change is answered when the backup holds it,
//!    or `(1 of 2 copies)` when the job owing it is recorded durably; in both cases the record
//!    holds the version and a member holding it. A member is only made writer of a file it
//!    holds at the recorded version, reads go only to such members, and copies are only
//!    replaced by newer versions of the same lineage or set aside into quarantine, never
//!    deleted. An acknowledged change is therefore on every copy that serves the file, or the
//!    file is unavailable until a member holding it returns.
//! 3. *Async mode* acknowledges a change when the primary holds it and the record is durable,
//!    so it loses nothing either: a file whose latest change had not reached the backup when
//!    the primary failed is unavailable (not stale) until the primary returns, and what async
//!    mode costs is that availability, bounded by the lag STATUS shows.
//!
//! What no mode acknowledges (a commit whose CHANGED never reached the name server, a hand
//! edit against an old epoch) is kept in quarantine when it conflicts with the current copy,
//! so nothing is silently overwritten. The seeded simulation in `core/tests/failover.rs` checks (1)
//! and (2) after every step under random kills, partitions and revivals.

use super::*;

/// The pairs' durable states by primary, and the transitions between them.
#[derive(Default)]
pub(super) struct Pairs {
    states: BTreeMap<String, PairRecord>,
}

/// What the core knows of one pair's members when the state machine looks at the pair.
pub(super) struct Members<'a> {
    pub(super) primary: &'a str,
    pub(super) backup: &'a str,
    /// Whether each member (primary, backup) is up.
    pub(super) up: [bool; 2],
    /// Whether each member has registered at least once (has a server record).
    pub(super) known: [bool; 2],
    /// Each member's lease bound.
    pub(super) lease_end: [u64; 2],
    /// Whether each member is owed nothing and has no transfer running to it.
    pub(super) clear: [bool; 2],
    /// Before this time no member is promoted (members get one heartbeat timeout after a
    /// restart to register again).
    pub(super) boot_grace_ms: u64,
}

fn ix(m: Member) -> usize {
    match m {
        Member::Primary => 0,
        Member::Backup => 1,
    }
}

impl Members<'_> {
    fn name(&self, m: Member) -> &str {
        match m {
            Member::Primary => self.primary,
            Member::Backup => self.backup,
        }
    }
}

/// A pair's move: the members to tell of their new role at once, and the new epoch if it rose.
pub(super) struct Moved {
    pub(super) pushes: Vec<String>,
    pub(super) epoch: Option<u64>,
    /// What the status page's event list says of the move: its kind and a sentence.
    pub(super) event: Option<(&'static str, String)>,
}

impl Pairs {
    /// The states loaded from the store, with one for every pair that has none. A switch the
    /// last run waited for was timed on its monotonic clock: every lease that run granted has
    /// ended by `boot_lease_until`.
    pub(super) fn load(
        mut states: BTreeMap<String, PairRecord>,
        pairs: &BTreeMap<String, String>,
        boot_lease_until: u64,
    ) -> Pairs {
        for p in pairs.keys() {
            states.entry(p.clone()).or_insert_with(PairRecord::new);
        }
        for st in states.values_mut() {
            if st.phase != Phase::Serving {
                st.switch_at_ms = boot_lease_until;
            }
        }
        Pairs { states }
    }

    /// The state of the pair named `primary`.
    pub(super) fn get(&self, primary: &str) -> Option<&PairRecord> {
        self.states.get(primary)
    }

    /// Writes the state of the pair named `primary`, durably.
    pub(super) fn put(&mut self, primary: &str, st: PairRecord, batch: &mut Vec<StoreOp>) {
        batch.push(StoreOp::PutPairState(primary.to_string(), st.clone()));
        self.states.insert(primary.to_string(), st);
    }

    /// Gives a new pair its first state unless it has one.
    pub(super) fn ensure(&mut self, primary: &str, batch: &mut Vec<StoreOp>) {
        if !self.states.contains_key(primary) {
            self.put(primary, PairRecord::new(), batch);
        }
    }

    /// The earliest switch any pair waits for.
    pub(super) fn next_switch_ms(&self) -> Option<u64> {
        self.states
            .values()
            .filter(|p| p.phase != Phase::Serving)
            .map(|p| p.switch_at_ms)
            .min()
    }

    /// Counts a transfer newly owed to a member of `primary`'s pair in its recovery progress
    /// (a finished round starts again at zero).
    pub(super) fn sync_owed(&mut self, primary: &str) {
        if let Some(st) = self.states.get_mut(primary) {
            if st.sync_done >= st.sync_total {
                st.sync_done = 0;
                st.sync_total = 0;
            }
            st.sync_total += 1;
        }
    }

    /// Counts a finished transfer in `primary`'s pair's recovery progress.
    pub(super) fn sync_done(&mut self, primary: &str) {
        if let Some(st) = self.states.get_mut(primary) {
            st.sync_done = (st.sync_done + 1).min(st.sync_total);
        }
    }

    /// Member `m`, handing back, says it holds no lease any more: the switch is now. Whether
    /// the pair's switch moved (not durable: the switch time is re-derived at boot).
    pub(super) fn step_down(&mut self, primary: &str, m: Member, now_ms: u64) -> bool {
        let Some(st) = self.states.get_mut(primary) else {
            return false;
        };
        if st.phase != Phase::Handback || st.writer != m || st.switch_at_ms <= now_ms {
            return false;
        }
        st.switch_at_ms = now_ms;
        true
    }

    /// The pair state machine for one pair: moves it if its members' liveness calls for it,
    /// writing the new state into `batch`.
    ///
    /// * SERVING with the writer down → FAILING_OVER: no member takes changes until the
    ///   writer's last lease has surely ended.
    /// * FAILING_OVER: the writer came back first → SERVING, same epoch (nobody else
    ///   wrote). Past the lease bound with the other member up → that member writes in a
    ///   new epoch.
    /// * SERVING by the promoted backup with the primary up and owed nothing →
    ///   HANDBACK: the backup's lease is not renewed.
    /// * HANDBACK past the backup's lease bound, nothing owed to the primary → the primary
    ///   writes in a new epoch. The backup failing meanwhile, the primary takes over at the
    ///   same bound as any failover.
    pub(super) fn step(
        &mut self,
        ms: &Members<'_>,
        now_ms: u64,
        batch: &mut Vec<StoreOp>,
    ) -> Option<Moved> {
        let p = ms.primary;
        let b = ms.backup;
        let mut st = self.states.get(p).cloned()?;
        let before = st.clone();
        let (wm, om) = (st.writer, st.writer.other());
        let (w, o) = (ms.name(wm), ms.name(om));
        let (w_up, o_up) = (ms.up[ix(wm)], ms.up[ix(om)]);
        let mut pushes: Vec<String> = Vec::new();
        let mut event: Option<(&'static str, String)> = None;
        match st.phase {
            // A writer never registered (a backup that started first) has no lease and
            // no files to fail over.
            Phase::Serving if !w_up && ms.known[ix(wm)] => {
                st.phase = Phase::FailingOver;
                st.switch_at_ms = ms.lease_end[ix(wm)].max(now_ms).max(ms.boot_grace_ms);
                log::warn!(target: ev::FAILOVER_START, pair = p, ss = w,
                    epoch = st.epoch, switch_at_ms = st.switch_at_ms;
                    "pair {p}: writer {w} is down; {o} takes over once {w}'s lease has ended (in {} ms)",
                    st.switch_at_ms - now_ms);
                event = Some((
                    "FAILOVER_START",
                    format!("writer {w} is down; {o} takes over once its lease has ended"),
                ));
            }
            Phase::Serving if !w_up => {}
            Phase::Serving if st.writer == Member::Backup && ms.up[0] => {
                if ms.clear[0] {
                    st.phase = Phase::Handback;
                    st.switch_at_ms = ms.lease_end[ix(wm)].max(now_ms);
                    pushes.push(w.to_string());
                    log::info!(target: ev::NM_SS_RECOVERY, pair = p, ss = p;
                        "pair {p}: {p} holds every change; {b} stops taking changes, {p} resumes once {b}'s lease has ended");
                    event = Some((
                        "HANDBACK",
                        format!("{p} holds every change and resumes once {b}'s lease has ended"),
                    ));
                }
            }
            Phase::Serving => {}
            Phase::FailingOver if w_up => {
                st.phase = Phase::Serving;
                log::info!(target: ev::FAILOVER_COMPLETE, pair = p, ss = w, epoch = st.epoch;
                    "pair {p}: {w} came back before the switch and goes on writing (epoch {})", st.epoch);
                event = Some((
                    "FAILOVER_CANCELLED",
                    format!("{w} came back before the switch and goes on writing"),
                ));
            }
            Phase::FailingOver if now_ms >= st.switch_at_ms && o_up => {
                st.phase = Phase::Serving;
                st.epoch += 1;
                st.writer = st.writer.other();
                pushes.push(o.to_string());
                let role = if st.writer == Member::Backup {
                    "promoted backup"
                } else {
                    "primary"
                };
                log::warn!(target: ev::FAILOVER_COMPLETE, pair = p, ss = o, epoch = st.epoch;
                    "pair {p}: {o} ({role}) takes changes in epoch {}", st.epoch);
                event = Some((
                    "FAILOVER",
                    format!("{o} ({role}) takes changes in epoch {}", st.epoch),
                ));
            }
            Phase::FailingOver => {}
            Phase::Handback if !w_up => {
                // The promoted backup failed during the handback: the primary takes
                // over once that lease has ended, as in any failover.
                st.phase = Phase::FailingOver;
                log::warn!(target: ev::FAILOVER_START, pair = p, ss = w, epoch = st.epoch;
                    "pair {p}: writer {w} is down during the handback");
                event = Some((
                    "FAILOVER_START",
                    format!("writer {w} is down during the handback"),
                ));
            }
            Phase::Handback if !o_up => {
                st.phase = Phase::Serving;
                pushes.push(w.to_string());
                log::warn!(target: ev::NM_SS_RECOVERY, pair = p, ss = o;
                    "pair {p}: {o} failed during the handback; {w} goes on writing");
                event = Some((
                    "HANDBACK_ABORTED",
                    format!("{o} failed during the handback; {w} goes on writing"),
                ));
            }
            Phase::Handback if now_ms >= st.switch_at_ms => {
                if ms.clear[ix(om)] {
                    st.phase = Phase::Serving;
                    st.epoch += 1;
                    st.writer = Member::Primary;
                    pushes.push(p.to_string());
                    pushes.push(b.to_string());
                    log::info!(target: ev::REPLICATION_RECOVER, pair = p, ss = p, epoch = st.epoch;
                        "pair {p}: {p} is the primary again (epoch {}); {b} backs it up", st.epoch);
                    event = Some((
                        "RECOVERED",
                        format!(
                            "{p} is the primary again (epoch {}); {b} backs it up",
                            st.epoch
                        ),
                    ));
                }
            }
            Phase::Handback => {}
        }
        if st == before {
            return None;
        }
        let epoch = (st.epoch != before.epoch).then_some(st.epoch);
        self.put(p, st, batch);
        Some(Moved {
            pushes,
            epoch,
            event,
        })
    }
}

impl Core {
    /// Moves every pair whose members' liveness calls for it ([`Pairs::step`]): tells the
    /// members of their new roles, and settles the moves a new epoch leaves behind.
    pub fn advance_pairs(&mut self, now_ms: u64) {
        self.at(now_ms);
        for (p, b) in self.reg.pairs() {
            let lease_end = |n: &str| self.reg.lease_end(n);
            let clear = |n: &str| self.owed_to(n) == (0, false);
            let ms = Members {
                primary: &p,
                backup: &b,
                up: [self.reg.is_up(&p), self.reg.is_up(&b)],
                known: [self.reg.server(&p).is_some(), self.reg.server(&b).is_some()],
                lease_end: [lease_end(&p), lease_end(&b)],
                clear: [clear(&p), clear(&b)],
                boot_grace_ms: self.cfg.started_ms + self.cfg.heartbeat_timeout_ms,
            };
            let Some(moved) = self.pairs.step(&ms, now_ms, &mut self.batch) else {
                continue;
            };
            for n in moved.pushes {
                self.push_role(&n);
            }
            if let Some((kind, text)) = moved.event {
                if kind == "FAILOVER" {
                    crate::metrics::nm().failovers.inc();
                }
                let at = self.env.wall_ms(now_ms);
                self.events.note(at, kind, &p, text);
            }
            if let Some(epoch) = moved.epoch {
                self.forget_moves_before(&p, &b, epoch, now_ms);
            }
        }
    }

    /// A handing-back writer says it holds no lease any more: its lease bound is now, so the
    /// primary need not wait for the lease to run out. (A change it committed just before
    /// may still be on its way; if it arrives after the switch it is refused, unacknowledged,
    /// and the copy is quarantined, so nothing acknowledged depends on this shortcut.)
    pub(super) fn stepped_down(&mut self, name: &str, now_ms: u64) {
        let Some((p, m)) = self.reg.membership(name) else {
            return;
        };
        if !self.pairs.step_down(&p, m, now_ms) {
            return;
        }
        self.reg.end_lease(name, now_ms);
        self.advance_pairs(now_ms);
    }

    /// RECOVER ss: compares what `ss` holds, as the name server knows it, with the records of
    /// its pair and owes it every file it lacks, due now (failed jobs retried at once).
    /// Returns the jobs owed to it.
    pub(super) fn recover(&mut self, ss: &str, now_ms: u64) -> Result<u64, WireError> {
        names::validate_user(ss)?;
        if self.reg.server(ss).is_none() {
            return Err(err::not_found(format!(
                "No storage server named {}",
                names::show(ss)
            )));
        }
        let Some((p, m)) = self.reg.membership(ss) else {
            return Err(err::invalid(format!(
                "{ss} is in no pair: there is no other copy to recover from"
            )));
        };
        if !self.reg.is_up(ss) {
            return Err(err::unavailable(format!(
                "{ss} is down; it is recovered when it registers again"
            )));
        }
        for k in self.q.keys_for(ss) {
            self.q.retry_now(&k, now_ms, &mut self.batch);
        }
        let files: Vec<String> = self
            .ns
            .files
            .iter()
            .filter(|(_, r)| r.ss == p && !r.holds(m))
            .map(|(f, _)| f.clone())
            .collect();
        for f in &files {
            self.owe_to(f, ss, None, now_ms);
        }
        let (owed, _) = self.owed_to(ss);
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, ss = ss, queued = owed;
            "RECOVER {ss}: {owed} transfers owed to it");
        self.pump_replication(now_ms);
        Ok(owed)
    }

    /// Records `primary → backup` unless the primary already has a backup.
    pub(super) fn pair_up(&mut self, primary: &str, backup: &str) {
        match self.reg.pair_up(primary, backup) {
            Ok(false) => {}
            Err(b) => {
                log::warn!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "{backup} wants to back up {primary}, which already has {b}; left unpaired");
            }
            Ok(true) => {
                self.batch
                    .push(StoreOp::PutPair(primary.to_string(), backup.to_string()));
                self.pairs.ensure(primary, &mut self.batch);
                log::info!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "Paired {primary} → {backup}");
            }
        }
    }
}
