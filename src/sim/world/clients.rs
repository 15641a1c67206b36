//! The simulated clients: a workload of CREATE, WRITE (LOCATE, the commit on the writer,
//! CHANGED and its ack), READ, DELETE and UNDO, each reaching the name server without network
//! faults; the commit and the read call the storage server's store as its handlers do.

use super::*;

impl World {
    pub(super) fn client_connect(&mut self, c: usize) {
        if self.nm.core.is_none() {
            return;
        }
        let conn = self.conn();
        self.clients[c].conn = Some(conn);
        self.clients[c].welcomed = false;
        let user = self.clients[c].user;
        self.core_do(|core, now| core.on_connect(conn, now));
        self.nm_frame(conn, Message::Hello { user: user.into() });
    }

    pub(super) fn user_key(user: &str) -> UserKey {
        let mut seed = [7u8; 32];
        for (i, b) in user.bytes().enumerate() {
            seed[i % 32] ^= b;
        }
        UserKey::from_seed(seed)
    }

    pub(super) fn client_start(&mut self, c: usize) {
        let Some(conn) = self.clients[c].conn else {
            return self.client_connect(c);
        };
        if self.clients[c].op.is_some() || !self.clients[c].welcomed {
            return;
        }
        let file = format!("f{}.txt", self.rng.below(FILES as u64));
        let acked = self.acked.get(&file).copied();
        let (op, msg) = match self.rng.below(10) {
            0 => (Op::Create(file.clone()), Message::Create { file }),
            1..=4 => (
                Op::Write(file.clone()),
                Message::Locate {
                    file,
                    mode: AccessMode::Write,
                    avoid: None,
                },
            ),
            5..=7 => (
                Op::Read(file.clone(), acked),
                Message::Locate {
                    file,
                    mode: AccessMode::Read,
                    avoid: None,
                },
            ),
            8 => {
                self.acked.remove(&file);
                *self.generation.entry(file.clone()).or_default() += 1;
                // A file created again counts its versions from the start.
                self.served.retain(|(f, _), _| *f != file);
                (Op::Delete(file.clone()), Message::Delete { file })
            }
            _ => {
                self.acked.remove(&file);
                *self.generation.entry(file.clone()).or_default() += 1;
                (Op::Undo(file.clone()), Message::Undo { file })
            }
        };
        self.log(format!("client {c} {op:?}"));
        self.clients[c].op = Some((op, self.now));
        self.nm_frame(conn, msg);
    }

    pub(super) fn client_reply(&mut self, c: usize, msg: Message) {
        let conn = self.clients[c].conn.unwrap_or(0);
        if let Message::Challenge { nonce } = &msg {
            let user = self.clients[c].user;
            let key = Self::user_key(user);
            let prove = Message::Prove {
                key: key.public_hex(),
                sig: key.prove(user, nonce),
            };
            return self.nm_frame(conn, prove);
        }
        if let Message::Welcome { .. } = &msg {
            self.clients[c].welcomed = true;
            return;
        }
        let Some((op, _)) = self.clients[c].op.take() else {
            return;
        };
        match (op, msg) {
            (Op::Write(file), Message::Located { addr, ticket, .. }) => {
                self.commit(c, &addr, &file, &ticket)
            }
            (Op::Read(file, floor), Message::Located { addr, ticket, .. }) => {
                self.read(c, &addr, &file, &ticket, floor)
            }
            (op, Message::Err { code, msg }) => {
                self.log(format!("client {c} {op:?}: {code}: {msg}"))
            }
            (op, m) => {
                if let Op::Create(file) = &op {
                    self.served.retain(|(f, _), _| f != file);
                }
                // A commit made while the removal was on its way is ordered before it: its
                // acknowledgement, arriving after this, no longer sets a floor for reads.
                if let Op::Delete(file) | Op::Undo(file) = &op {
                    self.acked.remove(file);
                    *self.generation.entry(file.clone()).or_default() += 1;
                }
                self.report.acked += 1;
                self.log(format!("client {c} {op:?} -> {}", m.op_name()));
            }
        }
    }

    /// A client's commit on the writer (the store's change protocol, then CHANGED). A
    /// journaled change is reported `pending` once its entry is written, as `bin_ss` does;
    /// should its flush then fail, that report has reached the name server and the server
    /// exits (its journal failed), after a power loss half the time, so a report of a change
    /// that was never made must be rolled back at its registration.
    pub(super) fn commit(&mut self, c: usize, addr: &str, file: &str, ticket: &Ticket) {
        let Some(i) = self.ss_by_addr(addr) else {
            return self.log(format!("client {c} commit {file}: nobody at {addr}"));
        };
        if self.cut[i] {
            return self.log(format!("client {c} commit {file}: unreachable"));
        }
        let mut written = None;
        let r = (|| -> Result<FileState, WireError> {
            let st = self.checked(i, ticket, file, TicketOp::Write)?;
            self.may_write(i, ticket, &st)?;
            let lock = st.file_lock(file);
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            let (old, _) = st.current(file).map_err(WireError::from)?;
            if ticket.min_version.is_some_and(|m| m > old.version) {
                return Err(err::unavailable("stale copy"));
            }
            let text = format!("{} by {c} at {}", old.version, self.now);
            let m = st.write_content_over(file, old, None, text.as_bytes(), &mut |m, made| {
                if made == Made::Written {
                    written = Some(m.state(file));
                }
            })?;
            Ok(m.state(file))
        })();
        let name = self.ss[i].name;
        match r {
            Err(e) => {
                self.log(format!(
                    "client {c} commit {file} on {name}: {}: {}",
                    e.code, e.msg
                ));
                let failed = self.ss[i]
                    .store
                    .as_ref()
                    .is_some_and(|st| st.journal_failed());
                if let (Some(state), true, Some(conn)) = (written, failed, self.ss[i].conn) {
                    let (_, changed) = self.next_changed(i, state, true);
                    self.nm_frame(conn, changed);
                    let power = self.rng.below(2) == 0;
                    self.log(format!(
                        "{name}: the journal failed after a reported change; it exits"
                    ));
                    self.ss_down(i, power);
                }
            }
            Ok(state) => {
                let v = state.version;
                self.log(format!("{name} commits {file} {v} {:08x}", state.checksum));
                let Some(conn) = self.ss[i].conn else {
                    return;
                };
                let (id, changed) = self.next_changed(i, state, written.is_some());
                let gen = self.generation.get(file).copied().unwrap_or(0);
                self.ss[i].waiting.insert(id, (c, file.to_string(), v, gen));
                self.clients[c].op = Some((Op::Write(file.to_string()), self.now));
                self.send(conn, true, changed);
            }
        }
    }

    /// Server `i`'s next CHANGED, reporting `state` (`pending`: before its flush), and its id.
    fn next_changed(&mut self, i: usize, state: FileState, pending: bool) -> (u64, Message) {
        self.ss[i].next_id += 1;
        let id = self.ss[i].next_id;
        let changed = Message::Changed {
            staged: None,
            pending,
            id,
            state,
        };
        (id, changed)
    }

    pub(super) fn read(
        &mut self,
        _c: usize,
        addr: &str,
        file: &str,
        ticket: &Ticket,
        floor: Option<Version>,
    ) {
        let Some(i) = self.ss_by_addr(addr) else {
            return;
        };
        if self.cut[i] {
            return;
        }
        let r = (|| -> Result<(Version, u32), WireError> {
            let st = self.checked(i, ticket, file, TicketOp::Read)?;
            let (_, meta, _) = st.load_text(file).map_err(WireError::from)?;
            if ticket.min_version.is_some_and(|m| m > meta.version) {
                return Err(err::unavailable("stale copy"));
            }
            Ok((meta.version, meta.checksum))
        })();
        let name = self.ss[i].name;
        let Ok((v, sum)) = r else {
            return;
        };
        self.report.reads += 1;
        self.log(format!("{name} serves {file} {v} {sum:08x}"));
        if let Some(f) = floor {
            if v < f {
                return self.fail(format!(
                    "stale read: {name} served {file} {v}, {f} was acknowledged before the read"
                ));
            }
        }
        match self.served.insert((file.to_string(), v), sum) {
            Some(other) if other != sum => self.fail(format!(
                "fork: {file} {v} served with checksums {other:08x} and {sum:08x}"
            )),
            _ => {}
        }
    }
}
