//! Every message pairfs sends, in one enum. This file is the wire contract; `frame.rs` says how
//! a message and its optional raw body are laid out on a byte stream.
//!
//! Conversations (each arrow is one frame; `*` means repeated):
//!
//! ```text
//! client -> nm : HELLO                          <- WELCOME
//! client -> nm : CREATE | DELETE | UNDO | REMACCESS        <- DONE | ERR
//! client -> nm : INFO <- INFO_REPLY;  VIEW <- FILE_LIST+;  LIST_USERS <- USERS+ (paged)
//! client -> nm : ADD_ACCESS                     <- ACCESS_GRANTED | ERR
//! client -> nm : EXEC                           <- EXEC_OUTPUT (body = output) | ERR
//! client -> nm : LOCATE                         <- LOCATED (ss address + ticket) | ERR
//! client -> ss : READ                           <- READ_OK, CHUNK*, END | ERR
//! client -> ss : STREAM                         <- WORD* (one every 100 ms), END | ERR
//! client -> ss : WRITE_BEGIN <- WRITE_OPENED; (EDIT <- SENTENCE | ERR)*; COMMIT <- COMMITTED | ERR
//! ss -> nm     : REGISTER, FILE_BATCH*, REGISTER_END          <- REGISTERED | ERR
//! ss -> nm     : HEARTBEAT                      <- HEARTBEAT_ACK
//! ss -> nm     : CHANGED (a file's new state)   <- CHANGED_ACK (after the nm made it durable)
//! ss -> nm     : REMOVED (a file vanished from disk) <- CHANGED_ACK
//! nm -> ss     : SS_CREATE | SS_UNDO            <- FILE_STATE | ERR
//! nm -> ss     : SS_DELETE                      <- DONE | ERR
//! nm -> ss     : READ (user "@nm", for EXEC)    <- READ_OK, CHUNK*, END
//! client -> nm : STATUS                         <- STATUS_REPLY
//! client -> ss : UPLOAD, CHUNK*, END            <- COMMITTED | ERR
//! nm -> target : PEEK_FILE                      <- HELD
//! nm -> source : GET_FILE_CONTENT               <- FILE_CONTENT, CHUNK*, END, (CHUNK*, END)*
//! nm -> target : PUT_FILE_CONTENT, CHUNK*, END, (CHUNK*, END)*   <- FILE_STATE_REPLY | ERR
//! nm -> target : SS_DELETE (delete replication) <- DONE | ERR
//! ```
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
        format!(
            "ticket\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.user, self.file, op, self.ss, self.exp_ms, self.nonce, mv
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
    /// First frame of a client session: who is speaking. The name server records the user.
    Hello {
        /// User name (validated by `names::validate_user`).
        user: String,
    },
    /// Reply to HELLO.
    Welcome {
        /// The user as recorded.
        user: String,
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
        /// Jobs out of attempts, waiting for their target to come back.
        failed: Vec<FailedJob>,
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
    /// One streamed word.
    Word {
        /// The word.
        word: String,
    },
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
    /// Reply to WRITE_BEGIN.
    WriteOpened {
        /// The sentence's current text (empty for a new sentence slot).
        text: String,
    },
    /// Insert the words of `text` before word `word_index` of the sentence being edited.
    Edit {
        /// 0-based, `0..=word count`.
        word_index: u64,
        /// Words to insert.
        text: String,
    },
    /// Reply to EDIT: the sentence as edited so far.
    Sentence {
        /// Single-space-joined words.
        text: String,
    },
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

    // ----- nm -> ss -----
    /// Create an empty file owned by `owner`.
    SsCreate {
        /// Canonical file name.
        file: String,
        /// Owner to record.
        owner: String,
        /// Epoch to stamp on the first version.
        epoch: u64,
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
    },
    /// Replication, step 2 (to the source): send the file's content and the history entries
    /// the target lacks. Answered by FILE_CONTENT, then the content as CHUNK* END, then each
    /// entry of `sent` in order as CHUNK* END.
    GetFileContent {
        /// Canonical file name.
        file: String,
        /// History versions the target already holds (not sent again).
        have: Vec<Version>,
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
        /// Authorisation (op `store`).
        ticket: Ticket,
    },
    /// Replication of many files at once (to the target): the frames that follow, until an
    /// END, are PUT_FILE_CONTENT copies, each with its stream (at most 64). The target
    /// receives and verifies each as PUT_FILE_CONTENT does, then installs all together (each
    /// kind of sync once for the batch) and answers one FILE_STATE_REPLY or ERR per copy, in
    /// order. Each copy carries its own ticket; the batch itself changes nothing.
    PutBatch {},
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
        /// True while this server is a backup: it then refuses client writes.
        #[serde(default)]
        backup: bool,
    },
    /// Liveness, every heartbeat interval.
    Heartbeat {
        /// Increasing sequence number.
        seq: u64,
    },
    /// Reply to HEARTBEAT.
    HeartbeatAck {
        /// The sequence acknowledged.
        seq: u64,
    },
    /// A file changed on the storage server (commit, hand edit adopted at access).
    Changed {
        /// Correlation id for the ack.
        id: u64,
        /// New state.
        state: FileState,
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
