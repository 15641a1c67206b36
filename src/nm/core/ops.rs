//! Operations in flight: the name server's own calls to storage servers for a client
//! (CREATE, DELETE, UNDO, CHECKPOINT, REVERT, MOVE, EXEC), the names they hold, the fence on
//! their answers, and what their results do.
//!
//! [`InFlightOps`] owns the reserved names with their waiting requests and the worker jobs
//! awaited; the core routes what their answers do to the other parts. Invariants:
//! * one NM-initiated operation per file at a time; later requests wait in a bounded queue
//!   ([`super::MAX_WAITING_PER_FILE`]) and are decided when their turn comes;
//! * a change's result is credited only if the pair is still in the epoch its ticket carried
//!   (the fence): a change made under an ended epoch is not applied to the record, and its
//!   member is owed the record's state with its own copy set aside first.
//!
//! A serialised operation reserves its name (a MOVE both names) until it is answered; a
//! CREATE of a reserved name waits, and a removal row of that name is not dispatched
//! meanwhile.
//!
//! # The fence
//!
//! Each call remembers the server and epoch its ticket was minted for. An answer arriving
//! after that pair's epoch moved on (a failover or handback while the call ran) is not
//! credited to the new writer while the other member holds the record's version: the client
//! hears `UNAVAILABLE ... not applied`, the record stays, and the member that made the change
//! is marked not current and owed the record's state with its copy set aside
//! (`Core::set_aside_on`). When the other member does not hold the record's version the copy
//! is left to reconciliation, since it may be the only one descending from the record.
//! Storage servers also check the lease again under the file lock just before UNDO, REVERT
//! and MOVE. The same fence holds for a storage server's CHANGED: one from a member that is
//! not the writer is answered with `copies: 0` (see the registry's quarantine section).

use super::*;

/// The operations in flight.
pub(super) struct InFlightOps {
    /// Files with an NM-initiated operation in flight, and the requests waiting behind it.
    busy_files: HashMap<String, VecDeque<Pending>>,
    /// Worker jobs handed out and not yet answered.
    jobs: HashMap<JobId, InFlight>,
    /// The next worker job's id.
    next_job: JobId,
}

/// Where a serialised request stands against the operation in flight on its name.
pub(super) enum Behind {
    /// The name is free: the request is handed back to be decided now.
    Free(Box<Pending>),
    /// The request waits behind the operation (its connection is now busy).
    Queued(ConnId),
    /// Too many requests wait on the name already: the request is refused.
    Full(ConnId),
}

impl InFlightOps {
    /// No operation in flight, except that a MOVE the last run left unsettled keeps both its
    /// names reserved until the server it was sent to registers and shows whether it renamed
    /// the file.
    pub(super) fn load(moves: &BTreeMap<String, MoveIntent>) -> InFlightOps {
        let mut busy_files: HashMap<String, VecDeque<Pending>> = HashMap::new();
        for (from, m) in moves {
            busy_files.entry(from.clone()).or_default();
            busy_files.entry(m.to.clone()).or_default();
        }
        InFlightOps {
            busy_files,
            jobs: HashMap::new(),
            next_job: 1,
        }
    }

    /// Whether an operation on `name` is in flight (or a MOVE of it is unsettled).
    pub(super) fn is_busy(&self, name: &str) -> bool {
        self.busy_files.contains_key(name)
    }

    /// Whether no name is reserved.
    #[cfg(test)]
    pub(super) fn none_busy(&self) -> bool {
        self.busy_files.is_empty()
    }

    /// Reserves `name` for the operation starting on it.
    pub(super) fn reserve(&mut self, name: &str) {
        self.busy_files.entry(name.to_string()).or_default();
    }

    /// Queues request `p` on `name` if an operation on it is in flight (bounded by
    /// [`MAX_WAITING_PER_FILE`]).
    pub(super) fn wait_behind(&mut self, name: &str, p: Pending) -> Behind {
        match self.busy_files.get_mut(name) {
            None => Behind::Free(Box::new(p)),
            Some(q) if q.len() >= MAX_WAITING_PER_FILE => Behind::Full(p.conn),
            Some(q) => {
                let conn = p.conn;
                q.push_back(p);
                Behind::Queued(conn)
            }
        }
    }

    /// Frees `name`, handing back the requests that waited on it, oldest first.
    pub(super) fn release(&mut self, name: &str) -> VecDeque<Pending> {
        self.busy_files.remove(name).unwrap_or_default()
    }

    /// If a new operation holds `name` again, the `rest` wait behind it (moved out of
    /// `rest`). Whether they do.
    pub(super) fn wait_again(&mut self, name: &str, rest: &mut VecDeque<Pending>) -> bool {
        match self.busy_files.get_mut(name) {
            Some(q) => {
                q.append(rest);
                true
            }
            None => false,
        }
    }

    /// A fresh worker job id.
    pub(super) fn next_id(&mut self) -> JobId {
        let id = self.next_job;
        self.next_job += 1;
        id
    }

    /// Notes a worker job handed out for `flight`; returns its id.
    pub(super) fn start(&mut self, flight: InFlight) -> JobId {
        let id = self.next_id();
        self.jobs.insert(id, flight);
        id
    }

    /// The operation a worker job answered, if it is still awaited.
    pub(super) fn finish(&mut self, id: JobId) -> Option<InFlight> {
        self.jobs.remove(&id)
    }

    /// Whether a MOVE of `from` handed out in this run is still awaited.
    pub(super) fn moving(&self, from: &str) -> bool {
        self.jobs
            .values()
            .any(|f| f.file == from && matches!(f.purpose, Purpose::Move { .. }))
    }

    /// Whether an operation on `file` that `is` picks (a DELETE, a CREATE) handed out in this
    /// run is still awaited.
    pub(super) fn awaited(&self, file: &str, is: impl Fn(&Purpose) -> bool) -> bool {
        self.jobs.values().any(|f| f.file == file && is(&f.purpose))
    }

    /// Worker jobs handed out and not yet answered.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }
}

impl Core {
    /// CREATE, DELETE and UNDO: one NM-initiated operation per file at a time; later ones wait
    /// in a small bounded queue and are decided when their turn comes.
    pub(super) fn serialised(&mut self, conn: ConnId, user: String, msg: Message, now_ms: u64) {
        let file = match &msg {
            Message::Create { file }
            | Message::Delete { file }
            | Message::Undo { file }
            | Message::Move { file, .. }
            | Message::Checkpoint { file, .. }
            | Message::Revert { file, .. }
            | Message::Locate { file, .. } => file.clone(),
            _ => return,
        };
        let canon = match names::canonical_file(&file) {
            Ok(c) => c,
            Err(e) => return self.fail(conn, e),
        };
        match self.ops.wait_behind(&canon, Pending { conn, user, msg }) {
            Behind::Free(p) => self.start_serialised(&canon, *p, now_ms),
            Behind::Queued(conn) => self.set_busy(conn, true),
            Behind::Full(conn) => self.fail(
                conn,
                err::limit(format!(
                    "too many operations waiting on {}",
                    names::display(&canon)
                )),
            ),
        }
    }

    /// Decides a serialised request now; if it needs a storage server, the file becomes busy.
    pub(super) fn start_serialised(&mut self, canon: &str, p: Pending, now_ms: u64) {
        if let Message::Locate { mode, .. } = &p.msg {
            if self.ns.files.contains_key(canon) {
                // UPLOAD of an existing file needs no storage-server call first.
                let r = self.locate(&p.user, canon, *mode, None);
                self.set_busy(p.conn, false);
                return match r {
                    Ok(m) => self.reply(p.conn, m),
                    Err(e) => self.fail(p.conn, e),
                };
            }
        }
        let started = match &p.msg {
            Message::Create { .. } | Message::Locate { .. } => self.start_create(canon, &p, now_ms),
            Message::Delete { .. } => self.start_delete(canon, &p),
            Message::Undo { .. } => self.start_undo(canon, &p),
            Message::Move { .. } => self.start_move(canon, &p, now_ms),
            Message::Checkpoint { .. } => self.start_checkpoint(canon, &p),
            Message::Revert { .. } => self.start_revert(canon, &p),
            _ => Err(err::internal("not a serialised request")),
        };
        match started {
            Ok((kind, purpose)) => {
                self.ops.reserve(canon);
                if let Purpose::Move { to } = &purpose {
                    // The new name is taken while the move runs: a CREATE of it waits.
                    self.ops.reserve(to);
                }
                self.set_busy(p.conn, true);
                let fence = change_fence(&kind);
                self.new_job(
                    kind,
                    InFlight {
                        conn: p.conn,
                        file: canon.to_string(),
                        purpose,
                        serialised: true,
                        fence,
                    },
                );
            }
            Err(e) => {
                let locked = e.code == crate::protocol::ErrorCode::Locked;
                self.set_busy(p.conn, false);
                self.fail(p.conn, e);
                if locked {
                    // An old removal in the way may have been made due now.
                    self.pump_replication(now_ms);
                }
            }
        }
    }

    pub(super) fn start_create(
        &mut self,
        canon: &str,
        p: &Pending,
        now_ms: u64,
    ) -> Result<(JobKind, Purpose), WireError> {
        if self.ns.files.contains_key(canon) {
            return Err(err::conflict("File already exists"));
        }
        self.check_new_file_name(canon)?;
        // Pairs are named by their primaries; a pair takes the file if its writer may take
        // changes now (so CREATE goes on while a pair has one live member).
        let pick = self
            .reg
            .servers()
            .filter(|(n, _)| !self.reg.is_backup(n))
            .filter_map(|(n, s)| {
                let (w, epoch) = self.live_writer(n)?;
                let addr = self.reg.server(&w)?.rec.addr();
                Some(((s.files, n.clone()), (n.clone(), w, addr, epoch)))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, v)| v);
        let Some((ss, writer, addr, epoch)) = pick else {
            return Err(err::unavailable("no storage server available"));
        };
        self.refuse_if_removing(&writer, canon, now_ms)?;
        let ticket = self.mint_change(NM_USER, canon, TicketOp::Create, &writer, None, epoch);
        let first = self.pairs.get(&ss).map_or(1, PairRecord::first_counter);
        let msg = Message::SsCreate {
            file: canon.to_string(),
            owner: p.user.clone(),
            epoch,
            counter: (first > 1).then_some(first),
            ticket,
        };
        let member = self
            .reg
            .membership(&writer)
            .map_or(Member::Primary, |(_, m)| m);
        // The record the create makes is committed while the server creates (`creates.rs`).
        let version = Version::first(epoch, (first > 1).then_some(first));
        let wall_ms = self.wall_ms();
        let st = FileState {
            file: canon.to_string(),
            version,
            checksum: crc32c::crc32c(b""),
            size: 0,
            words: 0,
            chars: 0,
            modified_ms: wall_ms,
            owner: Some(p.user.clone()),
        };
        let rec = FileRecord::first(p.user.clone(), &ss, member, &st, wall_ms, wall_ms);
        self.put_create_intent(
            canon,
            rec,
            CreateIntent {
                ss: writer,
                epoch,
                version,
                owner: p.user.clone(),
                created_ms: wall_ms,
            },
        );
        Ok((
            JobKind::SsCall { addr, msg },
            Purpose::Create {
                owner: p.user.clone(),
                ss,
                member,
                then_upload: matches!(p.msg, Message::Locate { .. }),
            },
        ))
    }

    /// DELETE f: the owner only. The intent is written in the batch before the call is sent
    /// (see `deletes.rs`).
    pub(super) fn start_delete(
        &mut self,
        canon: &str,
        p: &Pending,
    ) -> Result<(JobKind, Purpose), WireError> {
        let rec = self.ns.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_owner(
            rec,
            &p.user,
            &format!("Only the owner can delete {}", names::display(canon)),
        )?;
        let (ss, addr, epoch) = self.writer_for(rec, canon, false)?;
        let (version, checksum) = (rec.version, rec.checksum);
        let ticket = self.mint_change(NM_USER, canon, TicketOp::Delete, &ss, None, epoch);
        let msg = Message::SsDelete {
            file: canon.to_string(),
            ticket,
        };
        self.put_delete_intent(
            canon,
            DeleteIntent {
                ss,
                epoch,
                version,
                checksum,
            },
        );
        Ok((JobKind::SsCall { addr, msg }, Purpose::Delete))
    }

    /// A change of `canon` by `user` (write access needed) that its pair's writer must make
    /// on the current version: the writer's address, the epoch, and a change ticket for `op`.
    pub(super) fn change_call(
        &self,
        canon: &str,
        user: &str,
        op: TicketOp,
    ) -> Result<(String, u64, crate::protocol::Ticket), WireError> {
        let rec = self.ns.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, user, canon)?;
        let (ss, addr, epoch) = self.writer_for(rec, canon, true)?;
        let ticket = self.mint_change(NM_USER, canon, op, &ss, None, epoch);
        Ok((addr, epoch, ticket))
    }

    pub(super) fn start_undo(
        &self,
        canon: &str,
        p: &Pending,
    ) -> Result<(JobKind, Purpose), WireError> {
        let (addr, epoch, ticket) = self.change_call(canon, &p.user, TicketOp::Undo)?;
        let msg = Message::SsUndo {
            file: canon.to_string(),
            epoch,
            ticket,
        };
        Ok((JobKind::SsCall { addr, msg }, Purpose::Undo))
    }

    /// A worker finished (or the job could not be queued).
    pub fn on_job_result(&mut self, id: JobId, result: Result<JobOutput, WireError>, now_ms: u64) {
        self.at(now_ms);
        if let Some((key, sent)) = self.q.take_running(id) {
            self.on_repl_result(key, sent, result, now_ms);
            return self.pump_replication(now_ms);
        }
        let Some(flight) = self.ops.finish(id) else {
            return;
        };
        if let Purpose::Fsck { run, ss } = flight.purpose {
            return self.fsck_result(run, ss, result);
        }
        if let Purpose::Mkdir { ss } = &flight.purpose {
            return Self::mkdir_done(ss, result);
        }
        if result.is_ok() && self.fenced_off(&flight) {
            return self.fenced_result(flight, now_ms);
        }
        let conn = flight.conn;
        let file = flight.file.clone();
        let moved_to = match &flight.purpose {
            Purpose::Move { to } => Some(to.clone()),
            _ => None,
        };
        let done = self.apply_result(conn, &file, flight.purpose, result, now_ms);
        self.answer_result(conn, &file, done.reply, done.change, now_ms);
        if flight.serialised && !done.unsettled {
            self.next_for_file(&file, now_ms);
            if let Some(to) = moved_to {
                self.next_for_file(&to, now_ms);
            }
        }
        self.pump_replication(now_ms);
    }

    /// Whether a change's result must not be credited: the pair left the epoch its ticket
    /// carried, and the other member holds the record's version. (Were the answering
    /// member's copy the only one descending from the record, it is kept and credited as
    /// usual.)
    fn fenced_off(&self, flight: &InFlight) -> bool {
        let Some((ss, epoch)) = &flight.fence else {
            return false;
        };
        let moved_on = self
            .reg
            .membership(ss)
            .and_then(|(p, m)| Some((self.pairs.get(&p)?, m)))
            .filter(|(st, _)| st.epoch != *epoch);
        moved_on.is_some() && self.partner_holds_record(ss, &flight.file)
    }

    /// Records what a finished operation on `file` did and decides its answer.
    fn apply_result(
        &mut self,
        conn: ConnId,
        file: &str,
        purpose: Purpose,
        result: Result<JobOutput, WireError>,
        now_ms: u64,
    ) -> Finished {
        if matches!(purpose, Purpose::Create { .. }) && !matches!(result, Ok(JobOutput::State(_))) {
            self.undo_create_intent(file);
        }
        match (purpose, result) {
            (
                Purpose::Create {
                    owner,
                    ss,
                    member,
                    then_upload,
                },
                Ok(JobOutput::State(st)),
            ) => {
                // As written ahead, what the answer changes may wait for a later batch.
                let target = if self.created_as_written(file, &ss, &st) {
                    self.lazily(|c| {
                        c.drop_create_intent(file);
                        c.record_created(file, owner, &ss, member, &st, now_ms)
                    })
                } else {
                    self.drop_create_intent(file);
                    self.record_created(file, owner, &ss, member, &st, now_ms)
                };
                if then_upload {
                    let user = match self.reg.peer(conn) {
                        Some(Peer::Client { user, .. }) => user.clone(),
                        _ => String::new(),
                    };
                    Finished::answer(
                        self.locate(&user, file, AccessMode::Upload, None)
                            .map(|m| (m, Vec::new())),
                    )
                } else {
                    Finished::change(
                        target,
                        Want::Content {
                            version: st.version,
                        },
                    )
                }
            }
            (Purpose::Move { .. }, Ok(JobOutput::MoveUnsettled(why))) => {
                self.move_unsettled(file, &why, now_ms)
            }
            (Purpose::Move { to }, Ok(_)) => {
                let target = self.finish_move(file, &to, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = file, to = to.as_str();
                    "moved {file} to {to}");
                let version = self
                    .ns
                    .files
                    .get(&to)
                    .map(|r| r.version)
                    .unwrap_or_default();
                Finished::change(target, Want::Content { version })
            }
            (Purpose::Delete, Ok(_)) => {
                self.drop_delete_intent(file);
                let target = self.record_deleted(file, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = file; "deleted {file}");
                Finished::change(target, Want::Delete)
            }
            (Purpose::Delete, Err(e)) if e.code == crate::protocol::ErrorCode::NotFound => {
                // The copy is already gone; the record follows it.
                self.drop_delete_intent(file);
                let target = self.record_deleted(file, now_ms);
                Finished::change(target, Want::Delete)
            }
            (
                p @ (Purpose::Undo | Purpose::Checkpoint | Purpose::Revert),
                Ok(JobOutput::State(st)),
            ) => {
                let what = match p {
                    Purpose::Checkpoint => "checkpointed",
                    Purpose::Revert => "reverted",
                    _ => "undid the last change of",
                };
                let (target, version) = self.record_writer_change(file, &st, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = file,
                    version = st.version.to_string(); "{what} {file}");
                Finished::change(target, Want::Content { version })
            }
            (
                Purpose::Exec { user, started_ms },
                Ok(JobOutput::Exec {
                    output,
                    exit_code,
                    truncated,
                }),
            ) => {
                let ms = now_ms.saturating_sub(started_ms);
                log::info!(target: ev::NM_EXEC, file = file, user = user.as_str(),
                    exit = exit_code.map(i64::from).unwrap_or(-1), ms = ms;
                    "{user} ran {file}");
                Finished::answer(Ok((
                    Message::ExecOutput {
                        exit_code,
                        truncated,
                    },
                    output,
                )))
            }
            (Purpose::Move { .. }, Err(e)) if e.code == crate::protocol::ErrorCode::Internal => {
                // Its storage failed midway: renamed or not, only the server knows.
                self.move_unsettled(file, &e.msg, now_ms)
            }
            (Purpose::Move { .. }, Err(e)) => {
                // The storage server refused (or could not be reached): the file stays.
                self.drop_move_intent(file);
                Finished::answer(Err(e))
            }
            (Purpose::Delete, Err(e)) if outcome_unknown(&e) => {
                // Not reached, its answer lost, or its storage failed midway (the name may be
                // gone though a sync failed): the server may have removed the file. The
                // intent stays, so the server's next registration settles it by what it lists
                // (see `deletes`); a new DELETE of the name replaces it.
                log::info!(target: ev::NM_FILE_CHANGE, file = file;
                    "the delete of {file} has no answer ({}); settled when its server registers", e.msg);
                Finished::answer(Err(e))
            }
            (Purpose::Delete, Err(e)) => {
                // Refused: the file stays.
                self.drop_delete_intent(file);
                Finished::answer(Err(e))
            }
            (Purpose::Exec { user, .. }, Err(e)) => {
                log::info!(target: ev::NM_EXEC, file = file, user = user.as_str();
                    "EXEC of {file} failed: {}", e.msg);
                Finished::answer(Err(e))
            }
            (_, Err(e)) => Finished::answer(Err(e)),
            (_, Ok(other)) => Finished::answer(Err(err::internal(format!(
                "unexpected answer from the storage server: {other:?}"
            )))),
        }
    }

    /// A CREATE made `file` on `member` of pair `ss`: the new record (held by that member
    /// only), and the member owed its content, if any.
    fn record_created(
        &mut self,
        file: &str,
        owner: String,
        ss: &str,
        member: Member,
        st: &FileState,
        now_ms: u64,
    ) -> Option<String> {
        let wall_ms = self.wall_ms();
        let modified_ms = if st.modified_ms > 0 {
            st.modified_ms
        } else {
            wall_ms
        };
        let rec = FileRecord::first(owner, ss, member, st, wall_ms, modified_ms);
        self.put_file(file, rec);
        log::info!(target: ev::NM_FILE_CHANGE, file = file, ss = ss,
            version = st.version.to_string(); "created {file} on {ss}");
        self.owe(file, false, now_ms)
    }

    /// An SS_MOVE's answer was lost: renamed or not, only the server knows. The intent and
    /// both names' reservations stay until it registers again and lists what it holds
    /// (`resolve_moves`), or its pair takes a new epoch (`forget_moves_before`). If that
    /// epoch has come already, the move is given up now.
    fn move_unsettled(&mut self, file: &str, why: &str, now_ms: u64) -> Finished {
        let epoch_moved = self
            .ns
            .moves
            .get(file)
            .is_some_and(|m| self.epoch_of(&m.ss) != m.epoch);
        if epoch_moved {
            self.abandon_move(file, now_ms);
        }
        log::warn!(target: ev::NM_FILE_CHANGE, file = file;
            "the move of {file} is unsettled: {why}");
        Finished {
            reply: Err(err::unavailable(format!(
                "the move of {} may or may not have been made ({why}); it is settled when its storage server registers again",
                names::display(file)
            ))),
            change: None,
            unsettled: !epoch_moved,
        }
    }

    /// `file` is gone from its writer: the record and its access requests go, and the other
    /// member is owed the removal. Returns that member, if any.
    fn record_deleted(&mut self, file: &str, now_ms: u64) -> Option<String> {
        let ss = self.ns.files.get(file).map(|r| r.ss.clone());
        if let Some(ss) = &ss {
            self.reg.note_removed(ss, file);
            self.retire_name(file);
        }
        self.drop_requests_for(file);
        self.del_file(file);
        ss.and_then(|ss| self.owe_delete(&ss, file, now_ms))
    }

    /// The pair's writer made a new version of `file` (UNDO, CHECKPOINT, REVERT): the record
    /// takes it unless it already holds a newer one. Returns the member owed the change and
    /// the version it must reach.
    fn record_writer_change(
        &mut self,
        file: &str,
        st: &FileState,
        now_ms: u64,
    ) -> (Option<String>, Version) {
        if let Some(rec) = self.ns.files.get(file) {
            let mut rec = rec.clone();
            if st.version >= rec.version {
                let writer = self.writer_member(&rec.ss);
                rec.apply_change(writer, st);
                self.put_file(file, rec);
            }
        }
        let target = self.owe(file, true, now_ms);
        let version = self.ns.files.get(file).map_or(st.version, |r| r.version);
        (target, version)
    }

    /// Sends a finished operation's answer: after the backup's copy (or degraded) for a change
    /// in sync mode, at once otherwise.
    fn answer_result(
        &mut self,
        conn: ConnId,
        file: &str,
        reply: Result<(Message, Vec<u8>), WireError>,
        change: Option<(Option<String>, Want)>,
        now_ms: u64,
    ) {
        match (reply, change) {
            (Ok(_), Some((target, want))) => {
                self.answer_change(Waiter::Client(conn), file, target, want, now_ms)
            }
            (Ok((msg, body)), None) => {
                self.set_busy(conn, false);
                self.out.push(Effect::Reply { conn, msg, body })
            }
            (Err(e), _) => {
                self.set_busy(conn, false);
                self.fail(conn, e)
            }
        }
    }

    /// Whether the other member of `ss`'s pair holds the record's version of `file` (or
    /// there is no record), so `ss`'s copy can be repaired from it.
    pub(super) fn partner_holds_record(&self, ss: &str, file: &str) -> bool {
        self.reg.membership(ss).is_some_and(|(_, m)| {
            self.ns
                .files
                .get(file)
                .is_none_or(|rec| rec.holds(m.other()))
        })
    }

    /// `ss` may hold changes to `files` the cluster never took (made in an epoch that has
    /// ended): its copies are not current until repaired, and it is owed the record's state
    /// of each (or its removal), with its own copy set aside first.
    pub(super) fn set_aside_on(&mut self, ss: &str, files: &[String], now_ms: u64) {
        let why = SetAside::EndedEpoch;
        let member = self.reg.membership(ss).map(|(_, m)| m);
        for f in files {
            let want = match self.ns.files.get(f).cloned() {
                Some(mut rec) => {
                    // Not current there until the job has repaired it.
                    if let Some(m) = member {
                        rec.set_held(m, None);
                        self.put_file(f, rec.clone());
                    }
                    Want::Content {
                        version: rec.version,
                    }
                }
                None => Want::Delete,
            };
            self.upsert_job_q(ss, f, want, Some(why), now_ms);
        }
    }

    /// A change a member made under an epoch that has since ended (its answer arrived after
    /// a failover or handback moved the writer): crediting it to whoever writes now would
    /// record a version that member lacks. The client hears it was not applied, the record
    /// stays as it was, and the member that made it is owed the record's state with its own
    /// copy set aside first (it holds a change the cluster never acknowledged).
    pub(super) fn fenced_result(&mut self, flight: InFlight, now_ms: u64) {
        let Some((ss, epoch)) = flight.fence.clone() else {
            return;
        };
        let mut touched = vec![flight.file.clone()];
        if let Purpose::Move { to } = &flight.purpose {
            touched.push(to.clone());
            self.drop_move_intent(&flight.file);
        }
        if matches!(flight.purpose, Purpose::Delete) {
            self.drop_delete_intent(&flight.file);
        }
        if matches!(flight.purpose, Purpose::Create { .. }) {
            self.undo_create_intent(&flight.file);
        }
        log::warn!(target: ev::NM_SS_RECOVERY, file = flight.file.as_str(), ss = ss.as_str(), epoch = epoch;
            "{ss} answered a change of {} made in epoch {epoch}, which has ended; it is not applied and that copy is set aside",
            flight.file);
        self.set_aside_on(&ss, &touched, now_ms);
        self.set_busy(flight.conn, false);
        let pair = self.reg.pair_name(&ss);
        self.fail(
            flight.conn,
            err::unavailable(format!(
                "pair {pair} changed writers while the change to {} ran; {}",
                names::display(&flight.file),
                crate::protocol::NOT_APPLIED_TRY_AGAIN
            )),
        );
        if flight.serialised {
            for f in &touched {
                self.next_for_file(f, now_ms);
            }
        }
        self.pump_replication(now_ms);
    }

    /// Starts the next waiting request on a file whose operation just finished.
    pub(super) fn next_for_file(&mut self, file: &str, now_ms: u64) {
        let mut waiting = self.ops.release(file);
        while let Some(p) = waiting.pop_front() {
            if !self.reg.has_peer(p.conn) {
                continue;
            }
            self.start_serialised(file, p, now_ms);
            // A job started: the rest wait for it.
            if self.ops.wait_again(file, &mut waiting) {
                return;
            }
        }
    }
}

/// Whether a failed call may still have made its change: the server was not reached or its
/// answer was lost (UNAVAILABLE), or its storage failed midway (INTERNAL: a rename or removal
/// may be made though a sync after it failed).
fn outcome_unknown(e: &WireError) -> bool {
    matches!(
        e.code,
        crate::protocol::ErrorCode::Unavailable | crate::protocol::ErrorCode::Internal
    )
}

/// What a finished operation did: its answer, the change then owed to the other member of
/// its pair (target, what it must reach; answered through `answer_change`), and whether it
/// is a MOVE whose outcome is unknown (its names stay reserved).
struct Finished {
    reply: Result<(Message, Vec<u8>), WireError>,
    change: Option<(Option<String>, Want)>,
    unsettled: bool,
}

impl Finished {
    /// An answer with no change owed.
    fn answer(reply: Result<(Message, Vec<u8>), WireError>) -> Finished {
        Finished {
            reply,
            change: None,
            unsettled: false,
        }
    }

    /// DONE once `want` reached `target` (or degraded, in sync mode).
    fn change(target: Option<String>, want: Want) -> Finished {
        Finished {
            reply: Ok((Message::Done {}, Vec::new())),
            change: Some((target, want)),
            unsettled: false,
        }
    }
}
