//! The client's exact output strings (SPEC §2). Pure: every function returns text and is unit
//! tested; `session.rs` only writes what these return.

use crate::protocol::{
    AccessRequest, CheckpointInfo, CopyReport, CopyState, FailedJob, FileInfo, FileSummary,
    FolderEntry, FsckFile, PairStatus, ServerStatus,
};
use std::time::{Duration, UNIX_EPOCH};

/// `CREATE` succeeded.
pub const CREATED: &str = "File Created Successfully!";
/// `UNDO` succeeded.
pub const UNDONE: &str = "Undo Successful!";
/// `DELETE` succeeded.
pub const DELETED: &str = "File deleted successfully!";
/// `ADDACCESS` succeeded.
pub const GRANTED: &str = "Access granted successfully!";
/// `REMACCESS` succeeded.
pub const REMOVED: &str = "Access removed successfully!";
/// `CREATEFOLDER` succeeded.
pub const FOLDER_CREATED: &str = "Folder created successfully!";
/// `MOVE` succeeded.
pub const MOVED: &str = "File moved successfully!";
/// `VIEWFOLDER` of an empty folder.
pub const EMPTY_FOLDER: &str = "(empty)";
/// `LISTCHECKPOINTS` of a file without checkpoints.
pub const NO_CHECKPOINTS: &str = "No checkpoints.";
/// `VIEWACCR` with nothing pending.
pub const NO_REQUESTS: &str = "No pending access requests.";
/// `ETIRW` committed.
pub const WRITTEN: &str = "Write Successful!";
/// `VIEW` found nothing.
pub const NO_FILES: &str = "No files found.";
/// A storage server connection broke in the middle of a STREAM.
pub const STREAM_BROKEN: &str = "Error: Connection closed unexpectedly";
/// The name server connection broke while a command was in flight.
pub const LOST_NM: &str = "ERROR [UNAVAILABLE]: lost connection to the name server";

/// Copies a change should have in a pair (primary and backup).
pub const PAIR_COPIES: u32 = 2;

/// A success line with the sync-mode copy count appended when the change reached fewer than
/// all copies: `File Created Successfully! (1 of 2 copies)`. `None` prints the line as is.
pub fn with_copies(line: &str, copies: Option<(u32, u32)>) -> String {
    match copies {
        Some((c, total)) => format!("{line} ({c} of {total} copies)"),
        None => line.to_string(),
    }
}

/// `CHECKPOINT` succeeded.
pub fn checkpoint_created(tag: &str) -> String {
    format!("Checkpoint '{tag}' created successfully!")
}

/// `REVERT` succeeded.
pub fn reverted(tag: &str) -> String {
    format!("Reverted to checkpoint '{tag}' successfully!")
}

/// `RACC` succeeded.
pub fn request_created(id: u64) -> String {
    format!("Access request created with ID #{id}")
}

/// `APPROVEACCR` (`approved`) or `DISACCR` succeeded.
pub fn request_answered(id: u64, approved: bool) -> String {
    if approved {
        format!("Access request #{id} approved; access granted successfully!")
    } else {
        format!("Access request #{id} denied.")
    }
}

/// VIEWFOLDER: `[DIR] name` for each folder, then `--> name` for each file, or `(empty)`.
pub fn folder(entries: &[FolderEntry]) -> String {
    if entries.is_empty() {
        return format!("{EMPTY_FOLDER}\n");
    }
    entries
        .iter()
        .map(|e| {
            if e.dir {
                format!("[DIR] {}\n", e.name)
            } else {
                format!("--> {}\n", e.name)
            }
        })
        .collect()
}

/// LISTCHECKPOINTS: a bordered table of Tag, Creator, Created, Size (bytes), oldest first.
pub fn checkpoints(list: &[CheckpointInfo]) -> String {
    if list.is_empty() {
        return format!("{NO_CHECKPOINTS}\n");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.tag.clone(),
                c.creator.clone(),
                time(c.created_ms),
                c.size.to_string(),
            ]
        })
        .collect();
    bordered(
        &["Tag", "Creator", "Created", "Size"],
        &[false, false, false, true],
        &rows,
    )
}

/// VIEWACCR: a bordered table of ID, Requester, File, Type, Date, by id.
pub fn requests(list: &[AccessRequest]) -> String {
    if list.is_empty() {
        return format!("{NO_REQUESTS}\n");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.id),
                r.user.clone(),
                r.file.clone(),
                r.kind.as_str().to_string(),
                time(r.created_ms),
            ]
        })
        .collect();
    bordered(
        &["ID", "Requester", "File", "Type", "Date"],
        &[false, false, false, false, false],
        &rows,
    )
}

/// `UPLOAD` succeeded with `bytes` bytes.
pub fn uploaded(bytes: u64) -> String {
    format!("Upload Successful! ({bytes} bytes)")
}

/// `RECOVER ss` was accepted: `queued` transfers are owed to `ss`.
pub fn recover_queued(ss: &str, queued: u64) -> String {
    format!("Recovery of {ss} started: {queued} transfer(s) queued")
}

/// `DOWNLOAD` succeeded with `bytes` bytes.
pub fn downloaded(bytes: u64) -> String {
    format!("Download Successful! ({bytes} bytes)")
}

/// One copy in an FSCK line: `ss1 ok (1.4)`, `ss1_backup stale (1.3 < 1.4)`, `ss2 missing`,
/// `ss1 corrupt (1.4: checksum … on disk, … recorded)`, `ss1_backup diverged (1.5: …)`,
/// `ss1 down`, `ss1 quarantined (1.5)`.
pub fn fsck_copy(c: &CopyReport) -> String {
    let word = c.state.word();
    let ver = c.version.map(|v| v.to_string());
    let detail = match (c.state, ver, c.expected, &c.detail) {
        (CopyState::Stale, Some(v), Some(e), _) => Some(format!("{v} < {e}")),
        (_, Some(v), _, Some(d)) => Some(format!("{v}: {d}")),
        (_, None, _, Some(d)) => Some(d.clone()),
        (CopyState::Missing, None, Some(e), None) => Some(format!("need {e}")),
        (_, Some(v), _, None) => Some(v),
        _ => None,
    };
    match detail {
        Some(d) => format!("{} {word} ({d})", c.ss),
        None => format!("{} {word}", c.ss),
    }
}

/// One FSCK line: `a.txt: ss1 ok (1.4), ss1_backup stale (1.3 < 1.4)`; a quarantined copy of
/// a file with no record says so: `gone.txt (no record): ss1 quarantined (1.2)`.
pub fn fsck_line(f: &FsckFile) -> String {
    let copies: Vec<String> = f.copies.iter().map(fsck_copy).collect();
    let tag = if f.recorded { "" } else { " (no record)" };
    format!("{}{tag}: {}", f.file, copies.join(", "))
}

/// Counts of an FSCK run, accumulated page by page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsckTally {
    /// Files with a record that were checked.
    pub files: u64,
    /// Copies per state, in [`FSCK_STATES`] order.
    pub counts: [u64; 7],
}

/// The states in the order the summary lists them.
pub const FSCK_STATES: [CopyState; 7] = [
    CopyState::Ok,
    CopyState::Stale,
    CopyState::Missing,
    CopyState::Corrupt,
    CopyState::Diverged,
    CopyState::Down,
    CopyState::Quarantined,
];

impl FsckTally {
    /// Counts one line.
    pub fn add(&mut self, f: &FsckFile) {
        self.files += u64::from(f.recorded);
        for c in &f.copies {
            if let Some(i) = FSCK_STATES.iter().position(|s| *s == c.state) {
                self.counts[i] += 1;
            }
        }
    }

    /// Counts quarantined copies that were not listed.
    pub fn add_quarantined(&mut self, n: u64) {
        self.counts[6] += n;
    }

    /// Whether any copy makes FSCK fail (missing, stale, corrupt, diverged or quarantined).
    pub fn failed(&self) -> bool {
        FSCK_STATES
            .iter()
            .zip(self.counts)
            .any(|(s, n)| s.fails() && n > 0)
    }

    /// The summary line: `FSCK: 2 files: 3 ok, 1 stale, 0 missing, 0 corrupt, 0 diverged,
    /// 0 down, 0 quarantined`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = FSCK_STATES
            .iter()
            .zip(self.counts)
            .map(|(s, n)| format!("{n} {}", s.word()))
            .collect();
        let plural = if self.files == 1 { "" } else { "s" };
        format!("FSCK: {} file{plural}: {}", self.files, parts.join(", "))
    }
}

/// The line for quarantined copies an FSCK page could not list.
pub fn fsck_unlisted(n: u64) -> String {
    format!("(and {n} more quarantined copies not listed)")
}

/// Everything STATUS shows, as the name server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView<'a> {
    /// Every storage server.
    pub servers: &'a [ServerStatus],
    /// Every pair and unpaired primary.
    pub pairs: &'a [PairStatus],
    /// Replication jobs not yet done.
    pub queue_depth: u64,
    /// Jobs out of attempts (the first ones, when there are many).
    pub failed: &'a [FailedJob],
    /// How many jobs are out of attempts in all (an older name server sends 0: then
    /// `failed` is all of them).
    pub failed_total: u64,
    /// `async` or `sync`.
    pub replication: &'a str,
}

/// STATUS's output, three short sections; `now_ms` turns heartbeat times into ages:
///
/// ```text
/// Storage servers:
///   ss1         UP    primary   3 files  heartbeat 1s ago
///   ss1_backup  DOWN  backup    3 files  heartbeat 42s ago
///   ss2         UP    unpaired  0 files  heartbeat never
/// Pairs:
///   ss1 -> ss1_backup  BACKUP_DOWN  epoch 1  writer ss1  lag 2 jobs, 8192 bytes, 41.5 s
///   ss2 (unpaired: 1 copy)  epoch 1
/// Replication: async, queue depth 2
/// Failed jobs:
///   a.txt -> ss1_backup  5 attempts  connection refused
/// ```
///
/// Columns are padded to their widest cell and separated by two spaces. With no failed job the
/// last section is the single line `Failed jobs: none`; an empty list of servers or pairs shows
/// `  (none)`. A primary without a backup says `(unpaired: 1 copy)` instead of a state and lag.
pub fn status(v: &StatusView<'_>, now_ms: u64) -> String {
    let mut out = String::from("Storage servers:\n");
    let servers: Vec<Vec<String>> = v
        .servers
        .iter()
        .map(|s| {
            let heartbeat = match s.last_heartbeat_ms {
                Some(ms) => format!("heartbeat {}s ago", now_ms.saturating_sub(ms) / 1000),
                None => "heartbeat never".to_string(),
            };
            vec![
                s.name.clone(),
                if s.up { "UP" } else { "DOWN" }.to_string(),
                s.role.clone(),
                format!("{} files", s.files),
                heartbeat,
            ]
        })
        .collect();
    out.push_str(&columns(&servers));
    out.push_str("Pairs:\n");
    let (paired, unpaired): (Vec<&PairStatus>, Vec<&PairStatus>) =
        v.pairs.iter().partition(|p| p.backup.is_some());
    let rows: Vec<Vec<String>> = paired
        .iter()
        .map(|p| {
            let mut row = vec![
                format!("{} -> {}", p.primary, p.backup.as_deref().unwrap_or("")),
                p.state.clone(),
                format!("epoch {}", p.epoch),
                format!("writer {}", p.writer.as_deref().unwrap_or(&p.primary)),
                format!(
                    "lag {} jobs, {} bytes, {:.1} s",
                    p.lag_jobs,
                    p.lag_bytes,
                    p.lag_ms as f64 / 1000.0
                ),
            ];
            if p.sync_total > 0 {
                row.push(format!("sync {}/{}", p.sync_done, p.sync_total));
            }
            row
        })
        .collect();
    if v.pairs.is_empty() || !rows.is_empty() {
        out.push_str(&columns(&rows));
    }
    for p in unpaired {
        out.push_str(&format!(
            "  {} (unpaired: 1 copy)  epoch {}\n",
            p.primary, p.epoch
        ));
    }
    out.push_str(&format!(
        "Replication: {}, queue depth {}\n",
        v.replication, v.queue_depth
    ));
    if v.failed.is_empty() {
        out.push_str("Failed jobs: none\n");
    } else {
        let total = v.failed_total.max(v.failed.len() as u64);
        if total > v.failed.len() as u64 {
            out.push_str(&format!(
                "Failed jobs: {total} in all, the first {} listed:\n",
                v.failed.len()
            ));
        } else {
            out.push_str("Failed jobs:\n");
        }
        let rows: Vec<Vec<String>> = v
            .failed
            .iter()
            .map(|j| {
                vec![
                    format!("{} -> {}", j.file, j.target),
                    format!("{} attempts", j.attempts),
                    j.error.clone(),
                ]
            })
            .collect();
        out.push_str(&columns(&rows));
    }
    out
}

/// Rows indented by two spaces, each column padded to its widest cell (in characters) and
/// separated by two spaces; the last column is not padded, so no line ends in blanks.
/// No rows gives `  (none)`.
fn columns(rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "  (none)\n".to_string();
    }
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from(" ");
        for (i, cell) in r.iter().enumerate() {
            line.push(' ');
            if i + 1 < r.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 1));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The note after `ADDACCESS` for a grantee the cluster has never seen.
pub fn new_user_note(user: &str) -> String {
    format!(
        "Note: user '{}' has not connected yet; the grant applies when they do.",
        crate::names::show(user)
    )
}

/// A Unix-milliseconds time as `2026-11-22 10:00:00 UTC`.
pub fn time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    // RFC 3339 gives `2026-11-22T10:00:00Z`; users read the spaced form.
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `<time> by <user>`, or `never` when nobody accessed the file yet.
pub fn last_access(ms: Option<u64>, by: Option<&str>) -> String {
    match (ms, by) {
        (Some(ms), Some(user)) => format!("{} by {user}", time(ms)),
        (Some(ms), None) => time(ms),
        (None, _) => "never".to_string(),
    }
}

/// The lines INFO prints, each ending with a newline.
pub fn info(i: &FileInfo) -> String {
    let access: Vec<String> = i
        .access
        .iter()
        .map(|a| format!("{} ({})", a.user, if a.write { "RW" } else { "R" }))
        .collect();
    let replicas: Vec<String> = i
        .replicas
        .iter()
        .map(|r| format!("{} ({})", r.ss, r.state))
        .collect();
    let mut out = String::new();
    out.push_str(&format!("File: {}\n", i.file));
    out.push_str(&format!("Owner: {}\n", i.owner));
    out.push_str(&format!("Created: {}\n", time(i.created_ms)));
    out.push_str(&format!("Last Modified: {}\n", time(i.modified_ms)));
    out.push_str(&format!("Size: {} bytes\n", i.size));
    out.push_str(&format!("Words: {}\n", i.words));
    out.push_str(&format!("Characters: {}\n", i.chars));
    out.push_str(&format!("Access: {}\n", access.join(", ")));
    out.push_str(&format!(
        "Last Accessed: {}\n",
        last_access(i.accessed_ms, i.accessed_by.as_deref())
    ));
    out.push_str(&format!("Version: {}\n", i.version));
    out.push_str(&format!("Replicas: {}\n", replicas.join(", ")));
    out
}

/// One `--> name` line per entry (VIEW's files, LIST's users).
pub fn arrows<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("--> {n}\n"))
        .collect::<String>()
}

/// VIEW's output: `--> name` lines, the long table, or `No files found.`.
pub fn view(files: &[FileSummary], long: bool) -> String {
    if files.is_empty() {
        format!("{NO_FILES}\n")
    } else if long {
        view_long(files)
    } else {
        arrows(files.iter().map(|f| f.file.as_str()))
    }
}

/// `VIEW -l`: a table bordered with `+`, `-` and `|`, one header row and one row per file:
///
/// ```text
/// +----------+-------+-------+--------------------------------+-------+
/// | Filename | Words | Chars | Last Access                    | Owner |
/// +----------+-------+-------+--------------------------------+-------+
/// | a.txt    |     3 |    14 | 2026-11-22 10:00:00 UTC by bob | alice |
/// | b.txt    |     0 |     0 | never                          | bob   |
/// +----------+-------+-------+--------------------------------+-------+
/// ```
///
/// Each column is as wide as its widest cell (in characters), with one space of padding on
/// each side; text is left-aligned and the counts are right-aligned.
pub fn view_long(files: &[FileSummary]) -> String {
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.file.clone(),
                f.words.to_string(),
                f.chars.to_string(),
                last_access(f.accessed_ms, f.accessed_by.as_deref()),
                f.owner.clone(),
            ]
        })
        .collect();
    bordered(
        &["Filename", "Words", "Chars", "Last Access", "Owner"],
        &[false, true, true, false, false],
        &rows,
    )
}

/// A table bordered with `+`, `-` and `|` (see [`view_long`]); `right` says which columns
/// are right-aligned. Every row has as many cells as `header`.
fn bordered(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&format!("| {pad}{cell} "));
            } else {
                s.push_str(&format!("| {cell}{pad} "));
            }
        }
        s + "|\n"
    };
    let mut out = border.clone();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    out.push_str(&line(&header));
    out.push_str(&border);
    for row in rows {
        out.push_str(&line(row));
    }
    out.push_str(&border);
    out
}

/// EXEC's output: the bytes as they are, plus a newline only when missing and non-empty.
pub fn exec_output(output: &[u8]) -> Vec<u8> {
    let mut out = output.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// HELP: every command with a one-line description.
pub fn help() -> String {
    const LINES: &[(&str, &str)] = &[
        (
            "CREATE <file>",
            "create an empty file; you become its owner",
        ),
        ("READ <file>", "print a file's content"),
        (
            "WRITE <file> <sentence_index>",
            "edit one sentence: lines '<word_index> <text>', then ETIRW to commit",
        ),
        ("UNDO <file>", "restore the content before the last change"),
        ("DELETE <file>", "delete a file you own"),
        (
            "INFO <file>",
            "show a file's details, access list and copies",
        ),
        (
            "VIEW [-a] [-l]",
            "list files you can access (-a: all files, -l: details)",
        ),
        ("STREAM <file>", "print a file word by word"),
        ("LIST", "list every user"),
        (
            "ADDACCESS -R|-W <file> <user>",
            "grant read (-R) or read and write (-W)",
        ),
        ("REMACCESS <file> <user>", "remove a user's access"),
        (
            "EXEC <file>",
            "run a file as a shell script on the name server",
        ),
        ("CREATEFOLDER /p", "create a folder (its parent must exist)"),
        (
            "MOVE <file> /p",
            "move a file into a folder (/ is the root)",
        ),
        ("VIEWFOLDER /p", "list a folder's folders and files"),
        (
            "CHECKPOINT <file> <tag>",
            "save the current content as a named checkpoint",
        ),
        (
            "VIEWCHECKPOINT <file> <tag>",
            "print a checkpoint's content",
        ),
        (
            "REVERT <file> <tag>",
            "restore a checkpoint's content (undoable)",
        ),
        ("LISTCHECKPOINTS <file>", "list a file's checkpoints"),
        (
            "RACC <file> R|W|RW",
            "ask the owner for access (alias REQUESTACCESS)",
        ),
        (
            "VIEWACCR",
            "list pending requests on your files (VIEWACCESSREQUESTS)",
        ),
        (
            "APPROVEACCR <id> / DISACCR <id>",
            "grant or refuse a request",
        ),
        (
            "UPLOAD <local_path> <file>",
            "replace (or create) a file with a local file's bytes",
        ),
        (
            "DOWNLOAD <file> <local_path>",
            "save a file's bytes to a local file",
        ),
        (
            "STATUS",
            "show servers, pairs, replication lag and failed jobs",
        ),
        (
            "RECOVER <ss>",
            "start a recovery sync of a storage server now",
        ),
        (
            "FSCK [<file>]",
            "check every copy's version and checksum (exit 1 on a bad copy)",
        ),
        ("HELP", "show this list"),
        ("EXIT", "leave the client"),
    ];
    let width = LINES.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    LINES
        .iter()
        .map(|(c, d)| format!("{c:width$}  {d}\n"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use crate::protocol::{AccessEntry, ReplicaInfo, Version};

    // 2026-11-22 10:00:00 UTC.
    const T: u64 = 1_795_341_600_000;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(time(T), "2026-11-22 10:00:00 UTC");
        assert_eq!(time(T + 999), "2026-11-22 10:00:00 UTC");
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn info_lines() {
        let i = FileInfo {
            file: "a.txt".into(),
            owner: "alice".into(),
            created_ms: T,
            modified_ms: T + 60_000,
            size: 14,
            words: 3,
            chars: 14,
            access: vec![
                AccessEntry {
                    user: "alice".into(),
                    write: true,
                },
                AccessEntry {
                    user: "bob".into(),
                    write: false,
                },
            ],
            accessed_ms: Some(T + 120_000),
            accessed_by: Some("bob".into()),
            version: Version {
                epoch: 1,
                counter: 4,
            },
            checksum: 7,
            replicas: vec![
                ReplicaInfo {
                    ss: "ss1".into(),
                    state: "current".into(),
                },
                ReplicaInfo {
                    ss: "ss1_backup".into(),
                    state: "stale".into(),
                },
            ],
        };
        assert_eq!(
            info(&i),
            "File: a.txt\n\
             Owner: alice\n\
             Created: 2026-11-22 10:00:00 UTC\n\
             Last Modified: 2026-11-22 10:01:00 UTC\n\
             Size: 14 bytes\n\
             Words: 3\n\
             Characters: 14\n\
             Access: alice (RW), bob (R)\n\
             Last Accessed: 2026-11-22 10:02:00 UTC by bob\n\
             Version: 1.4\n\
             Replicas: ss1 (current), ss1_backup (stale)\n"
        );
        let never = FileInfo {
            accessed_ms: None,
            accessed_by: None,
            ..i
        };
        assert!(info(&never).contains("\nLast Accessed: never\n"));
    }

    fn summary(file: &str, owner: &str, words: u64, chars: u64, acc: Option<u64>) -> FileSummary {
        FileSummary {
            file: file.into(),
            owner: owner.into(),
            words,
            chars,
            accessed_ms: acc,
            accessed_by: acc.map(|_| "bob".to_string()),
        }
    }

    #[test]
    fn view_short_and_empty() {
        let files = vec![
            summary("a.txt", "alice", 3, 14, None),
            summary("/d/b.txt", "bob", 0, 0, None),
        ];
        assert_eq!(view(&files, false), "--> a.txt\n--> /d/b.txt\n");
        assert_eq!(view(&[], false), "No files found.\n");
        assert_eq!(view(&[], true), "No files found.\n");
    }

    #[test]
    fn view_long_table() {
        let files = vec![
            summary("a.txt", "alice", 3, 14, Some(T)),
            summary("b.txt", "bob", 0, 0, None),
        ];
        assert_eq!(
            view(&files, true),
            "+----------+-------+-------+--------------------------------+-------+\n\
             | Filename | Words | Chars | Last Access                    | Owner |\n\
             +----------+-------+-------+--------------------------------+-------+\n\
             | a.txt    |     3 |    14 | 2026-11-22 10:00:00 UTC by bob | alice |\n\
             | b.txt    |     0 |     0 | never                          | bob   |\n\
             +----------+-------+-------+--------------------------------+-------+\n"
        );
    }

    #[test]
    fn view_long_widens_for_long_names_and_counts() {
        let files = vec![summary("a-rather-long-name.txt", "al", 1234567, 0, None)];
        let t = view_long(&files);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[3].starts_with("| a-rather-long-name.txt | 1234567 |"));
    }

    #[test]
    fn exec_output_gets_a_final_newline_only_when_missing() {
        assert_eq!(exec_output(b"hi"), b"hi\n");
        assert_eq!(exec_output(b"hi\n"), b"hi\n");
        assert_eq!(exec_output(b""), b"");
    }

    fn server(name: &str, up: bool, role: &str, files: u64, hb: Option<u64>) -> ServerStatus {
        ServerStatus {
            name: name.into(),
            addr: "127.0.0.1:6001".into(),
            up,
            role: role.into(),
            files,
            last_heartbeat_ms: hb,
        }
    }

    fn pair(primary: &str, backup: Option<&str>, state: &str, lag: (u64, u64, u64)) -> PairStatus {
        PairStatus {
            primary: primary.into(),
            backup: backup.map(str::to_string),
            state: state.into(),
            epoch: 1,
            lag_jobs: lag.0,
            lag_bytes: lag.1,
            lag_ms: lag.2,
            writer: None,
            sync_done: 0,
            sync_total: 0,
        }
    }

    #[test]
    fn status_shows_servers_pairs_and_failed_jobs() {
        let servers = [
            server("ss1", true, "primary", 3, Some(T - 1_200)),
            server("ss1_backup", false, "backup", 3, Some(T - 42_000)),
            server("ss2", true, "unpaired", 0, None),
        ];
        let pairs = [
            pair("ss1", Some("ss1_backup"), "BACKUP_DOWN", (2, 8192, 41_500)),
            pair("ss2", None, "UNPAIRED", (0, 0, 0)),
        ];
        let failed = [FailedJob {
            file: "a.txt".into(),
            target: "ss1_backup".into(),
            attempts: 5,
            error: "connection refused".into(),
        }];
        let v = StatusView {
            servers: &servers,
            pairs: &pairs,
            queue_depth: 2,
            failed: &failed,
            failed_total: 1,
            replication: "async",
        };
        assert_eq!(
            status(&v, T),
            "Storage servers:\n\
             \x20 ss1         UP    primary   3 files  heartbeat 1s ago\n\
             \x20 ss1_backup  DOWN  backup    3 files  heartbeat 42s ago\n\
             \x20 ss2         UP    unpaired  0 files  heartbeat never\n\
             Pairs:\n\
             \x20 ss1 -> ss1_backup  BACKUP_DOWN  epoch 1  writer ss1  lag 2 jobs, 8192 bytes, 41.5 s\n\
             \x20 ss2 (unpaired: 1 copy)  epoch 1\n\
             Replication: async, queue depth 2\n\
             Failed jobs:\n\
             \x20 a.txt -> ss1_backup  5 attempts  connection refused\n"
        );
    }

    #[test]
    fn status_says_when_it_lists_only_the_first_failed_jobs() {
        let failed = [FailedJob {
            file: "a.txt".into(),
            target: "ss1_backup".into(),
            attempts: 5,
            error: "no space left on device".into(),
        }];
        let v = StatusView {
            servers: &[],
            pairs: &[],
            queue_depth: 0,
            failed: &failed,
            failed_total: 3000,
            replication: "async",
        };
        assert!(status(&v, T).ends_with(
            "Failed jobs: 3000 in all, the first 1 listed:\n\
             \x20 a.txt -> ss1_backup  5 attempts  no space left on device\n"
        ));
    }

    #[test]
    fn status_of_an_empty_cluster() {
        let v = StatusView {
            servers: &[],
            pairs: &[],
            queue_depth: 0,
            failed: &[],
            failed_total: 0,
            replication: "sync",
        };
        assert_eq!(
            status(&v, T),
            "Storage servers:\n  (none)\nPairs:\n  (none)\n\
             Replication: sync, queue depth 0\nFailed jobs: none\n"
        );
    }

    #[test]
    fn only_unpaired_primaries() {
        let servers = [server("ss1", true, "unpaired", 1, Some(T))];
        let pairs = [pair("ss1", None, "UNPAIRED", (0, 0, 0))];
        let v = StatusView {
            servers: &servers,
            pairs: &pairs,
            queue_depth: 0,
            failed: &[],
            failed_total: 0,
            replication: "async",
        };
        assert_eq!(
            status(&v, T),
            "Storage servers:\n  ss1  UP  unpaired  1 files  heartbeat 0s ago\n\
             Pairs:\n  ss1 (unpaired: 1 copy)  epoch 1\n\
             Replication: async, queue depth 0\nFailed jobs: none\n"
        );
    }

    #[test]
    fn sync_mode_copy_counts_and_transfer_lines() {
        assert_eq!(with_copies(CREATED, None), "File Created Successfully!");
        assert_eq!(
            with_copies(CREATED, Some((1, 2))),
            "File Created Successfully! (1 of 2 copies)"
        );
        assert_eq!(
            with_copies(&uploaded(5), Some((1, 2))),
            "Upload Successful! (5 bytes) (1 of 2 copies)"
        );
        assert_eq!(downloaded(0), "Download Successful! (0 bytes)");
    }

    #[test]
    fn help_lists_every_command() {
        let h = help();
        for w in [
            "CREATE",
            "READ",
            "WRITE",
            "UNDO",
            "DELETE",
            "INFO",
            "VIEW",
            "STREAM",
            "LIST",
            "ADDACCESS",
            "REMACCESS",
            "EXEC",
            "HELP",
            "EXIT",
            "STATUS",
            "UPLOAD",
            "DOWNLOAD",
            "RECOVER",
            "FSCK",
        ] {
            assert!(h.lines().any(|l| l.starts_with(w)), "{w}");
        }
    }

    #[test]
    fn fsck_lines_and_summary() {
        use crate::protocol::Version;
        let v = |epoch, counter| Some(Version { epoch, counter });
        let copy = |ss: &str, state, version, expected, detail: Option<&str>| CopyReport {
            ss: ss.into(),
            state,
            version,
            expected,
            detail: detail.map(str::to_string),
        };
        let f = FsckFile {
            file: "a.txt".into(),
            recorded: true,
            copies: vec![
                copy("ss1", CopyState::Ok, v(1, 4), v(1, 4), None),
                copy("ss1_backup", CopyState::Stale, v(1, 3), v(1, 4), None),
            ],
        };
        assert_eq!(
            fsck_line(&f),
            "a.txt: ss1 ok (1.4), ss1_backup stale (1.3 < 1.4)"
        );
        let g = FsckFile {
            file: "/d/b".into(),
            recorded: true,
            copies: vec![
                copy(
                    "ss2",
                    CopyState::Corrupt,
                    v(1, 2),
                    v(1, 2),
                    Some("checksum 1 on disk, 2 recorded"),
                ),
                copy("ss2_backup", CopyState::Missing, None, v(1, 2), None),
                copy("ss3", CopyState::Down, None, v(1, 2), None),
                copy("ss2", CopyState::Quarantined, v(1, 5), None, None),
            ],
        };
        assert_eq!(
            fsck_line(&g),
            "/d/b: ss2 corrupt (1.2: checksum 1 on disk, 2 recorded), ss2_backup missing (need 1.2), \
             ss3 down, ss2 quarantined (1.5)"
        );
        let h = FsckFile {
            file: "gone".into(),
            recorded: false,
            copies: vec![copy("ss1", CopyState::Quarantined, v(2, 1), None, None)],
        };
        assert_eq!(fsck_line(&h), "gone (no record): ss1 quarantined (2.1)");
        let mut t = FsckTally::default();
        t.add(&f);
        assert!(t.failed());
        t.add(&h);
        assert_eq!(
            t.summary(),
            "FSCK: 1 file: 1 ok, 1 stale, 0 missing, 0 corrupt, 0 diverged, 0 down, 1 quarantined"
        );
        let mut ok = FsckTally::default();
        ok.add(&FsckFile {
            file: "x".into(),
            recorded: true,
            copies: vec![
                copy("ss1", CopyState::Ok, v(1, 1), v(1, 1), None),
                copy(
                    "ss1_backup",
                    CopyState::Down,
                    None,
                    v(1, 1),
                    Some("refused"),
                ),
            ],
        });
        assert!(!ok.failed(), "a down copy alone does not fail FSCK");
        ok.add_quarantined(2);
        assert!(ok.failed());
        assert_eq!(
            fsck_unlisted(2),
            "(and 2 more quarantined copies not listed)"
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            new_user_note("bob"),
            "Note: user 'bob' has not connected yet; the grant applies when they do."
        );
        assert_eq!(arrows(["alice", "bob"]), "--> alice\n--> bob\n");
    }
}
