//! Storage servers: registration, reconciling a registering server's file list with the
//! index, the messages a registered server sends (heartbeats, CHANGED, REMOVED, ...), and the
//! pair topology derived from the `servers` and `pairs` tables (who backs up whom, which
//! member writes, at which epoch).
//!
//! Uses the core's `servers`, `pairs`, `peers` and `proof_nonces`. Invariants:
//! * a name is registered by at most one live connection at a time;
//! * a heartbeat's acknowledgement renews the writer's lease only while the pair is SERVING
//!   with that server as writer (`may_write`), and `lease_until_ms` (monotonic, see
//!   [`super::clock`]) never decreases except when a handing-back writer says it holds no
//!   lease;
//! * files a registering server does not hold keep their records (`primary_missing`), and
//!   files it holds that the index does not know are adopted.

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
}

impl Core {
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
        let released = self.resolve_moves(&name, &files, now_ms);
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
        let prefix = job_key(&name, "");
        self.q.stages.retain(|k, _| !k.starts_with(&prefix));
        self.push_partner(&name);
        self.advance_pairs(now_ms);
        self.push_all_folders(&name);
        // A server is up again: jobs parked for want of a source may have one now.
        self.q.repl.unpark_all();
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
        let mut rec = FileRecord {
            owner,
            ss: ss.to_string(),
            version: st.version,
            checksum: st.checksum,
            size: st.size,
            words: st.words,
            chars: st.chars,
            created_ms,
            modified_ms: st.modified_ms,
            access: BTreeMap::new(),
            accessed_ms: None,
            accessed_by: None,
            backup_version: None,
            primary_missing: false,
            primary_held: None,
            epoch_base: None,
        };
        rec.apply_state(st);
        rec.held_only_by(member, st.version);
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
                        self.owe_to(&file, name, true, now_ms);
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
                    None => self.adopt(&primary, member, &file, &state),
                }
                let target = self.owe(&file, true, now_ms);
                let version = self
                    .ns
                    .files
                    .get(&file)
                    .map_or(state.version, |r| r.version);
                if let (Some(t), Some(s)) = (&target, staged) {
                    self.note_stage(t, &file, state.version, s);
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
                self.owe_to(&file, name, false, now_ms);
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
        self.pair_states
            .get(primary)
            .map_or(Member::Primary, |p| p.writer)
    }

    /// The epoch server `name` stamps on new versions.
    pub(super) fn epoch_of(&self, name: &str) -> u64 {
        self.membership(name)
            .and_then(|(p, _)| self.pair_states.get(&p))
            .map_or(EPOCH, |p| p.epoch)
    }

    /// The writer of the pair named `primary` if it may take changes now: (name, epoch).
    pub(super) fn live_writer(&self, primary: &str) -> Option<(String, u64)> {
        if !self.reg.pairs.contains_key(primary) {
            return self.is_up(primary).then(|| (primary.to_string(), EPOCH));
        }
        let st = self.pair_states.get(primary)?;
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

    pub(super) fn put_pair_state(&mut self, primary: &str, st: PairRecord) {
        self.batch
            .push(StoreOp::PutPairState(primary.to_string(), st.clone()));
        self.pair_states.insert(primary.to_string(), st);
    }

    /// Jobs owed to `target` (pending or failed), and whether one of them is running.
    pub(super) fn owed_to(&self, target: &str) -> (u64, bool) {
        (self.q.repl.owed_to(target), self.q.repl.running_for(target))
    }
}
