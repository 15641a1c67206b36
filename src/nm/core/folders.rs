//! Folders and MOVE: decisions of the core (a child module of the core, so it shares the
//! core's state and stays free of I/O).
//!
//! Folders are entries of the namespace in their own durable table (`folders`, see
//! `store.rs`). Folder and file names share one canonical form, and both maps are ordered, so
//! listing a folder is a range scan over each map that skips whole subtrees: a key
//! `p/child/...` makes the scan jump to the first key after `p/child/`, which is `p/child0`
//! (`'0'` is the byte after `'/'`). No listing ever visits every file.
//!
//! Every storage server, backups too, holds every folder as a directory under `files/`: a new
//! folder is pushed at once to the servers that are up (SS_MKDIR), and each registration
//! pushes the whole folder list, so a server that was down, or a backup that joins, catches
//! up. No reply waits for these calls (the folder is durable in the index first); a file's
//! directory is also made when a file is placed, installed or moved there.
//!
//! CREATEFOLDER: the folder must not exist (as a folder or a file) and its parent must (the
//! root always does); it is recorded in the `folders` table and the reply waits for that
//! commit. The push to storage servers is SS_MKDIR with a ticket of op `mkdir` over a digest
//! of the folder list; each registration pushes the whole list, parents first. The index is
//! the authority, the directories follow it. A file adopted from a storage server brings its
//! missing folders with it (owned by the file's owner), so every file's parent folder exists.
//! Folders and files are both keyed by canonical name, so a folder's children are the keys
//! starting with `p/`, and VIEWFOLDER touches one key per direct child, never every file.
//!
//! # MOVE
//!
//! MOVE f /p checks write access, that `/p` exists, and that the new name is free of files
//! and folders (`/p` and `/p/` are one folder; moving into the folder the file is in is
//! refused), reserves both names (a CREATE of the new name waits), and a worker sends SS_MOVE
//! (ticket op `move`, minted for `old\tnew`, a string no file can be named). The storage
//! server, holding both files' locks and refusing with LOCKED while a write session is open,
//! links history entries and checkpoints under the new name, writes the record, renames the
//! content (the atomic step), then removes the old record and links (`ss/store/moves.rs` has
//! the crash analysis). The record moves with owner, access, version and timestamps; pending
//! access requests follow it; the other member is owed a removal of the old name and the
//! whole file under the new one.
//!
//! Before SS_MOVE is sent the name server makes a move intent durable (`moves` table: old
//! name → new name, the server and epoch the ticket names, the record), and the batch that
//! moves the record, owes the backup its rows, or hears the refusal removes it; the event
//! loop holds such a job (`Effect::DurableJob`) until its batch is committed.
//!
//! # A MOVE survives a name-server crash
//!
//! A name server that dies in between keeps both names reserved after its restart and
//! settles the move when that server registers (`Core::resolve_moves`), before its file list
//! is reconciled. The move is credited only when that server lists the new name and not the
//! old, at the record's version and checksum (or a later version: a write it committed
//! before the move), with the record still there and no other record under the new name:
//! then it completes as on success (record with owner, access and pending requests moved, a
//! removal row for the old name and a content row for the new one owed to the backup).
//! Otherwise the intent is dropped and the copies are reconciled as any others:
//!
//! * the old name only: the move did not happen (the client's MOVE died with the name server
//!   and got no answer; it may be repeated);
//! * both (a hand-made copy: the storage server's scan removes a half-made move): the record
//!   stays under the old name and the other copy is an unknown file, so no content is lost
//!   and no record is guessed;
//! * neither: the record's copy is owed from the other member as for any missing file.
//!
//! When the pair takes a new epoch before that server is back (a failover), the intent is
//! dropped then (`forget_moves_before`): a rename in the old epoch is never credited (a
//! fenced result), the new writer serves the old name, and that server's copies of both
//! names are set aside and repaired as for any change of an ended epoch (`set_aside_on`),
//! when the other member holds the record's version to repair them from; else they are left
//! to reconciliation, as the fence leaves a copy that may be the only one descending from the
//! record. Until it is settled both names stay reserved as during a running move: CREATE of
//! the new name and other serialised operations on either name wait.
//!
//! An answer lost without a crash (the call timed out or its connection failed after the
//! request went out) is handled the same way: the worker sends SS_MOVE again with a fresh
//! ticket, up to 3 times (0.3, 0.6, 0.9 s apart). A repeat (only a repeat) carries the
//! recorded version, and a server that holds no old name and the new one at exactly that
//! version answers DONE (it made the move already; the repeat takes both file locks, so it
//! waits for a first call still running, and it needs the lease as any change does). The
//! repeat's ticket copies the first ticket's server and epoch. A refusal of a repeat says
//! nothing of what the first call did, so it counts as no answer and the next repeat is
//! tried. If no repeat is answered with DONE, the client hears UNAVAILABLE ("may or may not
//! have been made") and the intent stays, settled as above when the server registers again
//! or its pair takes a new epoch (at once, if that epoch has come already); until then the
//! names stay reserved (a server that stays registered but cannot be called holds them that
//! long). A refusal (any ERR) of the first call or a failed connect means nothing was renamed
//! and drops the intent at once.
//!
//! Test hooks: `PAIRFS_FAULT_NM=exit-before-ss-move` / `exit-after-ss-move` makes `bin_nm`
//! exit around the call; `cut-after-ss-move-sent` closes the first SS_MOVE's connection as
//! soon as it is sent.

use super::*;
use std::ops::Bound;

/// The last components of the keys of `map` directly under `prefix` (`""` or `"p/"`), in
/// order: one range scan that jumps over every deeper subtree.
fn children<V>(map: &BTreeMap<String, V>, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = prefix.to_string();
    loop {
        let mut jump = None;
        let range = map.range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded));
        for (k, _) in range {
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            match rest.split_once('/') {
                None => out.push(rest.to_string()),
                Some((child, _)) => {
                    jump = Some(format!("{prefix}{child}0"));
                    break;
                }
            }
        }
        match jump {
            Some(j) => start = j,
            None => return out,
        }
    }
}

fn shown_folder(canon: &str) -> String {
    format!("/{canon}")
}

impl Core {
    /// Whether the canonical folder exists ("" is the root, which always does).
    pub(super) fn folder_exists(&self, folder: &str) -> bool {
        folder.is_empty() || self.ns.folders.contains_key(folder)
    }

    /// A new file may take `canon` only if its folder exists and no folder has that name.
    pub(super) fn check_new_file_name(&self, canon: &str) -> Result<(), WireError> {
        let folder = names::parent(canon);
        if !self.folder_exists(folder) {
            return Err(err::not_found(format!(
                "Folder not found: {} (create it with CREATEFOLDER first)",
                shown_folder(folder)
            )));
        }
        if self.ns.folders.contains_key(canon) {
            return Err(err::conflict(format!(
                "{} is a folder",
                shown_folder(canon)
            )));
        }
        Ok(())
    }

    /// CREATEFOLDER: the parent must exist; the name must be free of files and folders.
    pub(super) fn create_folder(&mut self, user: &str, folder: &str) -> Result<(), WireError> {
        let canon = names::canonical_folder(folder)?;
        if canon.is_empty() {
            return Err(err::conflict("Folder already exists: / (the root)"));
        }
        if self.ns.folders.contains_key(&canon) {
            return Err(err::conflict(format!(
                "Folder already exists: {}",
                shown_folder(&canon)
            )));
        }
        if self.ns.files.contains_key(&canon) {
            return Err(err::conflict(format!(
                "a file named {} exists",
                names::display(&canon)
            )));
        }
        if self.ops.is_busy(&canon) {
            // A CREATE or MOVE to that name is in flight.
            return Err(err::locked(format!(
                "another operation on {} is in progress; try again",
                names::display(&canon)
            )));
        }
        let parent = names::parent(&canon);
        if !self.folder_exists(parent) {
            return Err(err::not_found(format!(
                "Parent folder not found: {} (create it first)",
                shown_folder(parent)
            )));
        }
        self.put_folder(&canon, user);
        let up: Vec<String> = self
            .reg
            .servers()
            .filter(|(_, s)| s.up)
            .map(|(n, _)| n.clone())
            .collect();
        for ss in up {
            self.push_folders(&ss, vec![canon.clone()]);
        }
        Ok(())
    }

    /// Sends `folders` (parents first) to storage server `ss` in SS_MKDIR calls of bounded
    /// size, on the worker pool.
    pub(super) fn push_folders(&mut self, ss: &str, folders: Vec<String>) {
        let Some(addr) = self.reg.live_server(ss).map(|s| s.rec.addr()) else {
            return;
        };
        for part in frame::paginate(folders, |f| 2 * f.len() + 4) {
            let subject = names::mkdir_subject(&part);
            let ticket = self.mint(NM_USER, &subject, TicketOp::Mkdir, ss, None);
            let msg = Message::SsMkdir {
                folders: part,
                ticket,
            };
            self.new_job(
                JobKind::SsCall {
                    addr: addr.clone(),
                    msg,
                },
                InFlight {
                    conn: ConnId::MAX,
                    file: String::new(),
                    purpose: Purpose::Mkdir { ss: ss.to_string() },
                    serialised: false,
                    fence: None,
                },
            );
        }
    }

    /// A registering server gets every folder (the map is ordered, so parents come first).
    pub(super) fn push_all_folders(&mut self, ss: &str) {
        if !self.ns.folders.is_empty() {
            let all: Vec<String> = self.ns.folders.keys().cloned().collect();
            self.push_folders(ss, all);
        }
    }

    /// An SS_MKDIR call finished; a failure is logged (the next registration pushes again).
    pub(super) fn mkdir_done(ss: &str, result: Result<JobOutput, WireError>) {
        if let Err(e) = result {
            log::warn!(target: ev::NM_FILE_CHANGE, ss = ss;
                "folders not created on {ss}: {}", e.msg);
        }
    }

    fn put_folder(&mut self, canon: &str, owner: &str) {
        let rec = FolderRecord {
            owner: owner.to_string(),
            created_ms: self.wall_ms(),
        };
        self.batch
            .push(StoreOp::PutFolder(canon.to_string(), rec.clone()));
        self.ns.folders.insert(canon.to_string(), rec);
        log::info!(target: ev::NM_FILE_CHANGE, file = canon, user = owner;
            "created folder /{canon}");
    }

    /// Creates `folder` and every missing ancestor (for files adopted from a storage server).
    pub(super) fn ensure_folders(&mut self, folder: &str, owner: &str) {
        if self.folder_exists(folder) {
            return;
        }
        self.ensure_folders(names::parent(folder), owner);
        self.put_folder(folder, owner);
    }

    /// VIEWFOLDER: subfolders, then files, directly under the folder.
    pub(super) fn view_folder(&self, folder: &str) -> Result<Vec<FolderEntry>, WireError> {
        let canon = names::canonical_folder(folder)?;
        if !self.folder_exists(&canon) {
            return Err(err::not_found(format!(
                "Folder not found: {}",
                shown_folder(&canon)
            )));
        }
        let prefix = if canon.is_empty() {
            String::new()
        } else {
            format!("{canon}/")
        };
        let dirs = children(&self.ns.folders, &prefix)
            .into_iter()
            .map(|name| FolderEntry { name, dir: true });
        let files = children(&self.ns.files, &prefix)
            .into_iter()
            .map(|name| FolderEntry { name, dir: false });
        Ok(dirs.chain(files).collect())
    }

    /// MOVE f /p: write access, an existing destination folder, a free new name.
    pub(super) fn start_move(
        &mut self,
        canon: &str,
        p: &Pending,
        now_ms: u64,
    ) -> Result<(JobKind, Purpose), WireError> {
        let Message::Move { folder, .. } = &p.msg else {
            return Err(err::internal("not a MOVE"));
        };
        let rec = self.ns.files.get(canon).ok_or_else(|| not_found(canon))?;
        Self::need_write(rec, &p.user, canon)?;
        let dest = names::canonical_folder(folder)?;
        if !self.folder_exists(&dest) {
            return Err(err::not_found(format!(
                "Folder not found: {}",
                shown_folder(&dest)
            )));
        }
        let to = names::moved_name(canon, &dest);
        if to == canon {
            return Err(err::conflict(format!(
                "{} is already in {}",
                names::display(canon),
                shown_folder(&dest)
            )));
        }
        if self.ns.files.contains_key(&to) || self.ns.folders.contains_key(&to) {
            return Err(err::conflict(format!(
                "{} already exists",
                names::display(&to)
            )));
        }
        if self.ops.is_busy(&to) {
            return Err(err::locked(format!(
                "another operation on {} is in progress; try again",
                names::display(&to)
            )));
        }
        let (ss, addr, epoch) = self.writer_for(rec, canon, true)?;
        let record = rec.clone();
        self.refuse_if_removing(&ss, &to, now_ms)?;
        let subject = names::move_subject(canon, &to);
        let ticket = self.mint_change(NM_USER, &subject, TicketOp::Move, &ss, None, epoch);
        let msg = Message::SsMove {
            file: canon.to_string(),
            to: to.clone(),
            version: Some(record.version),
            ticket,
        };
        let intent = MoveIntent {
            to: to.clone(),
            ss,
            epoch,
            record,
        };
        self.batch
            .push(StoreOp::PutMove(canon.to_string(), intent.clone()));
        self.ns.moves.insert(canon.to_string(), intent);
        Ok((JobKind::SsCall { addr, msg }, Purpose::Move { to }))
    }

    /// Removes the intent of the MOVE of `from` (settled one way or the other).
    pub(super) fn drop_move_intent(&mut self, from: &str) {
        if self.ns.moves.remove(from).is_some() {
            self.batch.push(StoreOp::DelMove(from.to_string()));
        }
    }

    /// Settles the MOVEs an earlier run of the name server left unsettled whose SS_MOVE went
    /// to `ss`, which registers holding `list`. The move is credited only when `ss` holds the
    /// file under its new name alone, at the version and checksum of the record, the record
    /// is still there and no other record has the new name: then it completes as it would
    /// have (record, access, requests and the backup's rows). In every other case it is not
    /// credited and forgotten (its client never heard an answer), and the copies are what
    /// registration makes of them: old name only, the move did not happen; both names, the
    /// rename did not complete (the storage server's scan removes a half-made move); neither,
    /// the copy is owed from the other member as for any missing file; a pair that changed
    /// writers since, the rename is not credited (the fence of [`Core::fenced_result`]).
    /// Returns the names to release once the registration is done.
    pub(super) fn resolve_moves(
        &mut self,
        ss: &str,
        list: &[FileState],
        now_ms: u64,
    ) -> Vec<String> {
        let open: Vec<(String, MoveIntent)> = self
            .ns
            .moves
            .iter()
            .filter(|(from, m)| m.ss == ss && !self.move_in_flight(from))
            .map(|(f, m)| (f.clone(), m.clone()))
            .collect();
        if open.is_empty() {
            return Vec::new();
        }
        let held: BTreeMap<String, &FileState> = list
            .iter()
            .filter_map(|st| names::canonical_file(&st.file).ok().map(|f| (f, st)))
            .collect();
        let mut released = Vec::new();
        for (from, m) in open {
            let (old, new) = (held.contains_key(&from), held.get(&m.to));
            let same_epoch = self.epoch_of(ss) == m.epoch;
            let renamed = match (self.ns.files.get(&from), new) {
                // At the record's version, or past it (a write the server committed before
                // the move, whose news the name server did not live to hear).
                (Some(rec), Some(st)) => {
                    !old && same_epoch
                        && !self.ns.files.contains_key(&m.to)
                        && ((st.version == rec.version && st.checksum == rec.checksum)
                            || st.version > rec.version)
                }
                _ => false,
            };
            if renamed {
                self.finish_move(&from, &m.to, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = from.as_str(), to = m.to.as_str();
                    "moved {from} to {}: {ss} had renamed it before the name server stopped", m.to);
            } else {
                self.drop_move_intent(&from);
                log::info!(target: ev::NM_FILE_CHANGE, file = from.as_str(), to = m.to.as_str();
                    "the interrupted move of {from} to {} is not credited ({ss} holds the old name: {old}, the new: {}, epoch {} then, {} now)",
                    m.to, new.is_some(), m.epoch, self.epoch_of(ss));
            }
            released.push(from);
            released.push(m.to);
        }
        released
    }

    /// The pair of `primary` and `backup` changed writers (epoch `epoch`): an interrupted
    /// MOVE sent to either member in an earlier epoch can no longer be credited, so it is
    /// forgotten and its names released, without waiting for that member to come back.
    pub(super) fn forget_moves_before(
        &mut self,
        primary: &str,
        backup: &str,
        epoch: u64,
        now_ms: u64,
    ) {
        let stale: Vec<(String, String)> = self
            .ns
            .moves
            .iter()
            .filter(|(from, m)| {
                (m.ss == primary || m.ss == backup) && m.epoch < epoch && !self.move_in_flight(from)
            })
            .map(|(f, m)| (f.clone(), m.to.clone()))
            .collect();
        for (from, to) in stale {
            log::info!(target: ev::NM_FILE_CHANGE, file = from.as_str(), to = to.as_str();
                "the interrupted move of {from} to {to} is not credited: the pair took epoch {epoch}");
            self.abandon_move(&from, now_ms);
            self.next_for_file(&from, now_ms);
            self.next_for_file(&to, now_ms);
        }
    }

    /// Gives up the interrupted MOVE of `from` whose epoch has ended: its server may have
    /// renamed the file in that epoch, so, as for any change of an ended epoch, both names'
    /// copies there are set aside and repaired from the record (`Core::set_aside_on`) when
    /// the pair's other member holds the record's version to repair them from. Otherwise
    /// that server's copy may be the only one descending from the record, and it is left to
    /// reconciliation, as the fence leaves such a copy ([`Core::fenced_result`]).
    pub(super) fn abandon_move(&mut self, from: &str, now_ms: u64) {
        let Some(m) = self.ns.moves.get(from).cloned() else {
            return;
        };
        self.drop_move_intent(from);
        if self.partner_holds_record(&m.ss, from) {
            self.set_aside_on(&m.ss, &[from.to_string(), m.to.clone()], now_ms);
        }
    }

    /// Whether this run's MOVE of `from` is still waiting for its storage server.
    fn move_in_flight(&self, from: &str) -> bool {
        self.ops.moving(from)
    }

    /// The storage server renamed the file: the record (owner, access, version) moves with
    /// it, and the backup is owed the delete of the old name and the whole file (content,
    /// history, checkpoints) under the new one. Returns the backup, if any.
    pub(super) fn finish_move(&mut self, from: &str, to: &str, now_ms: u64) -> Option<String> {
        self.drop_move_intent(from);
        let mut rec = self.ns.files.get(from).cloned()?;
        let ss = rec.ss.clone();
        self.retire_name(from);
        self.del_file(from);
        self.reg.note_removed(&ss, from);
        // Only the writer that renamed it holds the file under its new name; the other member
        // is owed it whole.
        let writer = self.writer_member(&ss);
        let version = rec.version;
        rec.held_only_by(writer, version);
        self.put_file(to, rec);
        self.rename_requests(from, to);
        self.owe_delete(&ss, from, now_ms);
        self.owe(to, false, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::children;
    use std::collections::BTreeMap;

    #[test]
    fn children_skip_subtrees() {
        let map: BTreeMap<String, ()> = [
            "a.txt", "d", "d!x", "d/a", "d/b/c", "d/b/d", "d/c", "d0", "e/f",
        ]
        .iter()
        .map(|k| (k.to_string(), ()))
        .collect();
        assert_eq!(children(&map, ""), vec!["a.txt", "d", "d!x", "d0"]);
        assert_eq!(children(&map, "d/"), vec!["a", "c"]);
        assert_eq!(children(&map, "d/b/"), vec!["c", "d"]);
        assert!(children(&map, "x/").is_empty());
    }
}
