//! The storage-server registry: registration, reconciling a server's file list with the
//! index, what a returning member is owed, the messages a registered server sends
//! (heartbeats, CHANGED, REMOVED, ...), and the pair topology derived from the `servers` and
//! `pairs` tables (who backs up whom, which member writes, at which epoch).
//!
//! Uses the core's `reg` ([`Registry`]: servers, pairs, peers, proof nonces). Invariants:
//! * a name is registered by at most one live connection at a time;
//! * a heartbeat's acknowledgement renews the writer's lease only while the pair is SERVING
//!   with that server as writer (`may_write`), and `lease_until_ms` (monotonic, see
//!   [`super::clock`]) never decreases except when a handing-back writer says it holds no
//!   lease;
//! * files a registering server does not hold keep their records (`primary_missing`), and
//!   files it holds that the index does not know are adopted.
//!
//! # Registration
//!
//! A storage server connects, sends REGISTER (with a proof of the cluster key), its whole
//! file list in FILE_BATCH frames of at most 100 entries, then REGISTER_END. The name server
//! reconciles its index with the list: a file the server holds at a newer version (a commit
//! whose CHANGED never reached the name server) updates the record; a file the name server
//! does not know is adopted (owner from the server's bookkeeping, else `admin`; its missing
//! folders come with it, owned by the file's owner, so every file's parent folder exists); a
//! record whose file the server no longer lists is marked missing there, never deleted (an
//! unmounted disk or a mistyped `--storage` must not erase the index, access rights, or the
//! other copy; only the owner's DELETE removes a record). Each registration also pushes the
//! whole folder list, parents first.
//!
//! # Reconciling a pair member
//!
//! A paired member's file list is compared with its pair's records
//! (`Core::reconcile_member`, in `queue.rs`): anything missing or stale is owed to it from the member
//! holding the current copy (a new backup gets a full initial sync); a copy newer than the
//! record on the writer is a commit whose CHANGED never arrived and becomes current; a copy
//! with changes the cluster never acknowledged is quarantined first. A backup's own file list
//! never creates records. A writer registering with a file the index does not know and a
//! removal row owes it adopts nothing: the row removes the copy (`removals.rs`).
//!
//! # Quarantine
//!
//! The recorded version only moves by acknowledged changes, and a change is only made to a
//! copy at the recorded version (the ticket's `min_version`); so a copy above the record
//! descends from it. On registration a member's copy is:
//!
//! * current;
//! * stale: owed the current copy;
//! * newer: becomes current on the writer, or when it is the only one left with the record's
//!   changes; otherwise set aside;
//! * forked: the same version with other bytes, or from an earlier epoch past `epoch_base`
//!   (the last version that epoch ended with, kept when the first change of a newer epoch
//!   lands): set aside.
//!
//! A copy set aside, and a file the index does not know on a non-writer, get a job with
//! `quarantine: true`: the relay first sends SS_QUARANTINE (keep = the wanted version, so a
//! retry never sets the current copy aside), which moves the content to
//! `quarantine/<name>.<epoch>-<counter>` with its bookkeeping beside it as `.meta` (layout in
//! the storage server's store), then installs the current copy. A CHANGED from a member that
//! is not the writer is answered with `copies: 0` (the committer tells its client the change
//! failed) and that member is owed the current copy, quarantined first; it is also marked not
//! current at once (a hand edit on a backup), so no read goes to the diverged copy before the
//! job has set it aside and installed the current one. A member returning after an
//! acknowledged DELETE or MOVE it missed finds that removal owed as a plain removal row, not a
//! quarantine: the change was acknowledged.
//!
//! # Recovery and RECOVER
//!
//! A returning member is reconciled as above; only what is missing, stale or forked is sent,
//! from the member holding the current copy; STATUS shows the catch-up as `sync done/total`
//! (in memory only). `RECOVER ss` retries at once every job owed to `ss` and queues every
//! file the name server does not know it to hold current; it does not re-read the server's
//! disk (a re-registration does). FAILED rows of a target go back to PENDING when it
//! registers again.

use super::*;

/// Storage servers, the connections to the name server, and the pairs.
pub(super) struct Registry {
    /// Registration proofs already used: a captured REGISTER cannot be replayed.
    pub(super) proof_nonces: NonceMemory,
    /// Every storage server ever registered (durable record, runtime state).
    pub(super) servers: BTreeMap<String, ServerLive>,
    /// What each connection is (unknown, a session, a registering or registered server).
    pub(super) peers: HashMap<ConnId, Peer>,
    /// Connections that have not finished HELLO or registration, with their deadline.
    pub(super) introducing: HashMap<ConnId, u64>,
    /// The address each connection came from (set by the event loop after `on_connect`).
    pub(super) origins: HashMap<ConnId, addr::Origin>,
    /// Pairs: primary name to backup name (durable).
    pub(super) pairs: BTreeMap<String, String>,
    /// Names removed (DELETE, or the old name of a MOVE) while each registered server's link
    /// was up, at most [`REMOVED_REMEMBERED`] per link (see [`Removed`]).
    pub(super) removed: HashMap<ConnId, Removed>,
}

/// Names removed per link remembered for late CHANGED reports.
pub(super) const REMOVED_REMEMBERED: usize = 4096;

/// The names removed from a pair while one member's link was up, so that a CHANGED arriving
/// on that link after the removal does not bring the file back.
///
/// A storage server releases the file's lock after a commit and then reports CHANGED on its
/// link, while the name server's SS_DELETE (or SS_MOVE) travels on a worker's connection: the
/// removal can take the lock, succeed and be recorded before the report of the commit that
/// preceded it arrives. That report then finds no record. It describes a state older than
/// the removal (the removal could only run once the commit released the lock, and a file
/// created again has a record), so it is acknowledged as applied-then-removed and nothing is
/// adopted. A report carried by an earlier link never arrives (a link that fails drops its
/// waiting reports), so remembering per link is enough; a hand-placed file of a removed name
/// is adopted at the server's next registration instead of by a CHANGED.
#[derive(Debug, Default)]
pub(super) struct Removed {
    order: VecDeque<String>,
    names: HashSet<String>,
}

impl Removed {
    fn note(&mut self, file: &str) {
        if self.names.insert(file.to_string()) {
            self.order.push_back(file.to_string());
            if self.order.len() > REMOVED_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.names.remove(&old);
                }
            }
        }
    }

    fn contains(&self, file: &str) -> bool {
        self.names.contains(file)
    }
}

impl Core {
    /// `file` was removed from the pair of `primary`: a late CHANGED of it on either
    /// member's current link must not bring it back (see [`Removed`]).
    pub(super) fn note_removed(&mut self, primary: &str, file: &str) {
        let backup = self.reg.pairs.get(primary).cloned();
        for m in std::iter::once(primary.to_string()).chain(backup) {
            if let Some(conn) = self.reg.servers.get(&m).and_then(|s| s.conn) {
                self.reg.removed.entry(conn).or_default().note(file);
            }
        }
    }

    pub(super) fn finish_register(&mut self, conn: ConnId, reg: Registering, now_ms: u64) {
        let Registering {
            name, rec, files, ..
        } = reg;
        if self
            .reg
            .servers
            .get(&name)
            .is_some_and(|s| s.up && s.conn.is_some())
        {
            return self.refuse_and_close(
                conn,
                err::conflict(format!(
                    "a storage server named {name} is already connected"
                )),
            );
        }
        let known = self.reg.servers.get(&name).map(|s| s.rec.clone());
        if known.as_ref() != Some(&rec) {
            self.batch
                .push(StoreOp::PutServer(name.clone(), rec.clone()));
        }
        let files_before = self.reg.servers.get(&name).map(|s| s.files).unwrap_or(0);
        let was_down = self.reg.servers.get(&name).is_some_and(|s| !s.up);
        let lease_until_ms = self
            .reg
            .servers
            .get(&name)
            .map_or(self.cfg.started_ms + self.cfg.lease_ms(), |s| {
                s.lease_until_ms
            });
        self.reg.servers.insert(
            name.clone(),
            ServerLive {
                rec: rec.clone(),
                up: true,
                last_heartbeat_ms: Some(now_ms),
                conn: Some(conn),
                files: files_before,
                last_seq: 0,
                lease_until_ms,
                disk: None,
            },
        );
        self.reg.introducing.remove(&conn);
        if let Some(p) = Self::declared_primary(&name, &rec) {
            self.pair_up(&p, &name);
        } else {
            let partner = self
                .reg
                .servers
                .iter()
                .find(|(n, s)| Self::declared_primary(n, &s.rec).as_deref() == Some(name.as_str()))
                .map(|(n, _)| n.clone());
            if let Some(b) = partner {
                self.pair_up(&name, &b);
            }
        }
        if was_down {
            self.events.note(
                self.env.wall_ms(now_ms),
                "SERVER_UP",
                &name,
                format!("{name} is up again: it registered at {}", rec.addr()),
            );
        }
        let released = self.resolve_moves(&name, &files, now_ms);
        self.resolve_deletes(&name, &files, now_ms);
        let (adopted, updated, removed) = match self.membership(&name) {
            Some((p, m)) => {
                if was_down {
                    log::info!(target: ev::NM_SS_RECOVERY, ss = name.as_str(), pair = p.as_str();
                        "{name} is back; comparing its files with the records of pair {p}");
                }
                self.reconcile_member(&p, m, files, now_ms);
                (0, 0, 0)
            }
            None if self.is_backup(&name) => (0, 0, 0),
            None => self.reconcile(&name, files, now_ms),
        };
        let epoch = self.epoch_of(&name);
        let writer = self.may_write(&name);
        if writer {
            // REGISTERED grants the first lease, counted by the server from before it sent
            // REGISTER_END.
            if let Some(s) = self.reg.servers.get_mut(&name) {
                s.lease_until_ms = s.lease_until_ms.max(now_ms + self.cfg.lease_ms());
            }
        }
        self.reg
            .peers
            .insert(conn, Peer::Server { name: name.clone() });
        let held = self.reg.servers.get(&name).map(|s| s.files).unwrap_or(0);
        log::info!(target: ev::NM_SS_REGISTER, ss = name.as_str(), addr = rec.addr(),
            files = held, adopted = adopted, updated = updated, removed = removed;
            "storage server {name} registered at {} with {held} files", rec.addr());
        self.reply(
            conn,
            Message::Registered {
                epoch,
                heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
                backup: !writer,
                lease_ms: self.cfg.lease_ms(),
            },
        );
        // A server empties its `tmp/` at start: no stage noted for it survives.
        self.q.forget_stages_on(&name);
        self.push_partner(&name);
        self.advance_pairs(now_ms);
        self.push_all_folders(&name);
        // A server is up again: jobs parked for want of a source may have one now.
        self.q.unpark_all();
        for f in released {
            self.next_for_file(&f, now_ms);
        }
        self.pump_replication(now_ms);
    }

    /// Brings the index in line with a registering server's file list. Returns counts of
    /// adopted, updated, and newly missing records.
    pub(super) fn reconcile(
        &mut self,
        ss: &str,
        list: Vec<FileState>,
        now_ms: u64,
    ) -> (u64, u64, u64) {
        let (mut adopted, mut updated, mut removed) = (0, 0, 0);
        let mut present = BTreeSet::new();
        for st in list {
            let Ok(file) = names::canonical_file(&st.file) else {
                continue;
            };
            present.insert(file.clone());
            match self.ns.files.get(&file) {
                Some(rec) if rec.ss == ss => {
                    if st.version > rec.version {
                        let mut rec = rec.clone();
                        rec.apply_state(&st);
                        self.put_file(&file, rec);
                        self.owe(&file, true, now_ms);
                        updated += 1;
                    } else if rec.primary_missing {
                        let mut rec = rec.clone();
                        rec.primary_missing = false;
                        self.put_file(&file, rec);
                    }
                }
                // Another server holds the record; pairs will decide which copy wins.
                Some(_) => {}
                None => {
                    self.adopt(ss, Member::Primary, &file, &st);
                    self.owe(&file, false, now_ms);
                    adopted += 1;
                }
            }
        }
        let gone: Vec<String> = self
            .ns
            .files
            .iter()
            .filter(|(f, r)| r.ss == ss && !present.contains(*f))
            .map(|(f, _)| f.clone())
            .collect();
        // A file the server no longer lists is marked missing, never deleted: an unmounted disk
        // or a mistyped `--storage` must not erase the index, access rights, or the backup's
        // copy. Only the owner's DELETE removes a record.
        for f in gone {
            if let Some(rec) = self.ns.files.get(&f) {
                if !rec.primary_missing {
                    let mut rec = rec.clone();
                    rec.primary_missing = true;
                    self.put_file(&f, rec);
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            log::warn!(target: ev::NM_SS_REGISTER, ss = ss, missing = removed;
                "{ss} registered without {removed} file(s) the index places on it; they are marked missing, not deleted");
        }
        (adopted, updated, removed)
    }

    /// Records a file the index did not know, found on `member` of the pair (or unpaired
    /// server) `ss`.
    pub(super) fn adopt(&mut self, ss: &str, member: Member, file: &str, st: &FileState) {
        let owner = st
            .owner
            .clone()
            .filter(|o| names::validate_user(o).is_ok())
            .unwrap_or_else(|| ADOPTED_OWNER.to_string());
        self.add_user(&owner);
        let created_ms = if st.modified_ms > 0 {
            st.modified_ms
        } else {
            self.wall_ms()
        };
        let rec = FileRecord::first(owner, ss, member, st, created_ms, st.modified_ms);
        // A file found in a folder the index does not know brings its folders with it, so
        // every file's parent exists.
        let owner = rec.owner.clone();
        self.ensure_folders(names::parent(file), &owner);
        self.put_file(file, rec);
    }

    pub(super) fn server_message(&mut self, conn: ConnId, name: &str, msg: Message, now_ms: u64) {
        match msg {
            Message::Heartbeat { seq, writer, disk } => {
                if let Some(s) = self.reg.servers.get_mut(name) {
                    s.last_heartbeat_ms = Some(now_ms);
                    s.last_seq = seq;
                    if disk.is_some() {
                        s.disk = disk;
                    }
                }
                log::debug!(target: ev::NM_HEARTBEAT, ss = name, seq = seq; "heartbeat from {name}");
                if !writer {
                    self.stepped_down(name, now_ms);
                }
                self.ack_heartbeat(conn, name, seq, now_ms);
            }
            Message::Changed { id, state, staged } => {
                let waiter = Waiter::Changed(conn, id);
                let Ok(file) = names::canonical_file(&state.file) else {
                    return self.release(waiter, true);
                };
                let Some((primary, member)) = self.home_of(name) else {
                    return self.release(waiter, true);
                };
                let writer = self.writer_member(&primary);
                if writer != member {
                    // Not this pair's writer (a plain backup adopting a hand edit, or a writer
                    // deposed while a commit was in flight): the change is not acknowledged,
                    // and the copy is set aside before the current one replaces it.
                    log::warn!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = name;
                        "refused a change of {file} from {name}, which is not its pair's writer");
                    if let Some(rec) = self.ns.files.get(&file).filter(|r| r.ss == primary) {
                        // Its copy is no longer the record's: reads must not go there until
                        // the job has set it aside and installed the current one (unless it
                        // is the only copy left descending from the record, as in recovery).
                        if rec.holds(member.other()) && rec.held(member).is_some() {
                            let mut rec = rec.clone();
                            rec.set_held(member, None);
                            self.put_file(&file, rec);
                        }
                        self.owe_to(&file, name, Some(SetAside::NotWriter), now_ms);
                    }
                    return self.reply(
                        conn,
                        Message::ChangedAck {
                            id,
                            copies: Some(0),
                        },
                    );
                }
                match self.ns.files.get(&file) {
                    Some(rec) if rec.ss == primary && state.version >= rec.version => {
                        let mut rec = rec.clone();
                        rec.apply_change(member, &state);
                        self.put_file(&file, rec);
                        log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                            version = state.version.to_string(); "{file} changed on {name}");
                    }
                    Some(_) => return self.release(waiter, true),
                    None if self
                        .reg
                        .removed
                        .get(&conn)
                        .is_some_and(|r| r.contains(&file)) =>
                    {
                        log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = name;
                            "a change of {file} on {name} was reported after {file} was removed; nothing is adopted");
                        return self.release(waiter, true);
                    }
                    None => self.adopt(&primary, member, &file, &state),
                }
                let target = self.owe(&file, true, now_ms);
                let version = self
                    .ns
                    .files
                    .get(&file)
                    .map_or(state.version, |r| r.version);
                if let (Some(t), Some(s)) = (&target, staged) {
                    self.q.note_stage(t, &file, state.version, s);
                }
                self.answer_change(waiter, &file, target, Want::Content { version }, now_ms);
            }
            Message::Removed { id, file } => {
                let waiter = Waiter::Changed(conn, id);
                let Ok(file) = names::canonical_file(&file) else {
                    return self.release(waiter, true);
                };
                let Some((primary, member)) = self.home_of(name) else {
                    return self.release(waiter, true);
                };
                let Some(rec) = self.ns.files.get(&file).filter(|r| r.ss == primary) else {
                    return self.release(waiter, true);
                };
                if self.writer_member(&primary) == member {
                    // The writer's copy vanished (a hand deletion): the file is gone, as on an
                    // unpaired server, and its pending access requests go with it.
                    self.drop_requests_for(&file);
                    self.del_file(&file);
                    log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str();
                        "{file} vanished from {name}");
                    let target = self.owe_delete(&primary, &file, now_ms);
                    return self.answer_change(waiter, &file, target, Want::Delete, now_ms);
                }
                // A member lost its copy while the other holds the current one: it is owed
                // the copy again.
                let mut rec = rec.clone();
                rec.set_held(member, None);
                self.put_file(&file, rec);
                self.owe_to(&file, name, None, now_ms);
                self.release(waiter, true);
            }
            other => self.refuse_and_close(
                conn,
                err::invalid(format!(
                    "unexpected {} from a storage server",
                    other.op_name()
                )),
            ),
        }
    }

    pub(super) fn sync_mode(&self) -> bool {
        self.cfg.replication == "sync"
    }

    pub(super) fn is_up(&self, name: &str) -> bool {
        self.reg.servers.get(name).is_some_and(|s| s.up)
    }

    /// The primary `name` backs up, from its flag or its `_backup` name.
    pub(super) fn declared_primary(name: &str, rec: &ServerRecord) -> Option<String> {
        rec.backup_of
            .clone()
            .or_else(|| name.strip_suffix("_backup").map(str::to_string))
            .filter(|p| !p.is_empty() && p != name)
    }

    /// True for a server that is (or declares itself) some primary's backup.
    pub(super) fn is_backup(&self, name: &str) -> bool {
        self.reg.pairs.values().any(|b| b == name)
            || self
                .reg
                .servers
                .get(name)
                .is_some_and(|s| Self::declared_primary(name, &s.rec).is_some())
            || name.ends_with("_backup")
    }

    /// The backup of the primary holding `file`, if the pair has one.
    pub(super) fn backup_for(&self, primary: &str) -> Option<String> {
        self.reg.pairs.get(primary).cloned()
    }

    /// The pair `name` belongs to (named by its primary) and its role in it; `None` when
    /// it is in no pair.
    pub(super) fn membership(&self, name: &str) -> Option<(String, Member)> {
        if self.reg.pairs.contains_key(name) {
            return Some((name.to_string(), Member::Primary));
        }
        self.reg
            .pairs
            .iter()
            .find(|(_, b)| *b == name)
            .map(|(p, _)| (p.clone(), Member::Backup))
    }

    /// Like [`Core::membership`], but a server with no pair that is no backup is the primary
    /// of its own one-member pair.
    pub(super) fn home_of(&self, name: &str) -> Option<(String, Member)> {
        self.membership(name).or_else(|| {
            (!self.is_backup(name) && self.reg.servers.contains_key(name))
                .then(|| (name.to_string(), Member::Primary))
        })
    }

    /// The name of member `m` of the pair of `primary`.
    pub(super) fn member_name(&self, primary: &str, m: Member) -> Option<String> {
        match m {
            Member::Primary => Some(primary.to_string()),
            Member::Backup => self.reg.pairs.get(primary).cloned(),
        }
    }

    /// The member of `primary`'s pair that writes in the current epoch.
    pub(super) fn writer_member(&self, primary: &str) -> Member {
        if !self.reg.pairs.contains_key(primary) {
            return Member::Primary;
        }
        self.pairs
            .get(primary)
            .map_or(Member::Primary, |p| p.writer)
    }

    /// The epoch server `name` stamps on new versions.
    pub(super) fn epoch_of(&self, name: &str) -> u64 {
        self.membership(name)
            .and_then(|(p, _)| self.pairs.get(&p))
            .map_or(EPOCH, |p| p.epoch)
    }

    /// The writer of the pair named `primary` if it may take changes now: (name, epoch).
    pub(super) fn live_writer(&self, primary: &str) -> Option<(String, u64)> {
        if !self.reg.pairs.contains_key(primary) {
            return self.is_up(primary).then(|| (primary.to_string(), EPOCH));
        }
        let st = self.pairs.get(primary)?;
        let w = self.member_name(primary, st.writer)?;
        (st.phase == Phase::Serving && self.is_up(&w)).then_some((w, st.epoch))
    }

    /// Whether server `name` may take changes now (its heartbeat acks renew its lease).
    pub(super) fn may_write(&self, name: &str) -> bool {
        match self.membership(name) {
            Some((p, _)) => self.live_writer(&p).is_some_and(|(w, _)| w == name),
            None => !self.is_backup(name) && self.is_up(name),
        }
    }

    /// Answers a heartbeat: the epoch, and a renewed lease while the server is its pair's
    /// writer. The lease the server then holds ends before `now + lease` (it counts from
    /// when it sent the heartbeat), which is the bound recorded here.
    pub(super) fn ack_heartbeat(&mut self, conn: ConnId, name: &str, seq: u64, now_ms: u64) {
        let writer = self.may_write(name);
        let lease_ms = self.cfg.lease_ms();
        if writer {
            if let Some(s) = self.reg.servers.get_mut(name) {
                s.lease_until_ms = s.lease_until_ms.max(now_ms + lease_ms);
            }
        }
        let epoch = self.epoch_of(name);
        // A writer stages its large uploads on its partner while they arrive.
        let partner = writer.then(|| self.partner_of(name)).flatten();
        self.reply(
            conn,
            Message::HeartbeatAck {
                seq,
                epoch,
                writer,
                lease_ms,
                partner,
            },
        );
    }

    /// The name of the other member of `name`'s pair.
    pub(super) fn partner_name(&self, name: &str) -> Option<String> {
        let (primary, member) = self.membership(name)?;
        self.member_name(&primary, member.other())
    }

    /// The other member of `name`'s pair, if it is up.
    pub(super) fn partner_of(&self, name: &str) -> Option<crate::protocol::Partner> {
        let other = self.partner_name(name)?;
        let s = self.reg.servers.get(&other).filter(|s| s.up)?;
        Some(crate::protocol::Partner {
            addr: s.rec.addr(),
            name: other,
        })
    }

    /// Tells a member at once (unsolicited ack of its latest heartbeat) that it became, or
    /// stopped being, the writer, instead of waiting for its next heartbeat.
    pub(super) fn push_role(&mut self, name: &str) {
        let Some((conn, seq, last_ms)) = self
            .reg
            .servers
            .get(name)
            .filter(|s| s.up)
            .and_then(|s| Some((s.conn?, s.last_seq, s.last_heartbeat_ms?)))
        else {
            return;
        };
        if seq == 0 {
            return;
        }
        // The lease counts from when heartbeat `seq` was sent, which was before it arrived.
        self.ack_heartbeat(conn, name, seq, last_ms);
    }

    /// Jobs owed to `target` (pending or failed), and whether one of them is running.
    pub(super) fn owed_to(&self, target: &str) -> (u64, bool) {
        self.q.owed_to(target)
    }
}
