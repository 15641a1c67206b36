//! The pair state machine: failover, handback, RECOVER and pairing.
//!
//! Uses the core's `pair_states` (durable) and the servers' lease bounds. All times here are
//! monotonic (see [`super::clock`]). Invariants:
//! * at most one member of a pair holds a write lease: the writer moves only once the old
//!   writer's last lease has surely ended (`switch_at_ms`), and every move raises the epoch;
//! * the primary resumes after a handback only when nothing is owed to it, so it holds every
//!   change the promoted backup took.

use super::*;

impl Core {
    /// The pair state machine: moves every pair whose members' liveness calls for it.
    ///
    /// * SERVING with the writer down → FAILING_OVER (`failover_start`): no member takes
    ///   changes until the writer's last lease has surely ended.
    /// * FAILING_OVER: the writer came back first → SERVING, same epoch (nobody else
    ///   wrote). Past the lease bound with the other member up → that member writes in a
    ///   new epoch (`failover_complete`).
    /// * SERVING by the promoted backup with the primary up and owed nothing →
    ///   HANDBACK: the backup's lease is not renewed.
    /// * HANDBACK past the backup's lease bound, nothing owed to the primary → the primary
    ///   writes in a new epoch (`replication_recover`). The backup failing meanwhile, the
    ///   primary takes over at the same bound as any failover.
    pub fn advance_pairs(&mut self, now_ms: u64) {
        self.at(now_ms);
        let primaries: Vec<String> = self.reg.pairs.keys().cloned().collect();
        for p in primaries {
            let Some(b) = self.reg.pairs.get(&p).cloned() else {
                continue;
            };
            let Some(mut st) = self.pair_states.get(&p).cloned() else {
                continue;
            };
            let before = st.clone();
            let name_of = |m: Member| {
                if m == Member::Primary {
                    p.clone()
                } else {
                    b.clone()
                }
            };
            let w = name_of(st.writer);
            let o = name_of(st.writer.other());
            let lease_end =
                |c: &Core, n: &str| c.reg.servers.get(n).map_or(0, |s| s.lease_until_ms);
            let mut pushes: Vec<String> = Vec::new();
            match st.phase {
                // A writer never registered (a backup that started first) has no lease and
                // no files to fail over.
                Phase::Serving if !self.is_up(&w) && self.reg.servers.contains_key(&w) => {
                    st.phase = Phase::FailingOver;
                    // After a restart, members get one heartbeat timeout to register again
                    // before anyone is promoted.
                    let boot_grace = self.cfg.started_ms + self.cfg.heartbeat_timeout_ms;
                    st.switch_at_ms = lease_end(self, &w).max(now_ms).max(boot_grace);
                    log::warn!(target: ev::FAILOVER_START, pair = p.as_str(), ss = w.as_str(),
                        epoch = st.epoch, switch_at_ms = st.switch_at_ms;
                        "pair {p}: writer {w} is down; {o} takes over once {w}'s lease has ended (in {} ms)",
                        st.switch_at_ms - now_ms);
                    self.events.note(
                        self.env.wall_ms(now_ms),
                        "FAILOVER_START",
                        &p,
                        format!("writer {w} is down; {o} takes over once its lease has ended"),
                    );
                }
                Phase::Serving if !self.is_up(&w) => {}
                Phase::Serving if st.writer == Member::Backup && self.is_up(&p) => {
                    let (owed, running) = self.owed_to(&p);
                    if owed == 0 && !running {
                        st.phase = Phase::Handback;
                        st.switch_at_ms = lease_end(self, &w).max(now_ms);
                        pushes.push(w.clone());
                        log::info!(target: ev::NM_SS_RECOVERY, pair = p.as_str(), ss = p.as_str();
                            "pair {p}: {p} holds every change; {b} stops taking changes, {p} resumes once {b}'s lease has ended");
                        self.events.note(
                            self.env.wall_ms(now_ms),
                            "HANDBACK",
                            &p,
                            format!(
                                "{p} holds every change and resumes once {b}'s lease has ended"
                            ),
                        );
                    }
                }
                Phase::Serving => {}
                Phase::FailingOver if self.is_up(&w) => {
                    st.phase = Phase::Serving;
                    log::info!(target: ev::FAILOVER_COMPLETE, pair = p.as_str(), ss = w.as_str(), epoch = st.epoch;
                        "pair {p}: {w} came back before the switch and goes on writing (epoch {})", st.epoch);
                    self.events.note(
                        self.env.wall_ms(now_ms),
                        "FAILOVER_CANCELLED",
                        &p,
                        format!("{w} came back before the switch and goes on writing"),
                    );
                }
                Phase::FailingOver if now_ms >= st.switch_at_ms && self.is_up(&o) => {
                    st.phase = Phase::Serving;
                    st.epoch += 1;
                    st.writer = st.writer.other();
                    pushes.push(o.clone());
                    let role = if st.writer == Member::Backup {
                        "promoted backup"
                    } else {
                        "primary"
                    };
                    log::warn!(target: ev::FAILOVER_COMPLETE, pair = p.as_str(), ss = o.as_str(), epoch = st.epoch;
                        "pair {p}: {o} ({role}) takes changes in epoch {}", st.epoch);
                    crate::metrics::nm().failovers.inc();
                    self.events.note(
                        self.env.wall_ms(now_ms),
                        "FAILOVER",
                        &p,
                        format!("{o} ({role}) takes changes in epoch {}", st.epoch),
                    );
                }
                Phase::FailingOver => {}
                Phase::Handback if !self.is_up(&w) => {
                    // The promoted backup failed during the handback: the primary takes
                    // over once that lease has ended, as in any failover.
                    st.phase = Phase::FailingOver;
                    log::warn!(target: ev::FAILOVER_START, pair = p.as_str(), ss = w.as_str(), epoch = st.epoch;
                        "pair {p}: writer {w} is down during the handback");
                    self.events.note(
                        self.env.wall_ms(now_ms),
                        "FAILOVER_START",
                        &p,
                        format!("writer {w} is down during the handback"),
                    );
                }
                Phase::Handback if !self.is_up(&o) => {
                    st.phase = Phase::Serving;
                    pushes.push(w.clone());
                    log::warn!(target: ev::NM_SS_RECOVERY, pair = p.as_str(), ss = o.as_str();
                        "pair {p}: {o} failed during the handback; {w} goes on writing");
                    self.events.note(
                        self.env.wall_ms(now_ms),
                        "HANDBACK_ABORTED",
                        &p,
                        format!("{o} failed during the handback; {w} goes on writing"),
                    );
                }
                Phase::Handback if now_ms >= st.switch_at_ms => {
                    let (owed, running) = self.owed_to(&o);
                    if owed == 0 && !running {
                        st.phase = Phase::Serving;
                        st.epoch += 1;
                        st.writer = Member::Primary;
                        pushes.push(p.clone());
                        pushes.push(b.clone());
                        log::info!(target: ev::REPLICATION_RECOVER, pair = p.as_str(), ss = p.as_str(), epoch = st.epoch;
                            "pair {p}: {p} is the primary again (epoch {}); {b} backs it up", st.epoch);
                        self.events.note(
                            self.env.wall_ms(now_ms),
                            "RECOVERED",
                            &p,
                            format!(
                                "{p} is the primary again (epoch {}); {b} backs it up",
                                st.epoch
                            ),
                        );
                    }
                }
                Phase::Handback => {}
            }
            if st != before {
                let epoch = (st.epoch != before.epoch).then_some(st.epoch);
                self.put_pair_state(&p, st);
                for n in pushes {
                    self.push_role(&n);
                }
                if let Some(epoch) = epoch {
                    self.forget_moves_before(&p, &b, epoch, now_ms);
                }
            }
        }
    }

    /// A handing-back writer says it holds no lease any more: its lease bound is now, so the
    /// primary need not wait for the lease to run out. (A change it committed just before
    /// may still be on its way; if it arrives after the switch it is refused, unacknowledged,
    /// and the copy is quarantined, so nothing acknowledged depends on this shortcut.)
    pub(super) fn stepped_down(&mut self, name: &str, now_ms: u64) {
        let Some((p, m)) = self.membership(name) else {
            return;
        };
        let Some(st) = self.pair_states.get_mut(&p) else {
            return;
        };
        if st.phase != Phase::Handback || st.writer != m || st.switch_at_ms <= now_ms {
            return;
        }
        st.switch_at_ms = now_ms;
        if let Some(s) = self.reg.servers.get_mut(name) {
            s.lease_until_ms = now_ms;
        }
        self.advance_pairs(now_ms);
    }

    /// RECOVER ss: compares what `ss` holds, as the name server knows it, with the records of
    /// its pair and owes it every file it lacks, due now (failed jobs retried at once).
    /// Returns the jobs owed to it.
    pub(super) fn recover(&mut self, ss: &str, now_ms: u64) -> Result<u64, WireError> {
        names::validate_user(ss)?;
        if !self.reg.servers.contains_key(ss) {
            return Err(err::not_found(format!(
                "No storage server named {}",
                names::show(ss)
            )));
        }
        let Some((p, m)) = self.membership(ss) else {
            return Err(err::invalid(format!(
                "{ss} is in no pair: there is no other copy to recover from"
            )));
        };
        if !self.is_up(ss) {
            return Err(err::unavailable(format!(
                "{ss} is down; it is recovered when it registers again"
            )));
        }
        for k in self.q.repl.keys_for(ss) {
            self.retry_job_now(&k, now_ms);
        }
        let files: Vec<String> = self
            .ns
            .files
            .iter()
            .filter(|(_, r)| r.ss == p && !r.holds(m))
            .map(|(f, _)| f.clone())
            .collect();
        for f in &files {
            self.owe_to(f, ss, false, now_ms);
        }
        let (owed, _) = self.owed_to(ss);
        log::info!(target: ev::NM_RECOVERY_SYNC_QUEUED, ss = ss, queued = owed;
            "RECOVER {ss}: {owed} transfers owed to it");
        self.pump_replication(now_ms);
        Ok(owed)
    }

    /// Records `primary → backup` unless the primary already has a backup.
    pub(super) fn pair_up(&mut self, primary: &str, backup: &str) {
        match self.reg.pairs.get(primary) {
            Some(b) if b == backup => {}
            Some(b) => {
                log::warn!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "{backup} wants to back up {primary}, which already has {b}; left unpaired");
            }
            None => {
                self.reg
                    .pairs
                    .insert(primary.to_string(), backup.to_string());
                self.batch
                    .push(StoreOp::PutPair(primary.to_string(), backup.to_string()));
                if !self.pair_states.contains_key(primary) {
                    self.put_pair_state(primary, PairRecord::new());
                }
                log::info!(target: ev::REPLICATION_ASSIGN, ss = backup;
                    "Paired {primary} → {backup}");
            }
        }
    }
}
