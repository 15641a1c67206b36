//! Commands only a name server sends: quarantine, CHECK_FILES (FSCK), PEEK_FILE, and
//! SS_CHECKPOINT, SS_REVERT, SS_MOVE, SS_MKDIR.

use super::*;
use crate::protocol::frame::Frame;

/// Routes a name-server command to its handler. Called by `dispatch::serve` with the frames it routes here.
pub(super) fn handle(shared: &Shared, conn: &mut Connection, frame: Frame) -> Result<(), Fail> {
    match frame.msg {
        Message::PeekFile { file, ticket } => peek(shared, conn, &file, &ticket),
        Message::SsQuarantine { file, keep, ticket } => {
            quarantine(shared, conn, &file, keep, &ticket)
        }
        Message::SsCheckpoint {
            file,
            tag,
            creator,
            epoch,
            ticket,
        } => checkpoint(shared, conn, &file, &tag, &creator, epoch, &ticket),
        Message::SsRevert {
            file,
            tag,
            epoch,
            ticket,
        } => revert(shared, conn, &file, &tag, epoch, &ticket),
        Message::SsMove {
            file,
            to,
            version,
            ticket,
        } => move_file(shared, conn, &file, &to, version, &ticket),
        Message::SsMkdir { folders, ticket } => mkdir(shared, conn, &folders, &ticket),
        Message::CheckFiles {
            files,
            orphans,
            ticket,
        } => check_files(shared, conn, &files, orphans, &ticket),
        other => Err(unexpected(&other)),
    }
}

/// SS_QUARANTINE: sets this server's copy of `file` aside into `quarantine/` unless it is at
/// `keep`. Refused with LOCKED while a write session is open on the file.
pub(super) fn quarantine(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    keep: Option<Version>,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Quarantine)?;
    let _inflight = Inflight::new(&shared.inflight);
    let moved = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        shared.store.quarantine(file, keep)?
    };
    if let Some(path) = moved {
        log::warn!(target: ev::SS_COMMIT, file = file, path = path.as_str();
            "{file} set aside as {path}: it holds changes the cluster never acknowledged");
    }
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}

/// Most files one CHECK_FILES may name (the name server sends pages of at most 100).
pub const MAX_CHECK_FILES: usize = 1_000;
/// Most quarantine entries one file's check lists, and most orphans one reply lists; the
/// header of the reply stays under its cap.
pub const MAX_CHECK_QUARANTINE: usize = 100;

/// CHECK_FILES (FSCK): for each file, the bookkeeping's version and checksum and the checksum
/// recomputed from disk, and its quarantined versions. A hand edit found here is adopted and
/// reported like any access; a missing file is only reported (FSCK never changes records).
pub(super) fn check_files(
    shared: &Shared,
    conn: &mut Connection,
    files: &[String],
    orphans: bool,
    t: &Ticket,
) -> Result<(), Fail> {
    if files.len() > MAX_CHECK_FILES {
        return Err(err::limit(format!("more than {MAX_CHECK_FILES} files in one check")).into());
    }
    if t.user != crate::auth::NM_USER {
        return Err(err::unauthorized("only the name server may run a check").into());
    }
    for f in files {
        if names::canonical_file(f).ok().as_deref() != Some(f.as_str()) {
            return Err(
                err::invalid(format!("'{}' is not a canonical file name", names::show(f))).into(),
            );
        }
    }
    let scope = crate::auth::check_scope(files, orphans);
    shared
        .checker
        .check(t, &scope, TicketOp::Check)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, user = t.user.as_str(), reason = e.msg.as_str();
            "refused a check by {}: {}", t.user, e.msg);
        })?;
    let mut copies = Vec::with_capacity(files.len());
    for file in files {
        let (held, unreadable) = match shared.store.verify(file) {
            Ok(Some((held, meta, adopted))) => {
                report_adopted(shared, adopted, || meta.state(file));
                (Some(held), None)
            }
            Ok(None) => (None, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut quarantined = shared.store.quarantined(file)?;
        quarantined.truncate(MAX_CHECK_QUARANTINE);
        copies.push(crate::protocol::CopyCheck {
            file: file.clone(),
            held,
            unreadable,
            quarantined,
        });
    }
    let (orphans, more_orphans) = if orphans {
        shared.store.quarantine_orphans(MAX_CHECK_QUARANTINE)?
    } else {
        (Vec::new(), 0)
    };
    conn.send(
        &Message::Checked {
            copies,
            orphans,
            more_orphans,
        },
        &[],
    )?;
    Ok(())
}

/// PEEK_FILE: what this copy holds of a file, so a transfer sends only what is missing.
pub(super) fn peek(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise(shared, file, t, TicketOp::Store)?;
    let held = shared.store.held(file)?;
    let (state, blobs, checkpoints) = match held {
        Some((meta, blobs)) => (
            Some(meta.state(file)),
            blobs,
            shared.store.held_checkpoints(file),
        ),
        None => (None, Vec::new(), Vec::new()),
    };
    conn.send(
        &Message::Held {
            state,
            blobs,
            checkpoints,
        },
        &[],
    )?;
    Ok(())
}

/// SS_CHECKPOINT: a checkpoint of the committed content (open write sessions do not matter:
/// their edits are not in the file until they commit).
pub(super) fn checkpoint(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    tag: &str,
    creator: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise_change(shared, file, t, TicketOp::Checkpoint)?;
    names::validate_tag(tag)?;
    names::validate_user(creator)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = shared.store.checkpoint(file, tag, creator, epoch)?;
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), tag = tag;
        "checkpoint '{tag}' of {file}");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

/// SS_REVERT: refused while a write session is open, like UNDO.
pub(super) fn revert(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    tag: &str,
    epoch: u64,
    t: &Ticket,
) -> Result<(), Fail> {
    authorise_change(shared, file, t, TicketOp::Revert)?;
    names::validate_tag(tag)?;
    let _inflight = Inflight::new(&shared.inflight);
    let meta = {
        let lock = shared.store.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        refuse_if_writing(shared, file)?;
        may_change(shared, t)?;
        shared.store.revert(file, tag, epoch)?
    };
    log::info!(target: ev::SS_COMMIT, file = file, version = meta.version.to_string(), tag = tag;
        "reverted {file} to checkpoint '{tag}'");
    conn.send(
        &Message::FileStateReply {
            state: meta.state(file),
        },
        &[],
    )?;
    Ok(())
}

/// SS_MOVE: both names canonical, the ticket minted for exactly this pair, no open write
/// session on the file. The two locks are taken in name order, so two moves never deadlock.
pub(super) fn move_file(
    shared: &Shared,
    conn: &mut Connection,
    file: &str,
    to: &str,
    version: Option<Version>,
    t: &Ticket,
) -> Result<(), Fail> {
    for name in [file, to] {
        if names::canonical_file(name)? != name {
            return Err(err::invalid(format!("'{name}' is not a canonical file name")).into());
        }
    }
    shared
        .checker
        .check(t, &names::move_subject(file, to), TicketOp::Move)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, file = file, user = t.user.as_str(), reason = e.msg.as_str();
                "refused MOVE of {file} to {to}: {}", e.msg);
        })?;
    may_change(shared, t)?;
    let _inflight = Inflight::new(&shared.inflight);
    {
        let (first, second) = if file < to { (file, to) } else { (to, file) };
        let l1 = shared.store.file_lock(first);
        let _g1 = l1.lock().unwrap_or_else(|p| p.into_inner());
        let l2 = shared.store.file_lock(second);
        let _g2 = l2.lock().unwrap_or_else(|p| p.into_inner());
        // A repeat of a move made already (only a repeat carries `version`) changes nothing:
        // it is answered before the write-session check, under the lease checked above.
        if version.is_some_and(|v| shared.store.moved_already(file, to, v).unwrap_or(false)) {
            log::info!(target: ev::SS_COMMIT, file = file, to = to;
                "{file} was moved to {to} already: the name server repeated a move whose answer it lost");
            conn.send(&Message::Done {}, &[])?;
            return Ok(());
        }
        refuse_if_writing(shared, file)?;
        may_change(shared, t)?;
        shared.store.move_file(file, to)?;
    }
    log::info!(target: ev::SS_COMMIT, file = file, to = to; "moved {file} to {to}");
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}

/// SS_MKDIR: the name server's folders as directories under `files/`, on primaries and
/// backups alike (every copy holds every folder).
pub(super) fn mkdir(
    shared: &Shared,
    conn: &mut Connection,
    folders: &[String],
    t: &Ticket,
) -> Result<(), Fail> {
    for f in folders {
        if f.is_empty() || names::canonical_folder(f)? != *f {
            return Err(err::invalid(format!(
                "'{}' is not a canonical folder name",
                names::show(f)
            ))
            .into());
        }
    }
    shared
        .checker
        .check(t, &names::mkdir_subject(folders), TicketOp::Mkdir)
        .inspect_err(|e| {
            log::warn!(target: ev::SS_REFUSED, user = t.user.as_str(), reason = e.msg.as_str();
                "refused SS_MKDIR: {}", e.msg);
        })?;
    shared.store.make_folders(folders)?;
    log::info!(target: ev::SS_COMMIT, folders = folders.len() as u64; "created {} folder(s)", folders.len());
    conn.send(&Message::Done {}, &[])?;
    Ok(())
}
