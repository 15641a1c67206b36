//! Client requests on the namespace: dispatch of a session's messages, lookups, rights
//! (owner / read / write), INFO, access grants, LOCATE (which member a client reads from or
//! writes to, with a ticket), and EXEC.
//!
//! Uses the core's `files`, `folders` and `users`. Invariants:
//! * existence is checked before rights, so a user without access learns no more than
//!   NOT_FOUND would tell;
//! * a write goes only to the pair's writer, in its epoch, and only if that member holds the
//!   current version (a promoted backup that never received a file's latest change cannot
//!   take changes of it: that would fork it);
//! * a read goes only to a live member holding the current version.

use super::*;

/// The namespace's durable state: who exists, what files and folders there are, who may do
/// what with them, and the MOVEs and DELETEs not yet settled.
pub(super) struct Namespace {
    /// Every user ever seen.
    pub(super) users: BTreeSet<String>,
    /// Bound users' public keys (see `crate::identity`).
    pub(super) user_keys: HashMap<String, String>,
    /// Files by canonical name.
    pub(super) files: BTreeMap<String, FileRecord>,
    /// Folders by canonical name; with `files`, the namespace's ordered index.
    pub(super) folders: BTreeMap<String, FolderRecord>,
    /// Pending access requests by id.
    pub(super) requests: BTreeMap<u64, AccessRequest>,
    /// The next access-request id (only rises).
    pub(super) next_request: u64,
    /// MOVEs sent (or about to be) and not yet settled, by the file's old name.
    pub(super) moves: BTreeMap<String, MoveIntent>,
    /// DELETEs sent (or about to be) and not yet settled, by the file's name.
    pub(super) deletes: BTreeMap<String, DeleteIntent>,
    /// CREATEs not settled (see `creates.rs`).
    pub(super) creates: BTreeMap<String, CreateIntent>,
}

impl Core {
    pub(super) fn client_request(&mut self, conn: ConnId, user: String, msg: Message, now_ms: u64) {
        match msg {
            Message::Create { .. }
            | Message::Delete { .. }
            | Message::Undo { .. }
            | Message::Move { .. }
            | Message::Checkpoint { .. }
            | Message::Revert { .. } => self.serialised(conn, user, msg, now_ms),
            Message::CreateFolder { folder } => match self.create_folder(&user, &folder) {
                Ok(()) => self.reply(conn, Message::Done {}),
                Err(e) => self.fail(conn, e),
            },
            Message::ViewFolder { folder } => match self.view_folder(&folder) {
                Ok(entries) => {
                    let pages = frame::paginate(entries, |e| 2 * e.name.len() + 32);
                    let last = pages.len() - 1;
                    for (i, entries) in pages.into_iter().enumerate() {
                        let more = i < last;
                        self.reply(conn, Message::FolderList { entries, more });
                    }
                }
                Err(e) => self.fail(conn, e),
            },
            Message::RequestAccess { file, kind } => {
                match self.request_access(&user, &file, kind) {
                    Ok(id) => self.reply(conn, Message::RequestCreated { id }),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::ViewRequests {} => {
                let requests = self.view_requests(&user);
                let pages = frame::paginate(requests, |r| 2 * (r.user.len() + r.file.len()) + 96);
                let last = pages.len() - 1;
                for (i, requests) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::Requests { requests, more });
                }
            }
            Message::AnswerRequest { id, approve } => {
                match self.answer_request(&user, id, approve) {
                    Ok(()) => self.reply(conn, Message::Done {}),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Locate {
                mode: AccessMode::Upload,
                ..
            } => self.serialised(conn, user, msg, now_ms),
            Message::Recover { ss } => match self.recover(&ss, now_ms) {
                Ok(queued) => self.reply(conn, Message::RecoverQueued { queued }),
                Err(e) => self.fail(conn, e),
            },
            Message::Status {} => {
                let m = self.status_reply(now_ms);
                self.reply(conn, m);
            }
            Message::Fsck { file, after } => {
                if let Err(e) = self.fsck(conn, file, after) {
                    self.fail(conn, e);
                }
            }
            Message::Exec { file } => match self.exec(conn, &user, &file, now_ms) {
                Ok(()) => {}
                Err(e) => self.fail(conn, e),
            },
            Message::Info { file } => match self.info(&user, &file) {
                Ok(info) => self.reply(conn, Message::InfoReply { info }),
                Err(e) => self.fail(conn, e),
            },
            Message::View { all, .. } => {
                let mut files: Vec<FileSummary> = self
                    .ns
                    .files
                    .iter()
                    .filter(|(_, r)| all || r.can_read(&user))
                    .map(|(f, r)| FileSummary {
                        file: names::display(f),
                        owner: r.owner.clone(),
                        words: r.words,
                        chars: r.chars,
                        accessed_ms: r.accessed_ms,
                        accessed_by: r.accessed_by.clone(),
                    })
                    .collect();
                files.sort_by(|a, b| a.file.cmp(&b.file));
                // JSON escaping at most doubles a string; 160 bytes cover keys and numbers.
                let pages = frame::paginate(files, |f| {
                    2 * (f.file.len()
                        + f.owner.len()
                        + f.accessed_by.as_ref().map_or(0, String::len))
                        + 160
                });
                let last = pages.len() - 1;
                for (i, files) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::FileList { files, more });
                }
            }
            Message::ListUsers {} => {
                let users: Vec<String> = self.ns.users.iter().cloned().collect();
                let pages = frame::paginate(users, |u| 2 * u.len() + 4);
                let last = pages.len() - 1;
                for (i, users) in pages.into_iter().enumerate() {
                    let more = i < last;
                    self.reply(conn, Message::Users { users, more });
                }
            }
            Message::AddAccess {
                file,
                user: grantee,
                write,
            } => match self.add_access(&user, &file, &grantee, write) {
                Ok(new_user) => self.reply(conn, Message::AccessGranted { new_user }),
                Err(e) => self.fail(conn, e),
            },
            Message::RemAccess { file, user: target } => {
                match self.rem_access(&user, &file, &target) {
                    Ok(()) => self.reply(conn, Message::Done {}),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Locate { file, mode, avoid } => {
                match self.locate(&user, &file, mode, avoid.as_deref()) {
                    Ok(m) => self.reply(conn, m),
                    Err(e) => self.fail(conn, e),
                }
            }
            Message::Hello { .. } | Message::Prove { .. } => {
                self.fail(conn, err::invalid("already introduced"))
            }
            other => self.fail(
                conn,
                err::invalid(format!("{} is not a name server request", other.op_name())),
            ),
        }
    }

    /// Looks up a file the user names, with the existence check before the rights check.
    pub(super) fn lookup(&self, file: &str) -> Result<(String, &FileRecord), WireError> {
        let canon = names::canonical_file(file)?;
        match self.ns.files.get(&canon) {
            Some(r) => Ok((canon, r)),
            None => Err(not_found(&canon)),
        }
    }

    pub(super) fn need_read(rec: &FileRecord, user: &str, file: &str) -> Result<(), WireError> {
        if rec.can_read(user) {
            Ok(())
        } else {
            Err(err::unauthorized(format!(
                "User {user} has no read access to {}",
                names::display(file)
            )))
        }
    }

    pub(super) fn need_write(rec: &FileRecord, user: &str, file: &str) -> Result<(), WireError> {
        if rec.can_write(user) {
            Ok(())
        } else {
            Err(err::unauthorized(format!(
                "User {user} has no write access to {}",
                names::display(file)
            )))
        }
    }

    pub(super) fn need_owner(rec: &FileRecord, user: &str, what: &str) -> Result<(), WireError> {
        if rec.owner == user {
            Ok(())
        } else {
            Err(err::unauthorized(what.to_string()))
        }
    }

    /// The live address of server `name`, or UNAVAILABLE for `file`.
    pub(super) fn live_addr_of(&self, name: &str, file: &str) -> Result<String, WireError> {
        match self.reg.server(name) {
            Some(s) if s.up => Ok(s.rec.addr()),
            _ => Err(no_live_copy(file)),
        }
    }

    /// The member that takes changes of `rec`'s file now: (name, address, epoch). With
    /// `need_current` it must also hold the current version (a promoted backup that never
    /// received a file's latest change cannot take changes of it: that would fork it).
    pub(super) fn writer_for(
        &self,
        rec: &FileRecord,
        file: &str,
        need_current: bool,
    ) -> Result<(String, String, u64), WireError> {
        let p = rec.ss.as_str();
        let Some(st) = self.pairs.get(p).filter(|_| self.reg.is_paired(p)) else {
            return Ok((p.to_string(), self.live_addr_of(p, file)?, EPOCH));
        };
        let Some(w) = self.reg.member_name(p, st.writer) else {
            return Err(no_live_copy(file));
        };
        if !self.reg.is_up(&w)
            && !self
                .reg
                .member_name(p, st.writer.other())
                .is_some_and(|o| self.reg.is_up(&o))
        {
            return Err(no_live_copy(file));
        }
        if st.phase != Phase::Serving || !self.reg.is_up(&w) {
            return Err(err::unavailable(format!(
                "{} cannot take changes for a moment: pair {p} {} (epoch {})",
                names::display(file),
                crate::protocol::MOVING_WRITER,
                st.epoch
            )));
        }
        if need_current && !rec.holds(st.writer) {
            return Err(no_live_copy(file));
        }
        let addr = self.live_addr_of(&w, file)?;
        Ok((w, addr, st.epoch))
    }

    /// A live member holding `rec`'s current version, the writer first, never `avoid`.
    pub(super) fn reader_for(
        &self,
        rec: &FileRecord,
        file: &str,
        avoid: Option<&str>,
    ) -> Result<(String, String), WireError> {
        let p = rec.ss.as_str();
        if !self.reg.is_paired(p) {
            if avoid == Some(p) {
                return Err(no_live_copy(file));
            }
            return Ok((p.to_string(), self.live_addr_of(p, file)?));
        }
        let first = self.writer_member(p);
        for m in [first, first.other()] {
            let Some(name) = self.reg.member_name(p, m) else {
                continue;
            };
            if Some(name.as_str()) == avoid || !rec.holds(m) {
                continue;
            }
            if let Ok(addr) = self.live_addr_of(&name, file) {
                return Ok((name, addr));
            }
        }
        Err(no_live_copy(file))
    }

    pub(super) fn info(&self, user: &str, file: &str) -> Result<FileInfo, WireError> {
        let (canon, rec) = self.lookup(file)?;
        Self::need_read(rec, user, &canon)?;
        let mut access = vec![AccessEntry {
            user: rec.owner.clone(),
            write: true,
        }];
        access.extend(
            rec.access
                .iter()
                .filter(|(u, _)| **u != rec.owner)
                .map(|(u, w)| AccessEntry {
                    user: u.clone(),
                    write: *w,
                }),
        );
        let mut replicas = Vec::new();
        for m in [Member::Primary, Member::Backup] {
            let Some(name) = self.reg.member_name(&rec.ss, m) else {
                continue;
            };
            let state = if !self.reg.is_up(&name) {
                "down"
            } else {
                match rec.held(m) {
                    Some(v) if v == rec.version => "current",
                    Some(_) => "stale",
                    None => "missing",
                }
            };
            replicas.push(ReplicaInfo {
                ss: name,
                state: state.to_string(),
            });
        }
        Ok(FileInfo {
            file: names::display(&canon),
            owner: rec.owner.clone(),
            created_ms: rec.created_ms,
            modified_ms: rec.modified_ms,
            size: rec.size,
            words: rec.words,
            chars: rec.chars,
            access,
            accessed_ms: rec.accessed_ms,
            accessed_by: rec.accessed_by.clone(),
            version: rec.version,
            checksum: rec.checksum,
            replicas,
        })
    }

    pub(super) fn add_access(
        &mut self,
        user: &str,
        file: &str,
        grantee: &str,
        write: bool,
    ) -> Result<bool, WireError> {
        names::validate_user(grantee)?;
        let (canon, rec) = self.lookup(file)?;
        let shown = names::display(&canon);
        Self::need_owner(
            rec,
            user,
            &format!("Only the owner can change access to {shown}"),
        )?;
        if grantee == rec.owner {
            return Err(err::invalid(format!(
                "{grantee} owns {shown} and already has read and write access"
            )));
        }
        let mut rec = rec.clone();
        rec.access.insert(grantee.to_string(), write);
        self.put_file(&canon, rec);
        Ok(!self.ns.users.contains(grantee))
    }

    pub(super) fn rem_access(
        &mut self,
        user: &str,
        file: &str,
        target: &str,
    ) -> Result<(), WireError> {
        let (canon, rec) = self.lookup(file)?;
        let shown = names::display(&canon);
        Self::need_owner(
            rec,
            user,
            &format!("Only the owner can change access to {shown}"),
        )?;
        if target == rec.owner {
            return Err(err::invalid(format!(
                "{target} owns {shown}; the owner's access cannot be removed"
            )));
        }
        if !rec.access.contains_key(target) {
            return Err(err::not_found(format!(
                "User {} has no access to {shown}",
                names::show(target)
            )));
        }
        let mut rec = rec.clone();
        rec.access.remove(target);
        self.put_file(&canon, rec);
        Ok(())
    }

    pub(super) fn locate(
        &mut self,
        user: &str,
        file: &str,
        mode: AccessMode,
        avoid: Option<&str>,
    ) -> Result<Message, WireError> {
        let (canon, rec) = self.lookup(file)?;
        let op = match mode {
            AccessMode::Read => {
                Self::need_read(rec, user, &canon)?;
                TicketOp::Read
            }
            AccessMode::Stream => {
                Self::need_read(rec, user, &canon)?;
                TicketOp::Stream
            }
            AccessMode::Upload => {
                Self::need_write(rec, user, &canon)?;
                TicketOp::Upload
            }
            AccessMode::Write => {
                Self::need_write(rec, user, &canon)?;
                TicketOp::Write
            }
        };
        let (ss, addr, ticket) = match op {
            TicketOp::Read | TicketOp::Stream => {
                let (ss, addr) = self.reader_for(rec, &canon, avoid)?;
                let ticket = self.mint(user, &canon, op, &ss, Some(rec.version));
                (ss, addr, ticket)
            }
            _ => {
                let (ss, addr, epoch) = self.writer_for(rec, &canon, true)?;
                let ticket = self.mint_change(user, &canon, op, &ss, Some(rec.version), epoch);
                (ss, addr, ticket)
            }
        };
        // In memory only: a READ writes nothing durable (see `access`).
        self.touch(&canon, user);
        Ok(Message::Located { ss, addr, ticket })
    }

    pub(super) fn exec(
        &mut self,
        conn: ConnId,
        user: &str,
        file: &str,
        now_ms: u64,
    ) -> Result<(), WireError> {
        let (canon, rec) = self.lookup(file)?;
        Self::need_read(rec, user, &canon)?;
        if !self.cfg.exec_enabled {
            return Err(err::unauthorized("EXEC is disabled on this name server"));
        }
        let (ss, addr) = self.reader_for(rec, &canon, None)?;
        let ticket = self.mint(NM_USER, &canon, TicketOp::Read, &ss, Some(rec.version));
        let msg = Message::Read {
            file: canon.clone(),
            ticket,
        };
        self.set_busy(conn, true);
        self.new_job(
            JobKind::Exec { addr, msg },
            InFlight {
                conn,
                file: canon,
                purpose: Purpose::Exec {
                    user: user.to_string(),
                    started_ms: now_ms,
                },
                serialised: false,
                fence: None,
            },
        );
        Ok(())
    }
}
