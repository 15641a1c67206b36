//! Every message pairfs sends, in one enum. This file is the wire contract; `frame/` says how
//! a message and its optional raw body are laid out on a byte stream.
//!
//! Conversations (each arrow is one frame; `*` means repeated):
//!
//! ```text
//! client -> nm : HELLO <- CHALLENGE; PROVE      <- WELCOME | ERR (see `crate::identity`)
//! operator -> nm : RESET_USER (cluster-key proof) <- DONE | ERR, then closed
//! client -> nm : CREATE | DELETE | UNDO | REMACCESS        <- DONE | ERR
//! client -> nm : INFO <- INFO_REPLY;  VIEW <- FILE_LIST+;  LIST_USERS <- USERS+ (paged)
//! client -> nm : ADD_ACCESS                     <- ACCESS_GRANTED | ERR
//! client -> nm : EXEC                           <- EXEC_OUTPUT (body = output) | ERR
//! client -> nm : LOCATE                         <- LOCATED (ss address + ticket) | ERR
//! client -> ss : READ                           <- READ_OK, CHUNK*, END | ERR
//! client -> ss : STREAM                         <- WORD* (one every 100 ms), END | ERR
//! client -> ss : WRITE_BEGIN <- WRITE_OPENED; (EDIT <- SENTENCE | ERR)*; COMMIT <- COMMITTED | ERR
//!                (WORD, WRITE_OPENED, EDIT and SENTENCE carry their text in the body)
//! ss -> nm     : REGISTER, FILE_BATCH*, REGISTER_END          <- REGISTERED | ERR
//! ss -> nm     : HEARTBEAT                      <- HEARTBEAT_ACK
//! ss -> nm     : CHANGED (a file's new state)   <- CHANGED_ACK (after the nm made it durable)
//! ss -> nm     : REMOVED (a file vanished from disk) <- CHANGED_ACK
//! nm -> ss     : SS_CREATE | SS_UNDO            <- FILE_STATE | ERR
//! nm -> ss     : SS_DELETE | SS_MOVE | SS_MKDIR  <- DONE | ERR
//! nm -> ss     : SS_CHECKPOINT | SS_REVERT      <- FILE_STATE | ERR
//! client -> nm : CREATE_FOLDER | MOVE | CHECKPOINT | REVERT | ANSWER_REQUEST <- DONE | ERR
//! client -> nm : VIEW_FOLDER <- FOLDER_LIST+;  VIEW_REQUESTS <- REQUESTS+ (paged)
//! client -> nm : REQUEST_ACCESS                 <- REQUEST_CREATED | ERR
//! client -> ss : READ_CHECKPOINT                <- READ_OK, CHUNK*, END | ERR
//! client -> ss : LIST_CHECKPOINTS               <- CHECKPOINT_LIST | ERR
//! nm -> ss     : READ (user "@nm", for EXEC)    <- READ_OK, CHUNK*, END
//! client -> nm : STATUS                         <- STATUS_REPLY
//! client -> ss : UPLOAD, CHUNK*, END            <- COMMITTED | ERR
//! writer -> its partner : STAGE_UPLOAD, CHUNK*, END <- STAGED | ERR  (relayed while the
//!                upload arrives; see `ss/staging.rs`)
//! nm -> target : PEEK_FILE                      <- HELD
//! nm -> source : GET_FILE_CONTENT               <- FILE_CONTENT, CHUNK*, END, (CHUNK*, END)*
//! nm -> target : PUT_FILE_CONTENT, CHUNK*, END, (CHUNK*, END)*   <- FILE_STATE_REPLY | ERR
//!                (the repeated parts: history entries in `sent` order, then checkpoints in
//!                `sent_checkpoints` order; with `staged`, the content part is left out: the
//!                target installs the upload staged under that id)
//! nm -> target : PUT_BATCH, (PUT_FILE_CONTENT and its parts)*, END
//!                                               <- (FILE_STATE_REPLY | ERR) per copy, in order
//! nm -> target : SIGNATURE (a stale copy >= 1 MiB) <- SIGNED (body = signature) | ERR
//! nm -> source : GET_FILE_DELTA (body = signature) <- as GET_FILE_CONTENT, content as ops
//! nm -> target : PUT_FILE_DELTA, as PUT_FILE_CONTENT, content as ops <- FILE_STATE_REPLY | ERR
//! nm -> target : SS_DELETE (delete replication) <- DONE | ERR
//! client -> nm : FSCK (file, or the cursor of the next page) <- FSCK_PAGE | ERR
//! nm -> ss     : CHECK_FILES (a page of names)  <- CHECKED | ERR
//! ```
//!
//! FSCK is paged by the client: each FSCK_PAGE carries `next`, the cursor to send back for the
//! following page, so neither side ever holds more than one page of a 10,000-file check.
//!
//! A replication worker relays GET_FILE_CONTENT's stream into PUT_FILE_CONTENT chunk by chunk,
//! so no process holds a whole file. In `--replication sync` mode a change whose backup is
//! down is answered with DONE_DEGRADED (or COMMITTED with `copies`) instead of DONE.
//!
//! Every request to a storage server carries a [`Ticket`] signed with the cluster key by the
//! name server; the storage server checks it and never trusts the sender otherwise.

use super::error::{ErrorCode, WireError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this wire protocol; a peer speaking another one is refused with INVALID.
pub const PROTOCOL_VERSION: u32 = 1;

/// A file version `(epoch, counter)`, ordered lexicographically. The epoch is the pair's epoch
/// when the change was made (it rises at failover); the counter rises by one per change.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// The pair's epoch at the time of the change.
    pub epoch: u64,
    /// Changes to this file made so far (starting at 1 for CREATE).
    pub counter: u64,
}

impl Version {
    /// The first version of a file an SS_CREATE makes in `epoch`: its `counter` when the name
    /// server gave one (above every version the name had in that epoch), else 1.
    pub fn first(epoch: u64, counter: Option<u64>) -> Version {
        Version {
            epoch,
            counter: counter.unwrap_or(1).max(1),
        }
    }

    /// The version after one more change made in `epoch`.
    pub fn next(self, epoch: u64) -> Version {
        Version {
            epoch: epoch.max(self.epoch),
            counter: self.counter + 1,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.counter)
    }
}

/// What a storage server knows about one of its files; sent at registration, after every change,
/// and in answer to NM-initiated changes. Counts are computed by the storage server from content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Canonical file name (see `names::canonical_file`), e.g. `a.txt` or `docs/a.txt`.
    pub file: String,
    /// Current version.
    pub version: Version,
    /// CRC32C of the content.
    pub checksum: u32,
    /// Content size in bytes.
    pub size: u64,
    /// Whitespace-separated words in the content.
    pub words: u64,
    /// Characters (Unicode scalar values) in the content.
    pub chars: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Owner recorded by the storage server, if it knows one (absent for adopted files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The operations a ticket may authorise. The storage server checks the ticket's op against the
/// request it arrives with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketOp {
    /// READ (and DOWNLOAD; EXEC's fetch by the name server).
    Read,
    /// STREAM.
    Stream,
    /// A WRITE session.
    Write,
    /// NM-initiated create.
    Create,
    /// NM-initiated delete.
    Delete,
    /// NM-initiated undo.
    Undo,
    /// Replication: the name server reads a file's content and history from its source.
    Fetch,
    /// Replication: the name server installs a copy on its target (or asks what it holds).
    Store,
    /// A client replaces a file's content with an upload.
    Upload,
    /// FSCK: the name server asks a copy to recompute checksums of a page of files. The
    /// ticket's `file` is [`crate::auth::check_scope`] of the request, binding it to that list.
    Check,
    /// Recovery: the name server sets a copy with changes the cluster never acknowledged
    /// aside into the target's `quarantine/` (never served, never overwritten).
    Quarantine,
    /// NM-initiated checkpoint of a file's current content.
    Checkpoint,
    /// NM-initiated revert of a file's content to a checkpoint.
    Revert,
    /// NM-initiated rename of a file; the ticket's file is [`crate::names::move_subject`].
    Move,
    /// NM-initiated creation of folder directories; the ticket's file is
    /// [`crate::names::mkdir_subject`].
    Mkdir,
    /// A writer streams an upload to its partner as the bytes arrive (STAGE_UPLOAD); the
    /// partner keeps them aside, served to nobody, until a replication job installs them.
    /// Minted by the writer itself (every storage server holds the cluster key).
    Stage,
}

/// The other member of a pair as its writer learns it from heartbeat acks: where to stage
/// uploads while they arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Its name (the `ss` of the tickets it accepts).
    pub name: String,
    /// `host:port` of its client port.
    pub addr: String,
}

/// A copy of a file named by its version and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRef {
    /// Its version.
    pub version: Version,
    /// CRC32C of its content.
    pub checksum: u32,
}

/// An upload's bytes staged on the pair's other member while they arrived (see
/// [`Message::StageUpload`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRef {
    /// The server holding the staged bytes.
    pub ss: String,
    /// Their id there.
    pub id: String,
}

/// An authorisation minted by the name server for exactly one request to one storage server.
/// `mac` is HMAC-SHA256 over [`Ticket::signing_string`] with the cluster key (see `auth.rs`).
/// Storage servers refuse expired tickets and remember nonces until expiry (no replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The user acting; `@nm` for the name server itself.
    pub user: String,
    /// The canonical file the ticket is for.
    pub file: String,
    /// What the ticket permits.
    pub op: TicketOp,
    /// The storage server name the ticket is valid on.
    pub ss: String,
    /// Unix milliseconds after which the ticket is refused.
    pub exp_ms: u64,
    /// 16 random bytes, hex; single use.
    pub nonce: String,
    /// The name server's recorded version of the file; a server holding less refuses to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    /// For a change (write, upload, create, undo, delete by a client): the pair's epoch when
    /// the ticket was minted. A server on another epoch, or without a live write lease,
    /// refuses it, so a deposed writer cannot take a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Hex HMAC-SHA256 of the fields above.
    pub mac: String,
}

impl Ticket {
    /// The exact byte string the MAC covers. Fields are joined with `\n`, which no field may
    /// contain (names refuse control characters).
    pub fn signing_string(&self) -> String {
        let mv = match self.min_version {
            Some(v) => format!("{}.{}", v.epoch, v.counter),
            None => "-".to_string(),
        };
        let op = serde_json::to_string(&self.op).unwrap_or_default();
        let epoch = match self.epoch {
            Some(e) => e.to_string(),
            None => "-".to_string(),
        };
        format!(
            "ticket\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.user, self.file, op, self.ss, self.exp_ms, self.nonce, mv, epoch
        )
    }
}

/// Proof that a registering storage server holds the cluster key: HMAC over
/// `register\n<name>\n<ts_ms>\n<nonce>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProof {
    /// Unix milliseconds when the proof was made; the name server accepts ±5 minutes.
    pub ts_ms: u64,
    /// Random hex.
    pub nonce: String,
    /// Hex HMAC-SHA256.
    pub mac: String,
}

/// How a client wants to use a file it asks the name server to locate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessMode {
    /// READ / DOWNLOAD.
    Read,
    /// STREAM.
    Stream,
    /// WRITE.
    Write,
    /// UPLOAD (write access; a missing file is created, owned by the uploader).
    Upload,
}

/// One access-list entry as INFO shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// The user.
    pub user: String,
    /// True for read-and-write, false for read only.
    pub write: bool,
}

/// One copy of a file as INFO's `Replicas:` line shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Storage server name.
    pub ss: String,
    /// `current`, `stale`, `missing`, `down`, ...
    pub state: String,
}

/// Everything INFO prints about a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Display name (`a.txt`, `/docs/a.txt`).
    pub file: String,
    /// Owner.
    pub owner: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Bytes.
    pub size: u64,
    /// Words.
    pub words: u64,
    /// Characters.
    pub chars: u64,
    /// Owner first (RW), then other users in name order.
    pub access: Vec<AccessEntry>,
    /// Unix milliseconds of the last READ/STREAM/WRITE, if any.
    #[serde(default)]
    pub accessed_ms: Option<u64>,
    /// Who accessed last.
    #[serde(default)]
    pub accessed_by: Option<String>,
    /// Current version.
    pub version: Version,
    /// CRC32C of the current content.
    pub checksum: u32,
    /// Copies and their states.
    pub replicas: Vec<ReplicaInfo>,
}

/// One row of VIEW (and `VIEW -l`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Display name.
    pub file: String,
    /// Owner.
    pub owner: String,
    /// Words.
    pub words: u64,
    /// Characters.
    pub chars: u64,
    /// Unix milliseconds of the last access, if any.
    #[serde(default)]
    pub accessed_ms: Option<u64>,
    /// Who accessed last.
    #[serde(default)]
    pub accessed_by: Option<String>,
}

/// One entry of a file's undo history as it travels in a replication transfer. A history
/// entry holds the content the file had at `version`; copies name entries by version, so a
/// target can say which it already holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoDesc {
    /// The version whose content this entry restores.
    pub version: Version,
    /// Bytes.
    pub size: u64,
    /// CRC32C of the bytes.
    pub checksum: u32,
}

/// One checkpoint of a file (LISTCHECKPOINTS, and the head of a replication transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The tag (`[A-Za-z0-9_-]{1,64}`, unique per file).
    pub tag: String,
    /// Who made it.
    pub creator: String,
    /// Unix milliseconds of its creation.
    pub created_ms: u64,
    /// Bytes.
    pub size: u64,
    /// CRC32C of the bytes.
    pub checksum: u32,
}

/// One entry of a folder listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderEntry {
    /// The last component of the entry's name.
    pub name: String,
    /// True for a folder, false for a file.
    pub dir: bool,
}

/// What an access request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessKind {
    /// Read access.
    R,
    /// Write access; the access model pairs write with read, so approval grants both.
    W,
    /// Read and write access.
    RW,
}

impl AccessKind {
    /// Whether approving the request grants write access (W and RW do).
    pub fn grants_write(self) -> bool {
        !matches!(self, AccessKind::R)
    }

    /// The spelling users type and see.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::R => "R",
            AccessKind::W => "W",
            AccessKind::RW => "RW",
        }
    }
}

/// A pending access request as VIEWACCR shows it (and as the `requests` table stores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Unique id, never reused.
    pub id: u64,
    /// Who asks.
    pub user: String,
    /// Canonical file name.
    pub file: String,
    /// What is asked for.
    pub kind: AccessKind,
    /// Unix milliseconds of the request.
    pub created_ms: u64,
}

/// One storage server as STATUS shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Name.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// Reachable and heartbeating.
    pub up: bool,
    /// `primary`, `backup` or `unpaired`.
    pub role: String,
    /// Files the name server places on (or replicates to) it.
    pub files: u64,
    /// Unix milliseconds of the last heartbeat, if any.
    #[serde(default)]
    pub last_heartbeat_ms: Option<u64>,
}

/// One primary/backup pair as STATUS shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStatus {
    /// The primary's name.
    pub primary: String,
    /// The backup's name, if one ever registered.
    #[serde(default)]
    pub backup: Option<String>,
    /// `ACTIVE`, `SYNCING`, `BACKUP_DOWN`, `PRIMARY_DOWN`, `UNPAIRED`, ...
    pub state: String,
    /// The pair's epoch.
    pub epoch: u64,
    /// Replication jobs owed to the backup.
    pub lag_jobs: u64,
    /// Bytes owed to the backup (sizes of the files those jobs carry).
    pub lag_bytes: u64,
    /// Age in ms of the oldest change the backup does not hold yet (0 when none).
    pub lag_ms: u64,
    /// The member that takes writes now (the backup while it is promoted).
    #[serde(default)]
    pub writer: Option<String>,
    /// Recovery progress: transfers done of those queued since the pair last lost a member.
    #[serde(default)]
    pub sync_done: u64,
    /// Recovery progress: transfers queued since the pair last lost a member.
    #[serde(default)]
    pub sync_total: u64,
}

/// A replication job that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedJob {
    /// Canonical file.
    pub file: String,
    /// Target server.
    pub target: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// The state of one copy as FSCK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// The copy holds the recorded version (or a newer one on the writer, a change being
    /// reported that recovery adopts) and its bytes match its checksum.
    Ok,
    /// The copy holds an older version than the name server recorded when the check began.
    Stale,
    /// The server is up but holds no copy.
    Missing,
    /// The bytes on disk do not match the checksum recorded for them (bit rot).
    Corrupt,
    /// The copy holds changes the cluster never acknowledged: the recorded version with other
    /// content, a version above the record on a member that recovery does not take it from,
    /// or a fork from an earlier epoch. Recovery sets it aside and installs the current copy;
    /// it is never served as current.
    Diverged,
    /// The server could not be asked (down, unreachable, or it failed to answer).
    Down,
    /// A copy set aside under the server's `quarantine/` (never served).
    Quarantined,
}

impl CopyState {
    /// The word FSCK prints.
    pub fn word(self) -> &'static str {
        match self {
            CopyState::Ok => "ok",
            CopyState::Stale => "stale",
            CopyState::Missing => "missing",
            CopyState::Corrupt => "corrupt",
            CopyState::Diverged => "diverged",
            CopyState::Down => "down",
            CopyState::Quarantined => "quarantined",
        }
    }

    /// Whether this state makes FSCK exit with status 1. A down copy is unknown rather than
    /// wrong, so it is reported and counted but does not fail the check by itself.
    pub fn fails(self) -> bool {
        matches!(
            self,
            CopyState::Stale
                | CopyState::Missing
                | CopyState::Corrupt
                | CopyState::Diverged
                | CopyState::Quarantined
        )
    }
}

/// One copy of a file in an FSCK report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    /// Storage server name.
    pub ss: String,
    /// The verdict.
    pub state: CopyState,
    /// The version the copy holds (for a quarantined copy: the version set aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The version the name server records for the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Version>,
    /// Why: the checksums of a corrupt copy, the error of a server that could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One line of an FSCK report: a file and each of its copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckFile {
    /// Display name (`a.txt`, `/docs/a.txt`).
    pub file: String,
    /// False for quarantined copies of a file the name server has no record of.
    pub recorded: bool,
    /// The copies, the primary's first.
    pub copies: Vec<CopyReport>,
}

/// What a storage server found of one file it was asked to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCheck {
    /// Canonical file name.
    pub file: String,
    /// The copy under `files/`, if the server holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldCopy>,
    /// Why the copy could not be read (an I/O error such as EIO is what a failing disk
    /// gives); the copy is then corrupt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Versions of this file set aside under `quarantine/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Version>,
}

/// A held copy as a check found it: the bookkeeping's version and checksum, and the checksum
/// recomputed from the bytes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCopy {
    /// Version in the server's bookkeeping (after adopting a hand edit, if there was one).
    pub version: Version,
    /// CRC32C the bookkeeping records.
    pub checksum: u32,
    /// CRC32C of the bytes read from disk now.
    pub actual: u32,
    /// Bytes read.
    pub size: u64,
}

/// A quarantined copy found while listing a server's whole `quarantine/` directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Canonical file name.
    pub file: String,
    /// The version set aside.
    pub version: Version,
}

/// A storage server's file system as its heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Bytes free to the storage server's user.
    pub free: u64,
    /// Bytes in use on the file system.
    pub used: u64,
}

/// Every message. Serialized with an `op` field in SCREAMING_SNAKE_CASE (`{"op":"READ",...}`);
/// the frame adds `v`, and `len`/`crc` when a raw body follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Message {
    // ----- generic replies -----
    /// Success with nothing to report.
    Done {},
    /// Failure.
    Err {
        /// Which error.
        code: ErrorCode,
        /// Human message.
        msg: String,
    },

    // ----- client -> nm -----
    /// First frame of a client session: who is speaking. Answered by CHALLENGE.
    Hello {
        /// User name (validated by `names::validate_user`).
        user: String,
    },
    /// Reply to HELLO: the nonce the client must sign to prove its user key.
    Challenge {
        /// 32 random bytes, hex.
        nonce: String,
    },
    /// Answer to CHALLENGE: the user's ed25519 public key and its signature over
    /// `identity::signed_bytes(user, nonce)`. A user with no key recorded is bound to `key`
    /// (durably, before WELCOME); otherwise `key` must be the recorded one.
    Prove {
        /// Public key, 32 bytes hex.
        key: String,
        /// Signature, 64 bytes hex.
        sig: String,
    },
    /// First and only frame of an operator's connection: forget the key `user` is bound to,
    /// proved with the cluster key (`identity::reset_signing_string`). Answered by DONE once
    /// durable, or ERR; the connection is then closed.
    ResetUser {
        /// The user to unbind.
        user: String,
        /// Cluster-key proof.
        proof: KeyProof,
    },
    /// Reply to PROVE: the session is open.
    Welcome {
        /// The user as recorded.
        user: String,
        /// The cluster's write-lease length (ms): a client sizes its wait for a failover from
        /// it. Absent from an older name server.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// CREATE f.
    Create {
        /// File name as the user typed it.
        file: String,
    },
    /// DELETE f.
    Delete {
        /// File name.
        file: String,
    },
    /// UNDO f.
    Undo {
        /// File name.
        file: String,
    },
    /// INFO f.
    Info {
        /// File name.
        file: String,
    },
    /// Reply to INFO.
    InfoReply {
        /// The record.
        info: FileInfo,
    },
    /// VIEW with its flags.
    View {
        /// `-a`: every file, not only the accessible ones.
        all: bool,
        /// `-l`: the long table (the reply is the same; the client renders).
        long: bool,
    },
    /// Reply to VIEW, sorted by display name. A long list comes as several FILE_LIST frames
    /// (each under the header cap); every one but the last has `more: true`.
    FileList {
        /// Rows of this page.
        files: Vec<FileSummary>,
        /// Another FILE_LIST frame follows.
        #[serde(default)]
        more: bool,
    },
    /// LIST.
    ListUsers {},
    /// Reply to LIST, sorted; paged like FILE_LIST.
    Users {
        /// Users of this page.
        users: Vec<String>,
        /// Another USERS frame follows.
        #[serde(default)]
        more: bool,
    },
    /// ADDACCESS -R|-W f u.
    AddAccess {
        /// File name.
        file: String,
        /// Grantee.
        user: String,
        /// `-W` (read and write) rather than `-R`.
        write: bool,
    },
    /// Reply to ADDACCESS.
    AccessGranted {
        /// True when the grantee had never been seen (the client prints a note).
        new_user: bool,
    },
    /// REMACCESS f u.
    RemAccess {
        /// File name.
        file: String,
        /// User losing access.
        user: String,
    },
    /// EXEC f.
    Exec {
        /// File name.
        file: String,
    },
    /// Reply to EXEC; the body is the combined stdout+stderr (capped).
    ExecOutput {
        /// Exit code of `sh`, if it exited.
        exit_code: Option<i32>,
        /// True when the output cap cut the output.
        truncated: bool,
    },
    /// Ask where to READ, STREAM or WRITE a file, and for a ticket to do it.
    Locate {
        /// File name.
        file: String,
        /// What the client will do.
        mode: AccessMode,
        /// A copy that just failed the client (down, or stale): locate another one if the
        /// cluster has one, else answer UNAVAILABLE.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avoid: Option<String>,
    },
    /// Reply to LOCATE.
    Located {
        /// Storage server name.
        ss: String,
        /// `host:port` of its client port.
        addr: String,
        /// Authorisation for one request there.
        ticket: Ticket,
    },

    /// RECOVER ss: start a recovery sync of that server now.
    Recover {
        /// The storage server's name.
        ss: String,
    },
    /// Reply to RECOVER: how many transfers were queued.
    RecoverQueued {
        /// Jobs owed to the server after the check (new and already owed).
        queued: u64,
    },

    /// STATUS.
    Status {},
    /// Reply to STATUS.
    StatusReply {
        /// Every storage server, by name.
        servers: Vec<ServerStatus>,
        /// Every pair (and every unpaired primary), by primary name.
        pairs: Vec<PairStatus>,
        /// Replication jobs not yet done (pending or running).
        queue_depth: u64,
        /// Jobs out of attempts, waiting for their target to come back: the first
        /// [`STATUS_FAILED_SHOWN`](crate::nm::core::STATUS_FAILED_SHOWN) of them.
        failed: Vec<FailedJob>,
        /// How many jobs are out of attempts in all.
        #[serde(default)]
        failed_total: u64,
        /// `async` or `sync`.
        replication: String,
    },
    /// Success of a change in `--replication sync` mode when the backup could not take it:
    /// the change is durable on `copies` of `total` copies and owed to the rest.
    DoneDegraded {
        /// Copies holding the change.
        copies: u32,
        /// Copies the file should have.
        total: u32,
    },

    /// FSCK [f]: check every copy of `file`, or of one page of all files starting after the
    /// cursor `after` (absent for the first page).
    Fsck {
        /// One file to check; absent for all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// The `next` cursor of the previous page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Reply to FSCK: one page of the report, in one or more frames (each under the header
    /// cap; every one but the last has `more: true`).
    FsckPage {
        /// Files of this page, by name; on the last page also quarantined copies of files
        /// with no record (or held outside their file's pair).
        files: Vec<FsckFile>,
        /// Another FSCK_PAGE frame of this page follows.
        #[serde(default)]
        more: bool,
        /// Quarantined copies that exist but did not fit in the listing.
        #[serde(default)]
        unlisted_quarantined: u64,
        /// Cursor for the next page; absent on the last one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// CREATEFOLDER /p.
    CreateFolder {
        /// Folder name as typed.
        folder: String,
    },
    /// VIEWFOLDER /p.
    ViewFolder {
        /// Folder name as typed (`/` is the root).
        folder: String,
    },
    /// Reply to VIEWFOLDER: folders first, then files, each in name order; paged like
    /// FILE_LIST.
    FolderList {
        /// Entries of this page.
        entries: Vec<FolderEntry>,
        /// Another FOLDER_LIST frame follows.
        #[serde(default)]
        more: bool,
    },
    /// MOVE f /p.
    Move {
        /// File name.
        file: String,
        /// Destination folder (`/p` and `/p/` alike; `/` is the root).
        folder: String,
    },
    /// CHECKPOINT f tag.
    Checkpoint {
        /// File name.
        file: String,
        /// Tag.
        tag: String,
    },
    /// REVERT f tag.
    Revert {
        /// File name.
        file: String,
        /// Tag.
        tag: String,
    },
    /// RACC f R|W|RW.
    RequestAccess {
        /// File name.
        file: String,
        /// What is asked for.
        kind: AccessKind,
    },
    /// Reply to REQUEST_ACCESS.
    RequestCreated {
        /// The new request's id.
        id: u64,
    },
    /// VIEWACCR: the pending requests on the caller's files.
    ViewRequests {},
    /// Reply to VIEW_REQUESTS, by id; paged like FILE_LIST.
    Requests {
        /// Requests of this page (file names in display form).
        requests: Vec<AccessRequest>,
        /// Another REQUESTS frame follows.
        #[serde(default)]
        more: bool,
    },
    /// APPROVEACCR id (`approve`) / DISACCR id.
    AnswerRequest {
        /// The request.
        id: u64,
        /// Grant what was asked (true) or refuse it.
        approve: bool,
    },

    // ----- client (or nm) -> ss -----
    /// Read a whole file; answered by READ_OK, then CHUNK frames (bodies of at most
    /// `frame::CHUNK_BYTES`), then END.
    Read {
        /// Canonical file name.
        file: String,
        /// Authorisation.
        ticket: Ticket,
    },
    /// First reply to READ.
    ReadOk {
        /// Bytes that follow in CHUNK bodies.
        size: u64,
        /// Version served.
        version: Version,
        /// CRC32C of the whole content.
        checksum: u32,
    },
    /// A piece of file content in the body.
    Chunk {},
    /// End of a CHUNK or WORD sequence.
    End {},
    /// Stream a file's words, one every 100 ms.
    Stream {
        /// Canonical file name.
        file: String,
        /// Authorisation.
        ticket: Ticket,
    },
    /// One streamed word, in the body (a word may be as long as a sentence, so it never
    /// travels in the header).
    Word {},
    /// Open a write session on sentence `sentence`; the connection then carries EDITs and a
    /// COMMIT. Closing the connection abandons the session and releases the lock.
    WriteBegin {
        /// Canonical file name.
        file: String,
        /// 0-based sentence index.
        sentence: u64,
        /// Authorisation.
        ticket: Ticket,
    },
    /// Reply to WRITE_BEGIN; the body is the sentence's current text (empty for a new
    /// sentence slot). Sentence text always travels in the body, never in the header, so any
    /// sentence up to the body limit can be edited (see `ss::server::MAX_SENTENCE_BYTES`).
    WriteOpened {},
    /// Insert the words of the body (UTF-8) before word `word_index` of the sentence being
    /// edited.
    Edit {
        /// 0-based, `0..=word count`.
        word_index: u64,
    },
    /// Reply to EDIT; the body is the sentence as edited so far (single-space-joined words).
    Sentence {},
    /// ETIRW: commit the session.
    Commit {},
    /// Reply to COMMIT, sent once the change is durable on the storage server and recorded by
    /// the name server.
    Committed {
        /// The file's new state.
        state: FileState,
        /// In sync mode with the backup down: copies holding the change (of 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copies: Option<u32>,
    },

    /// Replace a file's content with `size` bytes that follow in CHUNK frames, then END. Answered
    /// by COMMITTED once durable on the storage server and recorded by the name server.
    Upload {
        /// Canonical file name.
        file: String,
        /// Bytes that follow.
        size: u64,
        /// CRC32C of all the bytes.
        checksum: u32,
        /// Authorisation (op `upload`).
        ticket: Ticket,
    },
    /// Writer to its partner while an UPLOAD arrives: keep these `size` bytes (CHUNK* END)
    /// aside, served to nobody, for the replication job that follows the upload to install
    /// without sending them again. Answered by STAGED once they are verified and durable.
    StageUpload {
        /// Canonical file name.
        file: String,
        /// Bytes that follow.
        size: u64,
        /// CRC32C of all the bytes.
        checksum: u32,
        /// Authorisation (op `stage`, minted by the writer).
        ticket: Ticket,
    },
    /// Reply to STAGE_UPLOAD.
    Staged {
        /// The id a PUT_FILE_CONTENT names the staged bytes by.
        id: String,
    },

    /// VIEWCHECKPOINT: read a checkpoint's bytes; answered like READ (READ_OK, CHUNK*, END).
    ReadCheckpoint {
        /// Canonical file name.
        file: String,
        /// Tag.
        tag: String,
        /// Authorisation (op `read`).
        ticket: Ticket,
    },
    /// LISTCHECKPOINTS: answered by CHECKPOINT_LIST.
    ListCheckpoints {
        /// Canonical file name.
        file: String,
        /// Authorisation (op `read`).
        ticket: Ticket,
    },
    /// Reply to LIST_CHECKPOINTS, oldest first.
    CheckpointList {
        /// The checkpoints.
        checkpoints: Vec<CheckpointInfo>,
    },

    // ----- nm -> ss -----
    /// Save the file's current content as checkpoint `tag` (a new version, same content).
    SsCheckpoint {
        /// Canonical file name.
        file: String,
        /// Tag.
        tag: String,
        /// Who asked.
        creator: String,
        /// Epoch to stamp on the new version.
        epoch: u64,
        /// Authorisation (op `checkpoint`).
        ticket: Ticket,
    },
    /// Replace the file's content with checkpoint `tag` (a new version; undoable).
    SsRevert {
        /// Canonical file name.
        file: String,
        /// Tag.
        tag: String,
        /// Epoch to stamp on the new version.
        epoch: u64,
        /// Authorisation (op `revert`).
        ticket: Ticket,
    },
    /// Create the directories of these folders under `files/` (they may exist); answered DONE.
    /// Sent to every storage server, backups too, when a folder is created and at each
    /// registration, so every copy holds every folder.
    SsMkdir {
        /// Canonical folder names, parents before children.
        folders: Vec<String>,
        /// Authorisation (op `mkdir`, file = `names::mkdir_subject(folders)`).
        ticket: Ticket,
    },
    /// Rename `file` to `to` with its bookkeeping, history and checkpoints; answered DONE.
    SsMove {
        /// Canonical current name.
        file: String,
        /// Canonical new name.
        to: String,
        /// The version the name server records for the file. A server that holds no `file`
        /// and holds `to` at this version has made this move already (a repeat after a lost
        /// answer) and answers DONE again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<Version>,
        /// Authorisation (op `move`, file = `names::move_subject(file, to)`).
        ticket: Ticket,
    },
    /// Create an empty file owned by `owner`.
    SsCreate {
        /// Canonical file name.
        file: String,
        /// Owner to record.
        owner: String,
        /// Epoch to stamp on the first version.
        epoch: u64,
        /// The first version's counter when it is not 1: a file created again under a name
        /// deleted in the same epoch starts above every version the old file had.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counter: Option<u64>,
        /// Authorisation (op `create`, user `@nm`).
        ticket: Ticket,
    },
    /// Delete a file with its history.
    SsDelete {
        /// Canonical file name.
        file: String,
        /// Authorisation (op `delete`).
        ticket: Ticket,
    },
    /// Restore the content before the last change.
    SsUndo {
        /// Canonical file name.
        file: String,
        /// Epoch to stamp on the new version.
        epoch: u64,
        /// Authorisation (op `undo`).
        ticket: Ticket,
    },
    /// Recovery: move this server's copy of `file` into `quarantine/` unless it is at `keep`
    /// (the version the cluster wants there), so a copy holding changes the cluster never
    /// acknowledged is set aside before the current copy replaces it. Answered DONE, also
    /// when there is no copy.
    SsQuarantine {
        /// Canonical file name.
        file: String,
        /// A copy at exactly this version is current and stays.
        #[serde(default)]
        keep: Option<Version>,
        /// Authorisation (op `quarantine`).
        ticket: Ticket,
    },
    /// Replication, step 1 (to the target): what do you hold of `file`?
    PeekFile {
        /// Canonical file name.
        file: String,
        /// Authorisation (op `store`).
        ticket: Ticket,
    },
    /// Reply to PEEK_FILE.
    Held {
        /// The target's state of the file, if it has it.
        #[serde(default)]
        state: Option<FileState>,
        /// Versions of the undo history it holds.
        blobs: Vec<Version>,
        /// The checkpoints it holds, each `<tag>:<checksum hex>` (a tag reused for other
        /// bytes is not held).
        #[serde(default)]
        checkpoints: Vec<String>,
    },
    /// Replication, step 2 (to the source): send the file's content and the history entries
    /// the target lacks. Answered by FILE_CONTENT, then the content as CHUNK* END, then each
    /// entry of `sent` in order as CHUNK* END.
    GetFileContent {
        /// Canonical file name.
        file: String,
        /// History versions the target already holds (not sent again).
        have: Vec<Version>,
        /// Checkpoints the target already holds, as `<tag>:<checksum hex>` (not sent again).
        #[serde(default)]
        have_checkpoints: Vec<String>,
        /// The target holds this version's content staged (see [`Message::StageUpload`]):
        /// if the file is at exactly this version, its content is left out of the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staged: Option<Version>,
        /// The target's own (older) copy: it stands for the history entry of its version,
        /// which is then not sent, if this server's entry of that version has the same
        /// checksum.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        basis: Option<CopyRef>,
        /// Authorisation (op `fetch`).
        ticket: Ticket,
    },
    /// Reply to GET_FILE_CONTENT (and the head of PUT_FILE_CONTENT's stream).
    FileContent {
        /// The state of the content that follows.
        state: FileState,
        /// The whole undo history, oldest first.
        undo: Vec<UndoDesc>,
        /// The history entries whose bytes follow the content, in this order.
        sent: Vec<Version>,
        /// Every checkpoint of the file.
        #[serde(default)]
        checkpoints: Vec<CheckpointInfo>,
        /// The checkpoints whose bytes follow the history entries, in this order.
        #[serde(default)]
        sent_checkpoints: Vec<String>,
        /// The content is left out (the GET's `staged` version is the current one): the
        /// first part that follows is the first history entry sent.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        content_staged: bool,
    },
    /// Replication, step 3 (to the target): install this copy. The frame is followed by the
    /// content as CHUNK* END, then each entry of `sent` as CHUNK* END. The target verifies every
    /// checksum before its atomic rename, ignores a version older than its own (answering its
    /// own state), and answers FILE_STATE_REPLY with the state it now holds.
    PutFileContent {
        /// Canonical file name.
        file: String,
        /// State of the content that follows.
        state: FileState,
        /// The whole undo history, oldest first.
        undo: Vec<UndoDesc>,
        /// History entries whose bytes follow, in order.
        sent: Vec<Version>,
        /// Every checkpoint of the file.
        #[serde(default)]
        checkpoints: Vec<CheckpointInfo>,
        /// Checkpoints whose bytes follow the history entries, in order.
        #[serde(default)]
        sent_checkpoints: Vec<String>,
        /// The content is the upload this server staged under this id (checked against
        /// `state`'s size and checksum); no content part follows, only the sent history
        /// entries and checkpoints.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staged: Option<String>,
        /// This server's own copy at this version and checksum stands for the history entry
        /// of that version where it is not sent; its bytes are verified by a whole read before
        /// it is linked in, and a copy that does not verify refuses the transfer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        basis: Option<CopyRef>,
        /// Authorisation (op `store`).
        ticket: Ticket,
    },
    /// FSCK (to every copy): recompute the checksum of each of `files` from disk and list
    /// their quarantined copies; with `orphans`, also list quarantined copies of files this
    /// server does not hold.
    CheckFiles {
        /// Canonical file names.
        files: Vec<String>,
        /// Also list the quarantine entries of files not held here.
        #[serde(default)]
        orphans: bool,
        /// Authorisation (op `check`, user `@nm`, file = the request's scope).
        ticket: Ticket,
    },
    /// Reply to CHECK_FILES.
    Checked {
        /// One entry per requested file, in request order.
        copies: Vec<CopyCheck>,
        /// Quarantine entries of files not held here (only with `orphans`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        orphans: Vec<QuarantineEntry>,
        /// Further such entries that did not fit.
        #[serde(default)]
        more_orphans: u64,
    },
    /// Replication of many files at once (to the target): the frames that follow, until an
    /// END, are PUT_FILE_CONTENT copies, each with its stream (at most 64). The target
    /// receives and verifies each as PUT_FILE_CONTENT does, then installs all together (each
    /// kind of sync once for the batch) and answers one FILE_STATE_REPLY or ERR per copy, in
    /// order. Each copy carries its own ticket; the batch itself changes nothing.
    PutBatch {},
    /// Delta transfer, step 1 (to a target holding an older copy of a large file): the
    /// signature of the copy it holds, cut with average chunk 2^`avg_bits` bytes. Answered by
    /// SIGNED, whose body is the signature (see `crate::delta`).
    Signature {
        /// Canonical file name.
        file: String,
        /// Log2 of the average chunk size (15..=20).
        avg_bits: u32,
        /// Authorisation (op `store`).
        ticket: Ticket,
    },
    /// Reply to SIGNATURE: the state of the copy the signature (the body: `count` entries of
    /// XXH3-128 and length) describes.
    Signed {
        /// The copy's state.
        state: FileState,
        /// Log2 of the average chunk size used.
        avg_bits: u32,
        /// Entries in the body.
        count: u64,
    },
    /// Delta transfer, step 2 (to the source): GET_FILE_CONTENT whose parts (the content, the
    /// history entries and the checkpoints) are each sent as ops rebuilding it from the
    /// target's old copy, whose signature is this frame's body. Answered as GET_FILE_CONTENT.
    /// That copy stands for the history entry of its version (not sent) only if the source's
    /// entry of that version has the same checksum.
    GetFileDelta {
        /// Canonical file name.
        file: String,
        /// History versions the target already holds (not sent again).
        have: Vec<Version>,
        /// The version of the target's old copy.
        basis: Version,
        /// Its checksum.
        basis_checksum: u32,
        /// Checkpoints the target already holds, as `<tag>:<checksum hex>` (not sent again).
        #[serde(default)]
        have_checkpoints: Vec<String>,
        /// Log2 of the average chunk size of the signature.
        avg_bits: u32,
        /// Entries in the signature.
        count: u64,
        /// Authorisation (op `fetch`).
        ticket: Ticket,
    },
    /// Delta transfer, step 3 (to the target): PUT_FILE_CONTENT whose parts are each ops
    /// against the copy it holds at `basis` (with `basis_checksum`). That copy is also the
    /// history entry of `basis`, so it is not sent. Verified and answered as PUT_FILE_CONTENT.
    PutFileDelta {
        /// Canonical file name.
        file: String,
        /// State of the content the ops rebuild.
        state: FileState,
        /// The whole undo history, oldest first.
        undo: Vec<UndoDesc>,
        /// History entries whose bytes follow, in order.
        sent: Vec<Version>,
        /// Every checkpoint of the file.
        #[serde(default)]
        checkpoints: Vec<CheckpointInfo>,
        /// Checkpoints whose bytes follow the history entries, in order.
        #[serde(default)]
        sent_checkpoints: Vec<String>,
        /// The version of the old copy the ops refer to.
        basis: Version,
        /// Its checksum.
        basis_checksum: u32,
        /// Authorisation (op `store`).
        ticket: Ticket,
    },
    /// A file's state after an NM-initiated change.
    FileStateReply {
        /// The state.
        state: FileState,
    },

    // ----- ss -> nm -----
    /// First frame of a storage server's link to the name server.
    Register {
        /// Server name (`ss1`, `ss1_backup`).
        name: String,
        /// Host clients should connect to.
        host: String,
        /// Port clients should connect to.
        client_port: u16,
        /// Name of the primary this server backs up, if any.
        #[serde(default)]
        backup_of: Option<String>,
        /// Proof of the cluster key.
        proof: KeyProof,
        /// Files that will follow in FILE_BATCH frames.
        file_count: u64,
    },
    /// Part of the file list (at most `frame::FILE_BATCH_MAX` entries).
    FileBatch {
        /// Entries.
        files: Vec<FileState>,
    },
    /// End of the file list.
    RegisterEnd {},
    /// Reply to REGISTER_END.
    Registered {
        /// The epoch this server must stamp on new versions.
        epoch: u64,
        /// Heartbeat interval the name server expects, in ms.
        heartbeat_interval_ms: u64,
        /// True while this server is not its pair's writer (a plain backup, or a primary
        /// whose promoted backup serves): it then refuses client writes.
        #[serde(default)]
        backup: bool,
        /// How long each heartbeat acknowledgement's write lease lasts, counted by the storage
        /// server from the moment it SENT that heartbeat (0: no lease, no writes).
        #[serde(default)]
        lease_ms: u64,
    },
    /// Liveness, every heartbeat interval.
    Heartbeat {
        /// Increasing sequence number.
        seq: u64,
        /// `false` once the sender applied an ack saying it is not the writer (acks arrive
        /// in order, so no earlier grant can renew its lease after that): a writer told to
        /// step down says so, and the name server need not wait for its lease to run out.
        #[serde(default)]
        writer: bool,
        /// The sender's storage file system: bytes free and in use (absent from senders that
        /// do not report it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<DiskUsage>,
    },
    /// Reply to HEARTBEAT.
    HeartbeatAck {
        /// The sequence acknowledged.
        seq: u64,
        /// The pair's current epoch (0: unchanged); new versions are stamped with it.
        #[serde(default)]
        epoch: u64,
        /// Whether this server is its pair's writer now. `true` renews the write lease for
        /// `lease_ms` from the heartbeat's send time; `false` ends it at once.
        #[serde(default)]
        writer: bool,
        /// Length of the lease this ack grants, in ms.
        #[serde(default)]
        lease_ms: u64,
        /// To a writer whose partner is up: where that partner is, so uploads can be staged
        /// there as they arrive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner: Option<Partner>,
    },
    /// A file changed on the storage server (commit, hand edit adopted at access).
    Changed {
        /// Correlation id for the ack.
        id: u64,
        /// New state.
        state: FileState,
        /// The new content (an upload's) is staged on the pair's other member too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staged: Option<StagedRef>,
        /// The change is in the server's journal but its flush has not returned yet: a power
        /// cut may still lose it. The name server keeps it unconfirmed (and rolls it back
        /// if the server registers without it); the server answers its client only once the
        /// change is durable and this report acknowledged.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pending: bool,
    },
    /// A file vanished from the storage server's disk (removed by hand).
    Removed {
        /// Correlation id for the ack.
        id: u64,
        /// Canonical file name.
        file: String,
    },
    /// Reply to CHANGED / REMOVED once durable on the name server (in sync mode: once the
    /// backup holds it too, or the change is durably owed to a backup that is down).
    ChangedAck {
        /// The id acknowledged.
        id: u64,
        /// In sync mode with the backup down: copies holding the change (of 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copies: Option<u32>,
    },
}

impl Message {
    /// The error as a message.
    pub fn err(e: WireError) -> Message {
        Message::Err {
            code: e.code,
            msg: e.msg,
        }
    }

    /// Turns an ERR message into `Err(WireError)`, anything else into `Ok(self)`.
    pub fn into_result(self) -> Result<Message, WireError> {
        match self {
            Message::Err { code, msg } => Err(WireError { code, msg }),
            m => Ok(m),
        }
    }

    /// The `op` spelling, for logs and unexpected-message errors.
    pub fn op_name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op").and_then(|o| o.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "?".to_string())
    }
}

impl From<WireError> for Message {
    fn from(e: WireError) -> Message {
        Message::err(e)
    }
}
