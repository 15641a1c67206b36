//! The name server's durable state: a redb database under `--data`, written by one store thread
//! that group-commits.
//!
//! This is the one place the tables are specified. Keys are strings; values are JSON.
//!
//! | table     | key              | value                                   |
//! |-----------|------------------|-----------------------------------------|
//! | `users`   | user name        | `UserRecord`: `{"key":"<ed25519 public key, hex>"}`, or `{}` before the user is bound (see `crate::identity`) |
//! | `files`   | canonical name   | `core::FileRecord`                      |
//! | `servers` | server name      | `core::ServerRecord`                    |
//! | `pairs`   | primary name     | backup name (JSON string)               |
//! | `pair_states` | primary name | `core::PairRecord` (state, epoch, writer) |
//! | `jobs`    | `target\nfile`   | `replication::ReplJob`                  |
//! | `folders` | canonical name   | `core::FolderRecord`                    |
//! | `requests`| id, 20 digits    | `protocol::AccessRequest`               |
//! | `moves`   | old canonical name | `core::MoveIntent` (a MOVE not settled) |
//! | `deletes` | canonical name   | `core::DeleteIntent` (a DELETE not settled) |
//! | `creates` | canonical name   | `core::CreateIntent` (a CREATE not settled) |
//! | `meta`    | `schema`         | `"1"`                                   |
//! | `meta`    | `next_request`   | the next access-request id (decimal)    |
//!
//! Folder keys sort like file keys, so a folder's children (files in `files`, subfolders in
//! `folders`) are one key range each. Request ids are zero-padded so keys sort by id; the
//! counter only rises, so an id is never reused, even after its request is answered.
//!
//! The event loop sends numbered batches of [`StoreOp`]s over a bounded channel. The store
//! thread takes one batch (blocking), then every batch already waiting, writes them all in ONE
//! write transaction with `Durability::Immediate`, commits, and reports the highest committed
//! sequence number back; so many concurrent clients share one fsync (16 clients changing at
//! once pay for about one fsync, not 16). The event loop releases each reply once the batch
//! it depends on is committed (see `server.rs`).

use super::core::{
    CreateIntent, DeleteIntent, FileRecord, FolderRecord, Loaded, MoveIntent, PairRecord,
    ServerRecord, StoreOp,
};
use super::replication::ReplJob;
use crate::protocol::AccessRequest;
use crossbeam_channel::{Receiver, Sender};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::time::Instant;

const USERS: TableDefinition<&str, &str> = TableDefinition::new("users");
const FILES: TableDefinition<&str, &str> = TableDefinition::new("files");
const SERVERS: TableDefinition<&str, &str> = TableDefinition::new("servers");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const PAIRS: TableDefinition<&str, &str> = TableDefinition::new("pairs");
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("jobs");
const PAIR_STATES: TableDefinition<&str, &str> = TableDefinition::new("pair_states");
const FOLDERS: TableDefinition<&str, &str> = TableDefinition::new("folders");
const REQUESTS: TableDefinition<&str, &str> = TableDefinition::new("requests");
const MOVES: TableDefinition<&str, &str> = TableDefinition::new("moves");
const DELETES: TableDefinition<&str, &str> = TableDefinition::new("deletes");
const CREATES: TableDefinition<&str, &str> = TableDefinition::new("creates");
/// The `meta` key of the access-request counter.
const NEXT_REQUEST: &str = "next_request";

fn request_key(id: u64) -> String {
    format!("{id:020}")
}

/// The database file name inside `--data`.
pub const DB_FILE: &str = "nm.redb";
/// Most batches taken into one transaction (bounds one transaction's size).
pub const MAX_BATCHES_PER_TXN: usize = 1024;

/// Errors of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    /// A stored value is not the JSON we wrote.
    #[error("corrupt record {key}: {msg}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        msg: String,
    },
    /// Another process (usually another name server) has the database open.
    #[error("{0} is in use by another name server")]
    InUse(String),
    /// Creating the data directory failed.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A database of an earlier release could not be migrated (it is left as it was).
    #[error("migrating the database of an earlier release: {0}")]
    Migrate(String),
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// A numbered batch of changes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Sequence number; batches are sent in increasing order.
    pub seq: u64,
    /// The changes.
    pub ops: Vec<StoreOp>,
}

/// What the store thread reports after each transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Every batch up to `seq` is durable; `batches` went into this one transaction.
    Upto {
        /// Highest durable sequence number.
        seq: u64,
        /// Batches in the transaction.
        batches: usize,
    },
    /// The transaction failed; nothing after the last reported sequence is durable.
    Failed(String),
}

/// The open database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database under `dir` and makes sure every table exists. A
    /// database an earlier release wrote with redb 2 is migrated first (see `migrate.rs`).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let refused = |e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            e => dberr(e),
        };
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::UpgradeRequired(2)) => {
                super::migrate::from_redb2(dir)?;
                Database::create(&path).map_err(refused)?
            }
            Err(e) => return Err(refused(e)),
        };
        let mut txn = db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Immediate).map_err(dberr)?;
        {
            txn.open_table(USERS).map_err(dberr)?;
            txn.open_table(FILES).map_err(dberr)?;
            txn.open_table(SERVERS).map_err(dberr)?;
            txn.open_table(PAIRS).map_err(dberr)?;
            txn.open_table(JOBS).map_err(dberr)?;
            txn.open_table(PAIR_STATES).map_err(dberr)?;
            txn.open_table(FOLDERS).map_err(dberr)?;
            txn.open_table(REQUESTS).map_err(dberr)?;
            txn.open_table(MOVES).map_err(dberr)?;
            txn.open_table(DELETES).map_err(dberr)?;
            txn.open_table(CREATES).map_err(dberr)?;
            let mut meta = txn.open_table(META).map_err(dberr)?;
            meta.insert("schema", "1").map_err(dberr)?;
        }
        txn.commit().map_err(dberr)?;
        crate::durable::count_store_commit();
        Ok(Store { db })
    }

    /// Reads every table into memory.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let mut loaded = Loaded::default();
        let users = txn.open_table(USERS).map_err(dberr)?;
        for item in users.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let rec: UserRecord = parse(k.value(), v.value())?;
            if let Some(key) = rec.key {
                loaded.user_keys.insert(k.value().to_string(), key);
            }
            loaded.users.insert(k.value().to_string());
        }
        let files = txn.open_table(FILES).map_err(dberr)?;
        for item in files.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let rec: FileRecord = parse(k.value(), v.value())?;
            loaded.files.insert(k.value().to_string(), rec);
        }
        let servers = txn.open_table(SERVERS).map_err(dberr)?;
        for item in servers.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let rec: ServerRecord = parse(k.value(), v.value())?;
            loaded.servers.insert(k.value().to_string(), rec);
        }
        let pairs = txn.open_table(PAIRS).map_err(dberr)?;
        for item in pairs.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let backup: String = parse(k.value(), v.value())?;
            loaded.pairs.insert(k.value().to_string(), backup);
        }
        let states = txn.open_table(PAIR_STATES).map_err(dberr)?;
        for item in states.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let rec: PairRecord = parse(k.value(), v.value())?;
            loaded.pair_states.insert(k.value().to_string(), rec);
        }
        let jobs = txn.open_table(JOBS).map_err(dberr)?;
        for item in jobs.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let job: ReplJob = parse(k.value(), v.value())?;
            loaded.jobs.insert(k.value().to_string(), job);
        }
        let folders = txn.open_table(FOLDERS).map_err(dberr)?;
        for item in folders.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let rec: FolderRecord = parse(k.value(), v.value())?;
            loaded.folders.insert(k.value().to_string(), rec);
        }
        let requests = txn.open_table(REQUESTS).map_err(dberr)?;
        for item in requests.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let r: AccessRequest = parse(k.value(), v.value())?;
            loaded.requests.insert(r.id, r);
        }
        let moves = txn.open_table(MOVES).map_err(dberr)?;
        for item in moves.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let m: MoveIntent = parse(k.value(), v.value())?;
            loaded.moves.insert(k.value().to_string(), m);
        }
        let deletes = txn.open_table(DELETES).map_err(dberr)?;
        for item in deletes.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let d: DeleteIntent = parse(k.value(), v.value())?;
            loaded.deletes.insert(k.value().to_string(), d);
        }
        let creates = txn.open_table(CREATES).map_err(dberr)?;
        for item in creates.iter().map_err(dberr)? {
            let (k, v) = item.map_err(dberr)?;
            let c: CreateIntent = parse(k.value(), v.value())?;
            loaded.creates.insert(k.value().to_string(), c);
        }
        let meta = txn.open_table(META).map_err(dberr)?;
        if let Some(v) = meta.get(NEXT_REQUEST).map_err(dberr)? {
            loaded.next_request = parse(NEXT_REQUEST, v.value())?;
        }
        Ok(loaded)
    }

    /// Writes `batches` in one durable transaction.
    pub fn commit(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Immediate).map_err(dberr)?;
        {
            let mut users = txn.open_table(USERS).map_err(dberr)?;
            let mut files = txn.open_table(FILES).map_err(dberr)?;
            let mut servers = txn.open_table(SERVERS).map_err(dberr)?;
            let mut pairs = txn.open_table(PAIRS).map_err(dberr)?;
            let mut jobs = txn.open_table(JOBS).map_err(dberr)?;
            let mut states = txn.open_table(PAIR_STATES).map_err(dberr)?;
            let mut folders = txn.open_table(FOLDERS).map_err(dberr)?;
            let mut requests = txn.open_table(REQUESTS).map_err(dberr)?;
            let mut moves = txn.open_table(MOVES).map_err(dberr)?;
            let mut deletes = txn.open_table(DELETES).map_err(dberr)?;
            let mut creates = txn.open_table(CREATES).map_err(dberr)?;
            let mut meta = txn.open_table(META).map_err(dberr)?;
            for op in batches.iter().flat_map(|b| b.ops.iter()) {
                match op {
                    StoreOp::PutUser(u) => {
                        if users.get(u.as_str()).map_err(dberr)?.is_none() {
                            users.insert(u.as_str(), "{}").map_err(dberr)?;
                        }
                    }
                    StoreOp::ResetUserKey(u) => {
                        users.insert(u.as_str(), "{}").map_err(dberr)?;
                    }
                    StoreOp::PutUserKey(u, key) => {
                        let rec = UserRecord {
                            key: Some(key.clone()),
                        };
                        let v = to_json(u, &rec)?;
                        users.insert(u.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutFile(f, rec) => {
                        let v = to_json(f, rec)?;
                        files.insert(f.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelFile(f) => {
                        files.remove(f.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutServer(n, rec) => {
                        let v = to_json(n, rec)?;
                        servers.insert(n.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutPair(p, b) => {
                        let v = to_json(p, b)?;
                        pairs.insert(p.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutPairState(p, rec) => {
                        let v = to_json(p, rec)?;
                        states.insert(p.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutJob(j) => {
                        let k = j.key();
                        let v = to_json(&k, j)?;
                        jobs.insert(k.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelJob(k) => {
                        jobs.remove(k.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutFolder(f, rec) => {
                        let v = to_json(f, rec)?;
                        folders.insert(f.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutRequest(r) => {
                        let k = request_key(r.id);
                        let v = to_json(&k, r)?;
                        requests.insert(k.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelRequest(id) => {
                        requests.remove(request_key(*id).as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutNextRequest(n) => {
                        let v = n.to_string();
                        meta.insert(NEXT_REQUEST, v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutMove(f, m) => {
                        let v = to_json(f, m)?;
                        moves.insert(f.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelMove(f) => {
                        moves.remove(f.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutDelete(f, d) => {
                        let v = to_json(f, d)?;
                        deletes.insert(f.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelDelete(f) => {
                        deletes.remove(f.as_str()).map_err(dberr)?;
                    }
                    StoreOp::PutCreate(f, c) => {
                        let v = to_json(f, c)?;
                        creates.insert(f.as_str(), v.as_str()).map_err(dberr)?;
                    }
                    StoreOp::DelCreate(f) => {
                        creates.remove(f.as_str()).map_err(dberr)?;
                    }
                }
            }
        }
        txn.commit().map_err(dberr)?;
        crate::durable::count_store_commit();
        Ok(())
    }

    /// Runs the group-commit loop until `batches` is disconnected and drained. `notify` is
    /// called after each report (the loop's `Waker`).
    pub fn run(self, batches: Receiver<Batch>, results: Sender<Committed>, notify: impl Fn()) {
        while let Ok(first) = batches.recv() {
            let mut group = vec![first];
            while group.len() < MAX_BATCHES_PER_TXN {
                match batches.try_recv() {
                    Ok(b) => group.push(b),
                    Err(_) => break,
                }
            }
            let start = Instant::now();
            let seq = group.iter().map(|b| b.seq).max().unwrap_or(0);
            let report = match self.commit(&group) {
                Ok(()) => {
                    let ms = start.elapsed().as_millis() as u64;
                    log::debug!(target: crate::logging::ev::NM_STORE_COMMIT,
                        batch = group.len(), ms = ms, seq = seq;
                        "committed {} batches up to {seq}", group.len());
                    Committed::Upto {
                        seq,
                        batches: group.len(),
                    }
                }
                Err(e) => Committed::Failed(e.to_string()),
            };
            let failed = matches!(report, Committed::Failed(_));
            let _ = results.send(report);
            notify();
            if failed {
                return;
            }
        }
    }
}

/// A row of the `users` table.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct UserRecord {
    /// The public key the user is bound to; absent until its first session proves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl Store {
    /// Forgets the key `user` is bound to, so its next session binds a new one. Returns
    /// whether the user is known at all. Used offline by `bin_nm --reset-user`.
    pub fn reset_user(&self, user: &str) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(dberr)?;
        txn.set_durability(Durability::Immediate).map_err(dberr)?;
        let known = {
            let mut users = txn.open_table(USERS).map_err(dberr)?;
            let known = users.get(user).map_err(dberr)?.is_some();
            if known {
                users.insert(user, "{}").map_err(dberr)?;
            }
            known
        };
        txn.commit().map_err(dberr)?;
        crate::durable::count_store_commit();
        Ok(known)
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, StoreError> {
    serde_json::from_str(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        msg: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(key: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::protocol::Version;
    use std::collections::BTreeMap;

    fn rec(owner: &str) -> FileRecord {
        FileRecord {
            unconfirmed: None,
            owner: owner.into(),
            ss: "ss1".into(),
            version: Version {
                epoch: 1,
                counter: 2,
            },
            checksum: 7,
            size: 3,
            words: 1,
            chars: 3,
            created_ms: 10,
            modified_ms: 20,
            access: BTreeMap::from([("bob".to_string(), true)]),
            accessed_ms: Some(30),
            accessed_by: Some("bob".into()),
            primary_held: None,
            epoch_base: None,
            backup_version: None,
            primary_missing: false,
        }
    }

    #[test]
    fn user_keys_survive_reopen_and_reset() {
        let d = tempfile::tempdir().unwrap();
        let batch = |seq, ops| Batch { seq, ops };
        {
            let s = Store::open(d.path()).unwrap();
            s.commit(&[
                batch(1, vec![StoreOp::PutUser("old".into())]),
                batch(
                    2,
                    vec![
                        StoreOp::PutUserKey("alice".into(), "k1".into()),
                        // Seeing a bound user again never drops its key.
                        StoreOp::PutUser("alice".into()),
                    ],
                ),
            ])
            .unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.users.iter().collect::<Vec<_>>(), vec!["alice", "old"]);
        assert_eq!(
            l.user_keys,
            BTreeMap::from([("alice".to_string(), "k1".to_string())])
        );
        assert!(s.reset_user("alice").unwrap());
        assert!(!s.reset_user("nobody").unwrap());
        let l = s.load().unwrap();
        assert!(l.user_keys.is_empty());
        assert!(l.users.contains("alice"));
    }

    #[test]
    fn batches_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.commit(&[
                Batch {
                    seq: 1,
                    ops: vec![
                        StoreOp::PutUser("alice".into()),
                        StoreOp::PutFile("a.txt".into(), rec("alice")),
                        StoreOp::PutFile("b.txt".into(), rec("alice")),
                    ],
                },
                Batch {
                    seq: 2,
                    ops: vec![
                        StoreOp::DelFile("b.txt".into()),
                        StoreOp::PutServer(
                            "ss1".into(),
                            ServerRecord {
                                host: "127.0.0.1".into(),
                                client_port: 6001,
                                backup_of: None,
                            },
                        ),
                    ],
                },
            ])
            .unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.users.iter().collect::<Vec<_>>(), vec!["alice"]);
        assert_eq!(l.files.len(), 1);
        assert_eq!(l.files["a.txt"], rec("alice"));
        assert_eq!(l.servers["ss1"].client_port, 6001);
    }

    #[test]
    fn pairs_and_replication_jobs_survive_reopen() {
        use crate::nm::replication::{JobState, ReplJob, Want};
        let d = tempfile::tempdir().unwrap();
        let job = |file: &str, want| ReplJob {
            target: "ss1_backup".into(),
            file: file.into(),
            want,
            attempts: 3,
            next_ms: 99,
            last_error: Some("refused".into()),
            state: JobState::Pending,
            since_ms: 7,
            quarantine: false,
        };
        let content = Want::Content {
            version: Version {
                epoch: 1,
                counter: 4,
            },
        };
        {
            let s = Store::open(d.path()).unwrap();
            let ops = vec![
                StoreOp::PutPair("ss1".into(), "ss1_backup".into()),
                StoreOp::PutFile("a.txt".into(), rec("alice")),
                StoreOp::PutJob(job("a.txt", content)),
                StoreOp::PutJob(job("b.txt", Want::Delete)),
                StoreOp::PutJob(job("c.txt", Want::Delete)),
                StoreOp::DelJob(job("c.txt", Want::Delete).key()),
            ];
            s.commit(&[Batch { seq: 1, ops }]).unwrap();
        }
        let l = Store::open(d.path()).unwrap().load().unwrap();
        assert_eq!(l.pairs["ss1"], "ss1_backup");
        let jobs: Vec<&ReplJob> = l.jobs.values().collect();
        assert_eq!(
            jobs,
            vec![&job("a.txt", content), &job("b.txt", Want::Delete)]
        );
    }

    #[test]
    fn folders_requests_and_the_request_counter_survive_reopen() {
        use crate::protocol::AccessKind;
        let d = tempfile::tempdir().unwrap();
        let req = |id| AccessRequest {
            id,
            user: "bob".into(),
            file: "a.txt".into(),
            kind: AccessKind::RW,
            created_ms: 5,
        };
        let folder = FolderRecord {
            owner: "alice".into(),
            created_ms: 3,
        };
        {
            let s = Store::open(d.path()).unwrap();
            let ops = vec![
                StoreOp::PutFolder("docs".into(), folder.clone()),
                StoreOp::PutFolder("docs/sub".into(), folder.clone()),
                StoreOp::PutRequest(req(1)),
                StoreOp::PutRequest(req(2)),
                StoreOp::DelRequest(1),
                StoreOp::PutNextRequest(3),
            ];
            s.commit(&[Batch { seq: 1, ops }]).unwrap();
        }
        let l = Store::open(d.path()).unwrap().load().unwrap();
        assert_eq!(
            l.folders.keys().collect::<Vec<_>>(),
            vec!["docs", "docs/sub"]
        );
        assert_eq!(l.folders["docs"], folder);
        assert_eq!(l.requests.values().collect::<Vec<_>>(), vec![&req(2)]);
        assert_eq!(l.next_request, 3);
    }

    #[test]
    fn move_intents_survive_reopen_until_removed() {
        let d = tempfile::tempdir().unwrap();
        let m = |to: &str| MoveIntent {
            to: to.into(),
            ss: "ss1".into(),
            epoch: 2,
            record: rec("alice"),
        };
        {
            let s = Store::open(d.path()).unwrap();
            let ops = vec![
                StoreOp::PutMove("a.txt".into(), m("d/a.txt")),
                StoreOp::PutMove("b.txt".into(), m("d/b.txt")),
                StoreOp::DelMove("b.txt".into()),
            ];
            s.commit(&[Batch { seq: 1, ops }]).unwrap();
        }
        let l = Store::open(d.path()).unwrap().load().unwrap();
        assert_eq!(
            l.moves,
            BTreeMap::from([("a.txt".to_string(), m("d/a.txt"))])
        );
    }

    #[test]
    fn delete_intents_survive_reopen_until_removed() {
        let d = tempfile::tempdir().unwrap();
        let intent = |counter| DeleteIntent {
            ss: "ss1".into(),
            epoch: 2,
            version: crate::protocol::Version { epoch: 2, counter },
            checksum: 7,
        };
        {
            let s = Store::open(d.path()).unwrap();
            let ops = vec![
                StoreOp::PutDelete("a.txt".into(), intent(3)),
                StoreOp::PutDelete("b.txt".into(), intent(4)),
                StoreOp::DelDelete("b.txt".into()),
            ];
            s.commit(&[Batch { seq: 1, ops }]).unwrap();
        }
        let l = Store::open(d.path()).unwrap().load().unwrap();
        assert_eq!(
            l.deletes,
            BTreeMap::from([("a.txt".to_string(), intent(3))])
        );
    }

    #[test]
    fn waiting_batches_share_one_transaction() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let (btx, brx) = crossbeam_channel::bounded(16);
        let (rtx, rrx) = crossbeam_channel::bounded(16);
        for seq in 1..=5 {
            btx.send(Batch {
                seq,
                ops: vec![StoreOp::PutUser(format!("u{seq}"))],
            })
            .unwrap();
        }
        drop(btx);
        s.run(brx, rtx, || {});
        let reports: Vec<Committed> = rrx.try_iter().collect();
        assert_eq!(reports, vec![Committed::Upto { seq: 5, batches: 5 }]);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap().users.len(), 5);
    }
}
