//! Every record the name server persists (see `store.rs` for the tables), the durable state
//! as loaded at startup ([`Loaded`]) and the batch vocabulary ([`StoreOp`]).
//!
//! Times in records are wall-clock Unix ms (`created_ms`, `modified_ms`, `accessed_ms`),
//! except a pair's `switch_at_ms`, which is this run's monotonic time and is re-derived from
//! the boot when the state is loaded (see [`super::clock`]).

use super::*;

/// Everything the name server records about one file (stored as JSON in the `files` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The owner: full rights, the only one who may delete or change access.
    pub owner: String,
    /// The storage server holding the file.
    pub ss: String,
    /// Current version.
    pub version: Version,
    /// CRC32C of the current content.
    pub checksum: u32,
    /// Bytes.
    pub size: u64,
    /// Words.
    pub words: u64,
    /// Characters.
    pub chars: u64,
    /// Unix milliseconds of creation.
    pub created_ms: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Users other than the owner with access; `true` means read and write.
    #[serde(default)]
    pub access: BTreeMap<String, bool>,
    /// Unix milliseconds of the last READ/STREAM/WRITE.
    #[serde(default)]
    pub accessed_ms: Option<u64>,
    /// Who accessed last.
    #[serde(default)]
    pub accessed_by: Option<String>,
    /// The owning server registered without this file (a hand deletion, or a server started
    /// on the wrong or an empty `--storage`). The record and its access rights are kept, and
    /// nothing is deleted from the backup: only the owner's DELETE removes a record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub primary_missing: bool,
    /// The version the pair's backup is known to hold (`None`: not known to hold it).
    #[serde(default)]
    pub backup_version: Option<Version>,
    /// Set while the primary is behind (the promoted backup took changes it misses): the
    /// version the primary is known to hold. `None` with `primary_missing` false: the
    /// primary holds `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_held: Option<Version>,
    /// The last version of an earlier epoch, kept when the first change of a newer epoch
    /// lands: a returning member holding a copy of that earlier epoch newer than this has
    /// changes the cluster never acknowledged, and the copy is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_base: Option<Version>,
    /// Set while the current version was reported by its writer before it was durable there
    /// (a CHANGED marked `pending`, see [`Unconfirmed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Unconfirmed>,
}

/// A version the writer reported once its journal entry was WRITTEN, so that this server's
/// commit of the record overlaps the writer's flush (`ss::store::Made::Written`). The writer
/// answers its client only once the entry is durable and the record committed, so the version
/// is acknowledged to nobody while the flush may still fail; a power cut then brings the
/// writer back holding `prior`. Kept until something shows the version exists durably:
///
/// * any later state of the file (a later change of the writer implies this one's entry was
///   flushed first: the file's lock orders them, and each waits for its own flush);
/// * a member known to hold the version ([`FileRecord::set_held`]): the writer listing it
///   at registration, or the other member once a copy of it is installed (the writer serves a
///   copy only once the change is durable and in place);
///
/// and rolled back ([`FileRecord::roll_back`]) when the writer registers holding exactly
/// `prior` while no other member is known to hold the version: the change was never durable,
/// hence never acknowledged. Until one of these, the version counts as current like any
/// other (reads and writes go to a member holding it, a promoted backup lacking it does not
/// take its changes), so nothing the writer may yet confirm is lost.
///
/// A writer whose disk loses a flushed entry (a failing disk, not a power cut) and registers
/// with exactly the prior state before either happened is rolled back too: the version was
/// acknowledged and is gone from every disk, and the record says what the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    /// The member that reported it (the writer then).
    pub member: Member,
    /// The content the record described before it (`owner` unset).
    pub prior: FileState,
    /// [`FileRecord::epoch_base`] before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_epoch_base: Option<Version>,
}

impl FileRecord {
    /// The first record of a file found as `st` on `member` of pair `ss` (the only member
    /// known to hold it), owned by `owner`, with the wall-clock times it was created and last
    /// changed at. Nobody else has access and nobody has read it yet.
    pub(super) fn first(
        owner: String,
        ss: &str,
        member: Member,
        st: &FileState,
        created_ms: u64,
        modified_ms: u64,
    ) -> FileRecord {
        let mut rec = FileRecord {
            owner,
            ss: ss.to_string(),
            version: st.version,
            checksum: st.checksum,
            size: st.size,
            words: st.words,
            chars: st.chars,
            created_ms,
            modified_ms,
            access: BTreeMap::new(),
            accessed_ms: None,
            accessed_by: None,
            backup_version: None,
            primary_missing: false,
            primary_held: None,
            epoch_base: None,
            unconfirmed: None,
        };
        rec.held_only_by(member, st.version);
        rec
    }

    /// The content this record describes, as [`FileRecord::apply_state`] takes it back
    /// (`owner` unset: a state applied never changes the owner).
    fn content_state(&self, file: &str) -> FileState {
        FileState {
            file: file.to_string(),
            version: self.version,
            checksum: self.checksum,
            size: self.size,
            words: self.words,
            chars: self.chars,
            modified_ms: self.modified_ms,
            owner: None,
        }
    }

    pub(super) fn apply_state(&mut self, s: &FileState) {
        self.unconfirmed = None;
        self.primary_missing = false;
        self.version = s.version;
        self.checksum = s.checksum;
        self.size = s.size;
        self.words = s.words;
        self.chars = s.chars;
        self.modified_ms = s.modified_ms;
    }

    /// The version `member` is known to hold, if any.
    pub(super) fn held(&self, member: Member) -> Option<Version> {
        match member {
            Member::Primary if self.primary_missing => None,
            Member::Primary => Some(self.primary_held.unwrap_or(self.version)),
            Member::Backup => self.backup_version,
        }
    }

    /// Whether `member` holds the current version.
    pub(super) fn holds(&self, member: Member) -> bool {
        self.held(member) == Some(self.version)
    }

    /// Records that `member` holds `v` (or nothing). A member holding the current version
    /// confirms an [`Unconfirmed`] one.
    pub(super) fn set_held(&mut self, member: Member, v: Option<Version>) {
        if v == Some(self.version) {
            self.unconfirmed = None;
        }
        match member {
            Member::Primary => {
                self.primary_missing = v.is_none();
                self.primary_held = v.filter(|v| *v != self.version);
            }
            Member::Backup => self.backup_version = v,
        }
    }

    /// Only `member` holds a copy, at `v` (a new file, an adopted one, a moved one).
    pub(super) fn held_only_by(&mut self, member: Member, v: Version) {
        self.set_held(member, Some(v));
        self.set_held(member.other(), None);
    }

    /// A change `s` made by `writer`: the writer holds it, the other member keeps what it held.
    pub(super) fn apply_change(&mut self, writer: Member, s: &FileState) {
        let other = writer.other();
        let other_held = self.held(other);
        if s.version.epoch > self.version.epoch {
            self.epoch_base = Some(self.version);
        }
        self.apply_state(s);
        self.set_held(writer, Some(s.version));
        self.set_held(other, other_held);
    }

    /// [`FileRecord::apply_change`] for a change its writer reported before its flush
    /// returned: kept [`Unconfirmed`] until confirmed or rolled back.
    pub(super) fn apply_unconfirmed(&mut self, writer: Member, s: &FileState) {
        let prior = self.content_state(&s.file);
        let prior_epoch_base = self.epoch_base;
        self.apply_change(writer, s);
        self.unconfirmed = Some(Unconfirmed {
            member: writer,
            prior,
            prior_epoch_base,
        });
    }

    /// Whether registering `member`, holding `st`, shows that the [`Unconfirmed`] version
    /// was never made: it reported it, now holds exactly the prior state, and no other member
    /// is known to hold the version.
    pub(super) fn never_made(&self, member: Member, st: &FileState) -> bool {
        self.unconfirmed.as_ref().is_some_and(|u| {
            u.member == member
                && st.version == u.prior.version
                && st.checksum == u.prior.checksum
                && self.held(member.other()) != Some(self.version)
        })
    }

    /// Puts the record back to the state before its [`Unconfirmed`] change, if any; the other
    /// member keeps what it was known to hold.
    pub(super) fn roll_back(&mut self) {
        let Some(u) = self.unconfirmed.take() else {
            return;
        };
        let other_held = self.held(u.member.other());
        self.apply_state(&u.prior);
        self.epoch_base = u.prior_epoch_base;
        self.set_held(u.member, Some(u.prior.version));
        self.set_held(u.member.other(), other_held);
    }

    pub(super) fn can_read(&self, user: &str) -> bool {
        self.owner == user || self.access.contains_key(user)
    }

    pub(super) fn can_write(&self, user: &str) -> bool {
        self.owner == user || self.access.get(user).copied().unwrap_or(false)
    }
}

/// One member of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Member {
    /// The server named by the pair (files are placed on it).
    Primary,
    /// Its backup.
    Backup,
}

impl Member {
    /// The other member of the pair.
    pub fn other(self) -> Member {
        match self {
            Member::Primary => Member::Backup,
            Member::Backup => Member::Primary,
        }
    }
}

/// Where a pair stands in its writer's life; the state STATUS shows is this combined with
/// which members are up (see [`Core::pair_state_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// The writer takes changes (while it is up); the other member follows.
    Serving,
    /// The writer is down: nobody takes changes until its last lease has surely expired,
    /// then the other member becomes the writer in a new epoch.
    FailingOver,
    /// The promoted backup is stepping down for the returning primary, which holds every
    /// change: no new leases; once the backup's last lease expired (and nothing is owed to
    /// the primary) the primary writes again in a new epoch.
    Handback,
}

/// The durable state of one pair (the `pair_states` table, keyed by the primary's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRecord {
    /// The writer's phase.
    pub phase: Phase,
    /// The pair's epoch: versions written by this writer carry it; tickets for changes carry
    /// it and a server on another epoch refuses them. At most one member writes per epoch.
    pub epoch: u64,
    /// The member that takes changes in this epoch.
    pub writer: Member,
    /// Monotonic ms (this run's clock, see [`clock`]) before which the writer may not change
    /// (FAILING_OVER, HANDBACK): by then the last lease the old writer was granted has ended.
    /// Stored, but meaningless to a later run: loading re-derives it from the boot.
    #[serde(default)]
    pub switch_at_ms: u64,
    /// Progress of the current catch-up: transfers owed since the pair was last in step
    /// (kept in memory only; a restarted name server counts afresh).
    #[serde(skip)]
    pub sync_total: u64,
    /// See `sync_total`.
    #[serde(skip)]
    pub sync_done: u64,
    /// The highest version a file of this pair had when its name was given up (DELETE, or
    /// the old name of a MOVE). A file created in the same epoch starts above it, so a name
    /// deleted and created again never reuses a version its old file had: a copy of the old
    /// file still held somewhere is never taken for the new file's copy at the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Version>,
}

impl PairRecord {
    pub(super) fn new() -> PairRecord {
        PairRecord {
            phase: Phase::Serving,
            epoch: EPOCH,
            writer: Member::Primary,
            switch_at_ms: 0,
            sync_total: 0,
            sync_done: 0,
            retired: None,
        }
    }

    /// The counter a file created now starts at: 1, or above the highest version a removed
    /// file of the pair had in the current epoch.
    pub(super) fn first_counter(&self) -> u64 {
        match self.retired {
            Some(v) if v.epoch >= self.epoch => v.counter + 1,
            _ => 1,
        }
    }
}

/// The durable part of a storage server's registration (the `servers` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Host clients connect to.
    pub host: String,
    /// Client port.
    pub client_port: u16,
    /// The primary this server backs up, if any.
    #[serde(default)]
    pub backup_of: Option<String>,
}

impl ServerRecord {
    pub(super) fn addr(&self) -> String {
        addr::join(&self.host, self.client_port)
    }
}

/// A change to the durable state; the store applies a batch of them in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Record a user (a no-op for one already recorded, so it never drops a bound key).
    PutUser(String),
    /// Record a user bound to a public key (hex).
    PutUserKey(String, String),
    /// Forget the key a user is bound to (it binds again at its next session).
    ResetUserKey(String),
    /// Insert or replace a file record.
    PutFile(String, FileRecord),
    /// Remove a file record.
    DelFile(String),
    /// Insert or replace a server record.
    PutServer(String, ServerRecord),
    /// Record a pair: primary, backup.
    PutPair(String, String),
    /// Insert or replace a pair's state (keyed by the primary).
    PutPairState(String, PairRecord),
    /// Insert or replace a replication job (keyed by [`ReplJob::key`]).
    PutJob(ReplJob),
    /// Remove a replication job by key.
    DelJob(String),
    /// Insert or replace a folder record.
    PutFolder(String, FolderRecord),
    /// Insert or replace a pending access request.
    PutRequest(AccessRequest),
    /// Remove an access request (answered, or its file deleted).
    DelRequest(u64),
    /// The next access-request id (the counter only rises).
    PutNextRequest(u64),
    /// Record a MOVE about to be sent, keyed by the file's old name.
    PutMove(String, MoveIntent),
    /// Remove a MOVE's intent (settled: moved, refused, or found not to have happened).
    DelMove(String),
    /// Record a DELETE about to be sent, keyed by the file's name.
    PutDelete(String, DeleteIntent),
    /// Remove a DELETE's intent (settled: deleted, refused, or found not to have happened).
    DelDelete(String),
    /// Record a CREATE about to be sent, keyed by the file's name (written with the record
    /// the create will make, see `core/creates.rs`).
    PutCreate(String, CreateIntent),
    /// Remove a CREATE's intent (settled: created, refused, or found not to have happened).
    DelCreate(String),
}

/// The durable state as loaded at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Every user ever seen.
    pub users: BTreeSet<String>,
    /// The public key each bound user proved at first use (see `crate::identity`); users
    /// recorded without one bind at their next session.
    pub user_keys: BTreeMap<String, String>,
    /// The file index by canonical name.
    pub files: BTreeMap<String, FileRecord>,
    /// Storage servers ever registered.
    pub servers: BTreeMap<String, ServerRecord>,
    /// Pairs: primary name to backup name.
    pub pairs: BTreeMap<String, String>,
    /// Pair states by primary name.
    pub pair_states: BTreeMap<String, PairRecord>,
    /// Replication jobs by key.
    pub jobs: BTreeMap<String, ReplJob>,
    /// Folders by canonical name.
    pub folders: BTreeMap<String, FolderRecord>,
    /// Pending access requests by id.
    pub requests: BTreeMap<u64, AccessRequest>,
    /// The next access-request id (0 when none was ever given).
    pub next_request: u64,
    /// MOVEs not settled when the name server stopped, by the file's old name.
    pub moves: BTreeMap<String, MoveIntent>,
    /// DELETEs not settled when the name server stopped, by the file's name.
    pub deletes: BTreeMap<String, DeleteIntent>,
    /// CREATEs not settled when the name server stopped, by the file's name.
    pub creates: BTreeMap<String, CreateIntent>,
}

impl Loaded {
    /// Applies one store operation to this copy of the durable state, as `store.rs` applies
    /// it to its tables (an in-memory store, for the simulation and tests).
    pub fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::PutUser(u) => {
                self.users.insert(u);
            }
            StoreOp::PutUserKey(u, k) => {
                self.users.insert(u.clone());
                self.user_keys.insert(u, k);
            }
            StoreOp::ResetUserKey(u) => {
                self.user_keys.remove(&u);
            }
            StoreOp::PutFile(f, r) => {
                self.files.insert(f, r);
            }
            StoreOp::DelFile(f) => {
                self.files.remove(&f);
            }
            StoreOp::PutServer(n, r) => {
                self.servers.insert(n, r);
            }
            StoreOp::PutPair(p, b) => {
                self.pairs.insert(p, b);
            }
            StoreOp::PutPairState(p, r) => {
                self.pair_states.insert(p, r);
            }
            StoreOp::PutJob(j) => {
                self.jobs.insert(j.key(), j);
            }
            StoreOp::DelJob(k) => {
                self.jobs.remove(&k);
            }
            StoreOp::PutFolder(f, r) => {
                self.folders.insert(f, r);
            }
            StoreOp::PutRequest(r) => {
                self.requests.insert(r.id, r);
            }
            StoreOp::DelRequest(id) => {
                self.requests.remove(&id);
            }
            StoreOp::PutNextRequest(n) => self.next_request = n,
            StoreOp::PutMove(f, m) => {
                self.moves.insert(f, m);
            }
            StoreOp::DelMove(f) => {
                self.moves.remove(&f);
            }
            StoreOp::PutDelete(f, d) => {
                self.deletes.insert(f, d);
            }
            StoreOp::DelDelete(f) => {
                self.deletes.remove(&f);
            }
            StoreOp::PutCreate(f, c) => {
                self.creates.insert(f, c);
            }
            StoreOp::DelCreate(f) => {
                self.creates.remove(&f);
            }
        }
    }
}

/// One folder (stored as JSON in the `folders` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRecord {
    /// Who created it (`admin` for folders found under adopted files).
    pub owner: String,
    /// Unix milliseconds of its creation.
    pub created_ms: u64,
}

/// A MOVE whose storage-server call may have run (stored as JSON in the `moves` table, keyed
/// by the file's old name). It is durable before SS_MOVE is sent and removed in the batch that
/// settles the move (the record moved, or the refusal heard), so a name server that dies in
/// between settles it when that server registers again, by what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveIntent {
    /// The new name.
    pub to: String,
    /// The server SS_MOVE was sent to (the pair's writer then).
    pub ss: String,
    /// The epoch its ticket carried.
    pub epoch: u64,
    /// The file's record when the move started (what moves, should the record be gone).
    pub record: FileRecord,
}

/// A DELETE whose storage-server call may have run (stored as JSON in the `deletes` table,
/// keyed by the file's name). It is durable before SS_DELETE is sent and removed in the batch
/// that settles the delete (the record removed, or the refusal heard), so a name server that
/// dies in between settles it when that server registers again, by whether it still holds
/// the file (see `core/deletes.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteIntent {
    /// The server SS_DELETE was sent to (the pair's writer then).
    pub ss: String,
    /// The epoch its ticket carried.
    pub epoch: u64,
    /// The record's version when the delete started.
    pub version: Version,
    /// The record's checksum when the delete started.
    pub checksum: u32,
}

/// A CREATE whose storage-server call may have run (stored as JSON in the `creates` table,
/// keyed by the file's name). It is written, together with the record the create will make,
/// in the batch committed while SS_CREATE runs, and removed once the create is settled, so a
/// name server that dies in between settles it when that server registers again, by whether
/// it holds the file (see `core/creates.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateIntent {
    /// The server SS_CREATE was sent to (the pair's writer then).
    pub ss: String,
    /// The epoch its ticket carried.
    pub epoch: u64,
    /// The version the create makes.
    pub version: Version,
    /// The owner of the record written ahead.
    pub owner: String,
    /// The creation time of the record written ahead (with the owner and version, what
    /// tells it from a later record of the name).
    pub created_ms: u64,
}
