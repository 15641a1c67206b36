//! The storage-server registry: registration, reconciling a server's file list with the
//! index, what a returning member is owed, the messages a registered server sends
//! (heartbeats, CHANGED, REMOVED, ...), and the pair topology derived from the `servers` and
//! `pairs` tables (who backs up whom, which member writes, at which epoch).
//!
//! # The part
//!
//! [`Registry`] owns the servers (durable records and runtime state: up, link, heartbeat,
//! lease bound, file count, disk), the pairs' membership (`primary -> backup`), what each
//! connection is, the introduction deadlines and origins of connections, the used proof
//! nonces, and the names removed per link. It decides everything that reads only them:
//! membership and roles by name, who is a backup, a registration's new server state, which
//! servers fell silent, what a closing link takes down, whether a late CHANGED names a
//! removed file. It returns what happened (a server that went down, the links to close, a
//! new pair) and the core routes it: the store batch, events, the pairs' state machine
//! (`pairs::Pairs`, whose writer and epoch combine with the membership here in
//! `Core::writer_member`, `Core::live_writer`, `Core::may_write`), the queue and the index.
//!
//! Invariants:
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
    proof_nonces: NonceMemory,
    /// Every storage server ever registered (durable record, runtime state).
    servers: BTreeMap<String, ServerLive>,
    /// What each connection is (unknown, a session, a registering or registered server).
    peers: HashMap<ConnId, Peer>,
    /// Connections that have not finished HELLO or registration, with their deadline.
    introducing: HashMap<ConnId, u64>,
    /// The address each connection came from (set by the event loop after `on_connect`).
    origins: HashMap<ConnId, addr::Origin>,
    /// Pairs: primary name to backup name (durable).
    pairs: BTreeMap<String, String>,
    /// Names removed (DELETE, or the old name of a MOVE) while each registered server's link
    /// was up, at most [`REMOVED_REMEMBERED`] per link (see [`Removed`]).
    removed: HashMap<ConnId, Removed>,
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

impl Registry {
    /// The registry as loaded: the durable servers (all down) and pairs, no connections.
    pub(super) fn load(
        servers: BTreeMap<String, ServerLive>,
        pairs: BTreeMap<String, String>,
    ) -> Self {
        Registry {
            proof_nonces: NonceMemory::new(MAX_LIVE_PROOFS),
            servers,
            peers: HashMap::new(),
            introducing: HashMap::new(),
            origins: HashMap::new(),
            pairs,
            removed: HashMap::new(),
        }
    }

    // Servers.

    /// Server `name`, up or down.
    pub(super) fn server(&self, name: &str) -> Option<&ServerLive> {
        self.servers.get(name)
    }

    /// Server `name` if it is up.
    pub(super) fn live_server(&self, name: &str) -> Option<&ServerLive> {
        self.servers.get(name).filter(|s| s.up)
    }

    /// Every server ever registered, by name.
    pub(super) fn servers(&self) -> impl Iterator<Item = (&String, &ServerLive)> {
        self.servers.iter()
    }

    pub(super) fn is_up(&self, name: &str) -> bool {
        self.servers.get(name).is_some_and(|s| s.up)
    }

    /// True while server `name` is up on a live connection.
    pub(super) fn is_connected(&self, name: &str) -> bool {
        self.servers
            .get(name)
            .is_some_and(|s| s.up && s.conn.is_some())
    }

    /// A file record moved from server `from` (if any) to `to` (if any): the per-server file
    /// counts follow.
    pub(super) fn count_file_move(&mut self, from: Option<&str>, to: Option<&str>) {
        if let Some(s) = from.and_then(|o| self.servers.get_mut(o)) {
            s.files = s.files.saturating_sub(1);
        }
        if let Some(s) = to.and_then(|n| self.servers.get_mut(n)) {
            s.files += 1;
        }
    }

    /// Notes a heartbeat from `name`.
    pub(super) fn heartbeat(
        &mut self,
        name: &str,
        seq: u64,
        disk: Option<crate::protocol::DiskUsage>,
        now_ms: u64,
    ) {
        if let Some(s) = self.servers.get_mut(name) {
            s.last_heartbeat_ms = Some(now_ms);
            s.last_seq = seq;
            if disk.is_some() {
                s.disk = disk;
            }
        }
    }

    /// Extends the bound of `name`'s lease to `until_ms` (never shortens it).
    pub(super) fn renew_lease(&mut self, name: &str, until_ms: u64) {
        if let Some(s) = self.servers.get_mut(name) {
            s.lease_until_ms = s.lease_until_ms.max(until_ms);
        }
    }

    /// `name` says it holds no lease any more: its lease bound is `now_ms`.
    pub(super) fn end_lease(&mut self, name: &str, now_ms: u64) {
        if let Some(s) = self.servers.get_mut(name) {
            s.lease_until_ms = now_ms;
        }
    }

    /// Where `name`'s lease ends at the latest (0 for an unknown server).
    pub(super) fn lease_end(&self, name: &str) -> u64 {
        self.servers.get(name).map_or(0, |s| s.lease_until_ms)
    }

    /// Server `name` registered on `conn` with record `rec`: it is up, its file count and
    /// lease bound carry over (a new server's lease bound is `first_lease_until_ms`).
    /// Returns whether the record changed (it must be stored) and whether the server was
    /// down before.
    pub(super) fn register(
        &mut self,
        name: &str,
        rec: &ServerRecord,
        conn: ConnId,
        first_lease_until_ms: u64,
        now_ms: u64,
    ) -> (bool, bool) {
        let known = self.servers.get(name);
        let changed = known.map(|s| &s.rec) != Some(rec);
        let was_down = known.is_some_and(|s| !s.up);
        let files = known.map_or(0, |s| s.files);
        let lease_until_ms = known.map_or(first_lease_until_ms, |s| s.lease_until_ms);
        self.servers.insert(
            name.to_string(),
            ServerLive {
                rec: rec.clone(),
                up: true,
                last_heartbeat_ms: Some(now_ms),
                conn: Some(conn),
                files,
                last_seq: 0,
                lease_until_ms,
                disk: None,
            },
        );
        self.introducing.remove(&conn);
        (changed, was_down)
    }

    /// The deadlines by which each up server's next heartbeat must arrive.
    pub(super) fn heartbeat_deadlines(&self, timeout_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.servers
            .values()
            .filter(|s| s.up)
            .filter_map(|s| s.last_heartbeat_ms)
            .map(move |t| t + timeout_ms)
    }

    /// Marks down every up server silent for `timeout_ms` or more, dropping its link.
    /// Returns each one's name and the connection to close.
    pub(super) fn take_silent(
        &mut self,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Vec<(String, Option<ConnId>)> {
        let mut down = Vec::new();
        for (name, s) in self.servers.iter_mut() {
            let silent = s
                .last_heartbeat_ms
                .is_some_and(|t| now_ms >= t + timeout_ms);
            if s.up && silent {
                s.up = false;
                log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str(), ms = timeout_ms;
                    "storage server {name} is down (no heartbeat for {timeout_ms} ms)");
                down.push((name.clone(), s.conn.take()));
            }
        }
        down
    }

    /// What an unsolicited heartbeat ack to `name` needs: its link, its latest heartbeat
    /// sequence and when that heartbeat arrived; `None` unless it is up and has sent one.
    pub(super) fn last_heartbeat(&self, name: &str) -> Option<(ConnId, u64, u64)> {
        self.servers
            .get(name)
            .filter(|s| s.up)
            .and_then(|s| Some((s.conn?, s.last_seq, s.last_heartbeat_ms?)))
            .filter(|(_, seq, _)| *seq != 0)
    }

    // Pairs.

    /// The primary `name` backs up, from its flag or its `_backup` name.
    pub(super) fn declared_primary(name: &str, rec: &ServerRecord) -> Option<String> {
        rec.backup_of
            .clone()
            .or_else(|| name.strip_suffix("_backup").map(str::to_string))
            .filter(|p| !p.is_empty() && p != name)
    }

    /// A known server that declares itself the backup of `primary`.
    pub(super) fn declared_backup(&self, primary: &str) -> Option<String> {
        self.servers
            .iter()
            .find(|(n, s)| Self::declared_primary(n, &s.rec).as_deref() == Some(primary))
            .map(|(n, _)| n.clone())
    }

    /// True for a server that is (or declares itself) some primary's backup.
    pub(super) fn is_backup(&self, name: &str) -> bool {
        self.pairs.values().any(|b| b == name)
            || self
                .servers
                .get(name)
                .is_some_and(|s| Self::declared_primary(name, &s.rec).is_some())
            || name.ends_with("_backup")
    }

    /// True when `primary` names a pair with a backup.
    pub(super) fn is_paired(&self, primary: &str) -> bool {
        self.pairs.contains_key(primary)
    }

    /// The backup of the primary holding `file`, if the pair has one.
    pub(super) fn backup_for(&self, primary: &str) -> Option<String> {
        self.pairs.get(primary).cloned()
    }

    /// The backup of `primary`'s pair, borrowed.
    pub(super) fn backup_of(&self, primary: &str) -> Option<&str> {
        self.pairs.get(primary).map(String::as_str)
    }

    /// The primary `backup` is the backup of, if it is paired.
    pub(super) fn primary_of(&self, backup: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(_, b)| *b == backup)
            .map(|(p, _)| p.as_str())
    }

    /// Every pair as (primary, backup), by primary.
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect()
    }

    /// Records `primary → backup` unless the primary already has a backup: `Ok(true)` when
    /// the pair is new, `Ok(false)` when it was already recorded, `Err` with the other backup.
    pub(super) fn pair_up(&mut self, primary: &str, backup: &str) -> Result<bool, String> {
        match self.pairs.get(primary) {
            Some(b) if b == backup => Ok(false),
            Some(b) => Err(b.clone()),
            None => {
                self.pairs.insert(primary.to_string(), backup.to_string());
                Ok(true)
            }
        }
    }

    /// The pair `name` belongs to (named by its primary) and its role in it; `None` when
    /// it is in no pair.
    pub(super) fn membership(&self, name: &str) -> Option<(String, Member)> {
        if self.pairs.contains_key(name) {
            return Some((name.to_string(), Member::Primary));
        }
        self.primary_of(name)
            .map(|p| (p.to_string(), Member::Backup))
    }

    /// The name of the pair `name` belongs to (its primary), or `name` itself when it is in
    /// no pair.
    pub(super) fn pair_name(&self, name: &str) -> String {
        self.membership(name)
            .map_or_else(|| name.to_string(), |(p, _)| p)
    }

    /// Like [`Registry::membership`], but a server with no pair that is no backup is the
    /// primary of its own one-member pair.
    pub(super) fn home_of(&self, name: &str) -> Option<(String, Member)> {
        self.membership(name).or_else(|| {
            (!self.is_backup(name) && self.servers.contains_key(name))
                .then(|| (name.to_string(), Member::Primary))
        })
    }

    /// The name of member `m` of the pair of `primary`.
    pub(super) fn member_name(&self, primary: &str, m: Member) -> Option<String> {
        match m {
            Member::Primary => Some(primary.to_string()),
            Member::Backup => self.pairs.get(primary).cloned(),
        }
    }

    /// The name of the other member of `name`'s pair.
    pub(super) fn partner_name(&self, name: &str) -> Option<String> {
        let (primary, member) = self.membership(name)?;
        self.member_name(&primary, member.other())
    }

    /// The other member of `name`'s pair, if it is up.
    pub(super) fn partner_of(&self, name: &str) -> Option<crate::protocol::Partner> {
        let other = self.partner_name(name)?;
        let s = self.live_server(&other)?;
        Some(crate::protocol::Partner {
            addr: s.rec.addr(),
            name: other,
        })
    }

    // Connections.

    /// A new connection, which must introduce itself by `deadline_ms`.
    pub(super) fn connect(&mut self, conn: ConnId, deadline_ms: u64) {
        self.peers.insert(conn, Peer::Unknown);
        self.introducing.insert(conn, deadline_ms);
    }

    /// Where `conn` came from.
    pub(super) fn set_origin(&mut self, conn: ConnId, origin: addr::Origin) {
        self.origins.insert(conn, origin);
    }

    pub(super) fn origin(&self, conn: ConnId) -> Option<addr::Origin> {
        self.origins.get(&conn).copied()
    }

    /// `conn` finished HELLO or registration: it has no introduction deadline any more.
    pub(super) fn introduced(&mut self, conn: ConnId) {
        self.introducing.remove(&conn);
    }

    /// The introduction deadlines of connections still introducing themselves.
    pub(super) fn introduction_deadlines(&self) -> impl Iterator<Item = u64> + '_ {
        self.introducing.values().copied()
    }

    /// Removes and returns the connections whose introduction deadline has passed.
    pub(super) fn take_late_introductions(&mut self, now_ms: u64) -> Vec<ConnId> {
        let late: Vec<ConnId> = self
            .introducing
            .iter()
            .filter(|(_, d)| now_ms >= **d)
            .map(|(c, _)| *c)
            .collect();
        for conn in &late {
            self.introducing.remove(conn);
        }
        late
    }

    /// What `conn` is.
    pub(super) fn peer(&self, conn: ConnId) -> Option<&Peer> {
        self.peers.get(&conn)
    }

    pub(super) fn set_peer(&mut self, conn: ConnId, peer: Peer) {
        self.peers.insert(conn, peer);
    }

    /// Takes what `conn` is out, to be put back with [`Registry::set_peer`].
    pub(super) fn take_peer(&mut self, conn: ConnId) -> Option<Peer> {
        self.peers.remove(&conn)
    }

    pub(super) fn has_peer(&self, conn: ConnId) -> bool {
        self.peers.contains_key(&conn)
    }

    /// Marks a client connection busy (a request is being worked on) or not.
    pub(super) fn set_busy(&mut self, conn: ConnId, value: bool) {
        if let Some(Peer::Client { busy, .. }) = self.peers.get_mut(&conn) {
            *busy = value;
        }
    }

    /// Uses a proof's nonce once: a captured proof cannot be replayed.
    pub(super) fn use_proof(&self, nonce: &str, exp_ms: u64, what: &str) -> Result<(), WireError> {
        self.proof_nonces.use_once(nonce, exp_ms, what)
    }

    /// `conn` closed: forgets it, and marks down the server registered on it. Returns that
    /// server's name if it went down now.
    pub(super) fn close(&mut self, conn: ConnId) -> Option<String> {
        self.introducing.remove(&conn);
        self.origins.remove(&conn);
        self.removed.remove(&conn);
        let Some(Peer::Server { name }) = self.peers.remove(&conn) else {
            return None;
        };
        let s = self.servers.get_mut(&name)?;
        if s.conn != Some(conn) {
            return None;
        }
        s.conn = None;
        if !s.up {
            return None;
        }
        s.up = false;
        log::warn!(target: ev::HEARTBEAT_MONITOR_FAILURE, ss = name.as_str();
            "storage server {name} is down (connection closed)");
        Some(name)
    }

    // Names removed per link.

    /// `file` was removed from the pair of `primary`: a late CHANGED of it on either
    /// member's current link must not bring it back (see [`Removed`]).
    pub(super) fn note_removed(&mut self, primary: &str, file: &str) {
        let backup = self.pairs.get(primary).cloned();
        for m in std::iter::once(primary.to_string()).chain(backup) {
            if let Some(conn) = self.servers.get(&m).and_then(|s| s.conn) {
                self.removed.entry(conn).or_default().note(file);
            }
        }
    }

    /// True when `file` was removed while `conn` was up.
    pub(super) fn removed_on(&self, conn: ConnId, file: &str) -> bool {
        self.removed.get(&conn).is_some_and(|r| r.contains(file))
    }
}

impl Core {
    pub(super) fn finish_register(&mut self, conn: ConnId, reg: Registering, now_ms: u64) {
        let Registering {
            name, rec, files, ..
        } = reg;
        if self.reg.is_connected(&name) {
            return self.refuse_and_close(
                conn,
                err::conflict(format!(
                    "a storage server named {name} is already connected"
                )),
            );
        }
        let first_lease = self.cfg.started_ms + self.cfg.lease_ms();
        let (changed, was_down) = self.reg.register(&name, &rec, conn, first_lease, now_ms);
        if changed {
            self.batch
                .push(StoreOp::PutServer(name.clone(), rec.clone()));
        }
        if let Some(p) = Registry::declared_primary(&name, &rec) {
            self.pair_up(&p, &name);
        } else if let Some(b) = self.reg.declared_backup(&name) {
            self.pair_up(&name, &b);
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
        self.resolve_creates(&name, &files);
        let (adopted, updated, removed) = match self.reg.membership(&name) {
            Some((p, m)) => {
                if was_down {
                    log::info!(target: ev::NM_SS_RECOVERY, ss = name.as_str(), pair = p.as_str();
                        "{name} is back; comparing its files with the records of pair {p}");
                }
                self.reconcile_member(&p, m, files, now_ms);
                (0, 0, 0)
            }
            None if self.reg.is_backup(&name) => (0, 0, 0),
            None => self.reconcile(&name, files, now_ms),
        };
        let epoch = self.epoch_of(&name);
        let writer = self.may_write(&name);
        if writer {
            // REGISTERED grants the first lease, counted by the server from before it sent
            // REGISTER_END.
            self.reg.renew_lease(&name, now_ms + self.cfg.lease_ms());
        }
        self.reg.set_peer(conn, Peer::Server { name: name.clone() });
        let held = self.reg.server(&name).map_or(0, |s| s.files);
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
                    if rec.never_made(Member::Primary, &st) {
                        let rec = rec.clone();
                        self.roll_back_unmade(&file, ss, &rec);
                        updated += 1;
                    } else if st.version > rec.version {
                        let mut rec = rec.clone();
                        rec.apply_state(&st);
                        self.put_file(&file, rec);
                        self.owe(&file, true, now_ms);
                        updated += 1;
                    } else if st.version == rec.version && rec.unconfirmed.is_some() {
                        let mut rec = rec.clone();
                        rec.set_held(Member::Primary, Some(rec.version));
                        self.put_file(&file, rec);
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

    /// Puts `file`'s record `rec` back to the state before its unconfirmed version, which
    /// `ss` reported before its flush and came back without ([`FileRecord::never_made`]):
    /// never durable, never acknowledged. Returns the record now.
    pub(super) fn roll_back_unmade(
        &mut self,
        file: &str,
        ss: &str,
        rec: &FileRecord,
    ) -> FileRecord {
        let mut r = rec.clone();
        r.roll_back();
        log::warn!(target: ev::NM_SS_RECOVERY, file = file, ss = ss,
            version = rec.version.to_string(), current = r.version.to_string();
            "{ss} came back without {file} {}, which it reported before flushing it: the change was never made, {file} is at {} again",
            rec.version, r.version);
        self.put_file(file, r.clone());
        r
    }

    pub(super) fn server_message(&mut self, conn: ConnId, name: &str, msg: Message, now_ms: u64) {
        match msg {
            Message::Heartbeat { seq, writer, disk } => {
                self.reg.heartbeat(name, seq, disk, now_ms);
                log::debug!(target: ev::NM_HEARTBEAT, ss = name, seq = seq; "heartbeat from {name}");
                if !writer {
                    self.stepped_down(name, now_ms);
                }
                self.ack_heartbeat(conn, name, seq, now_ms);
            }
            Message::Changed {
                id,
                state,
                staged,
                pending,
            } => {
                let waiter = Waiter::Changed(conn, id);
                let Ok(file) = names::canonical_file(&state.file) else {
                    return self.release(waiter, true);
                };
                let Some((primary, member)) = self.reg.home_of(name) else {
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
                        if pending {
                            rec.apply_unconfirmed(member, &state);
                        } else {
                            rec.apply_change(member, &state);
                        }
                        self.put_file(&file, rec);
                        log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(),
                            version = state.version.to_string(), pending = pending;
                            "{file} changed on {name}");
                    }
                    Some(_) => return self.release(waiter, true),
                    // Only a commit reports before its flush, and only of a file it was given
                    // a ticket for: one unknown here was removed meanwhile.
                    None if pending => return self.release(waiter, true),
                    None if self.reg.removed_on(conn, &file) => {
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
                let Some((primary, member)) = self.reg.home_of(name) else {
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

    /// The member of `primary`'s pair that writes in the current epoch.
    pub(super) fn writer_member(&self, primary: &str) -> Member {
        if !self.reg.is_paired(primary) {
            return Member::Primary;
        }
        self.pairs
            .get(primary)
            .map_or(Member::Primary, |p| p.writer)
    }

    /// The epoch server `name` stamps on new versions.
    pub(super) fn epoch_of(&self, name: &str) -> u64 {
        self.reg
            .membership(name)
            .and_then(|(p, _)| self.pairs.get(&p))
            .map_or(EPOCH, |p| p.epoch)
    }

    /// The writer of the pair named `primary` if it may take changes now: (name, epoch).
    pub(super) fn live_writer(&self, primary: &str) -> Option<(String, u64)> {
        if !self.reg.is_paired(primary) {
            return self
                .reg
                .is_up(primary)
                .then(|| (primary.to_string(), EPOCH));
        }
        let st = self.pairs.get(primary)?;
        let w = self.reg.member_name(primary, st.writer)?;
        (st.phase == Phase::Serving && self.reg.is_up(&w)).then_some((w, st.epoch))
    }

    /// Whether server `name` may take changes now (its heartbeat acks renew its lease).
    pub(super) fn may_write(&self, name: &str) -> bool {
        match self.reg.membership(name) {
            Some((p, _)) => self.live_writer(&p).is_some_and(|(w, _)| w == name),
            None => !self.reg.is_backup(name) && self.reg.is_up(name),
        }
    }

    /// Answers a heartbeat: the epoch, and a renewed lease while the server is its pair's
    /// writer. The lease the server then holds ends before `now + lease` (it counts from
    /// when it sent the heartbeat), which is the bound recorded here.
    pub(super) fn ack_heartbeat(&mut self, conn: ConnId, name: &str, seq: u64, now_ms: u64) {
        let writer = self.may_write(name);
        let lease_ms = self.cfg.lease_ms();
        if writer {
            self.reg.renew_lease(name, now_ms + lease_ms);
        }
        let epoch = self.epoch_of(name);
        // A writer stages its large uploads on its partner while they arrive.
        let partner = writer.then(|| self.reg.partner_of(name)).flatten();
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

    /// Tells a member at once (unsolicited ack of its latest heartbeat) that it became, or
    /// stopped being, the writer, instead of waiting for its next heartbeat.
    pub(super) fn push_role(&mut self, name: &str) {
        let Some((conn, seq, last_ms)) = self.reg.last_heartbeat(name) else {
            return;
        };
        // The lease counts from when heartbeat `seq` was sent, which was before it arrived.
        self.ack_heartbeat(conn, name, seq, last_ms);
    }

    /// Jobs owed to `target` (pending or failed), and whether one of them is running.
    pub(super) fn owed_to(&self, target: &str) -> (u64, bool) {
        self.q.owed_to(target)
    }
}
