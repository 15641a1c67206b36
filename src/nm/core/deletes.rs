//! DELETE's durable intent, and versions that a name deleted and created again never reuses
//! (a child module of the core, so it shares the core's state and stays free of I/O).
//!
//! # A DELETE survives a name-server crash
//!
//! A record is never dropped because a server stopped listing the file (see `registry.rs`),
//! so a DELETE that the storage server carried out while the batch removing the record was
//! lost with the name server would leave a record no copy will ever match again. Before
//! SS_DELETE is sent the name server therefore makes a delete intent durable (`deletes`
//! table: file → the server and epoch the ticket names, the record's version and checksum),
//! and the batch that removes the record (or hears a refusal) removes it; the event loop
//! holds the call (`Effect::DurableJob`) until the intent is committed, as for MOVE.
//!
//! An intent the last run left is settled when its server registers again
//! ([`Core::resolve_deletes`]), before the server's file list is reconciled:
//!
//! * the server no longer lists the file, the record is still at the version and checksum
//!   the delete was asked for, and the pair is still in the epoch the ticket carried (or the
//!   other member does not hold the record's version, so nothing could serve or change the
//!   file since): the delete completes as on success: the record and its access requests
//!   go, and the other member is owed the removal;
//! * the server still lists the file: the delete did not happen, and the record stays (the
//!   client heard no answer, so either outcome is what it may expect; it may delete again);
//! * the record changed or is gone, or the pair changed writers while the other member holds
//!   the record's version: the delete is not credited (an answer from an ended epoch never
//!   is, see the fence in `ops.rs`); a copy the server lacks is owed to it again.
//!
//! The same holds within one run when the call ends `UNAVAILABLE` (not reached, or its answer
//! lost) or `INTERNAL` (its storage failed midway: the name may be gone though a sync after
//! the removal failed): the server may have removed the file, so the intent stays and is
//! settled at that server's next registration, which follows soon: a storage server whose
//! removal's sync failed stops (`ss::store::Store::delete`) and registers once restarted; a
//! refusal with any other code removes it.
//!
//! A worker may send one SS_DELETE twice, the second time on a new connection when the one
//! it kept closed before any answer (`worker::sscall`): a repeat that finds the file gone
//! answers NOT_FOUND, which counts as the delete done, as for any DELETE whose copy is gone
//! already (`nm` module docs).
//!
//! An intent whose call is still running in this run is left to its answer. The name is not
//! reserved meanwhile: every other operation on it changes or removes the record, which
//! makes the intent moot, and a new DELETE replaces it.
//!
//! # UNDO, CHECKPOINT and REVERT need no intent
//!
//! Each of them makes a new version on the writer. If the name server dies before the batch
//! recording it is durable, the writer registers again listing the file above the record's
//! version, which reconciliation adopts as the current version in the pair's epoch (as a
//! commit whose CHANGED never arrived) and owes to the other member, or sets aside as
//! unacknowledged when the epoch has ended; the checkpoint itself travels with the file. Only
//! a removal leaves nothing on the server to tell the name server what happened.
//!
//! # A name deleted and created again
//!
//! Versions are `(epoch, counter)` and a new file's counter would start at 1. A name deleted
//! and created again in the same epoch would then reach versions its old file had, while a
//! member that missed the removal (down, or cut off) may still hold the old file at such a
//! version: a replica job finding "the wanted version" there would keep it, and two files
//! with one version would be served. So each pair records the highest version a file of it
//! had when its name was given up (DELETE, or the old name of a MOVE; `PairRecord::retired`,
//! written in the batch that removes the record), and a CREATE in the same epoch starts its
//! counter above it (SS_CREATE `counter`). A new epoch starts every counter afresh above all
//! versions of earlier epochs. Versions of one name therefore never repeat across files.

use super::*;

/// The canonical names of the files a registering server lists.
pub(super) fn listed_names(list: &[FileState]) -> HashSet<String> {
    list.iter()
        .filter_map(|st| names::canonical_file(&st.file).ok())
        .collect()
}

impl Core {
    /// Records that SS_DELETE of `file` is about to be sent (written in the current batch).
    pub(super) fn put_delete_intent(&mut self, file: &str, intent: DeleteIntent) {
        self.batch
            .push(StoreOp::PutDelete(file.to_string(), intent.clone()));
        self.ns.deletes.insert(file.to_string(), intent);
    }

    /// Removes the intent of the DELETE of `file` (settled one way or the other).
    pub(super) fn drop_delete_intent(&mut self, file: &str) {
        if self.ns.deletes.remove(file).is_some() {
            self.batch.push(StoreOp::DelDelete(file.to_string()));
        }
    }

    /// The name `file` is given up (its record is about to go): its pair's retired version
    /// rises to the highest version the file had, so a file created again under that name in
    /// this epoch starts above it.
    pub(super) fn retire_name(&mut self, file: &str) {
        let Some(rec) = self.ns.files.get(file) else {
            return;
        };
        let top = rec.version.max(rec.backup_version.unwrap_or_default());
        let Some(mut st) = self.pairs.get(&rec.ss).cloned() else {
            return;
        };
        if st.retired.is_some_and(|r| r >= top) {
            return;
        }
        st.retired = Some(top);
        let pair = rec.ss.clone();
        self.pairs.put(&pair, st, &mut self.batch);
    }

    /// Settles the DELETEs an earlier run of the name server left unsettled whose SS_DELETE
    /// went to `ss`, which registers holding `list` (see the module docs).
    pub(super) fn resolve_deletes(&mut self, ss: &str, list: &[FileState], now_ms: u64) {
        let open: Vec<(String, DeleteIntent)> = self
            .ns
            .deletes
            .iter()
            .filter(|(f, d)| d.ss == ss && !self.ops.awaited(f, |p| matches!(p, Purpose::Delete)))
            .map(|(f, d)| (f.clone(), d.clone()))
            .collect();
        if open.is_empty() {
            return;
        }
        let held = listed_names(list);
        for (file, d) in open {
            self.drop_delete_intent(&file);
            let unchanged = self.ns.files.get(&file).is_some_and(|rec| {
                rec.version == d.version
                    && rec.checksum == d.checksum
                    && rec.ss == self.reg.pair_name(ss)
            });
            let same_epoch = self.epoch_of(ss) == d.epoch;
            let credited = unchanged
                && !held.contains(&file)
                && (same_epoch || !self.partner_holds_record(ss, &file));
            if credited {
                self.complete_delete(ss, &file, now_ms);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = ss;
                    "deleted {file}: {ss} had removed it before the name server stopped");
            } else {
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = ss;
                    "the interrupted delete of {file} is not credited ({ss} holds it: {}, record unchanged: {unchanged}, epoch {} then, {} now)",
                    held.contains(&file), d.epoch, self.epoch_of(ss));
            }
        }
    }

    /// `ss` removed `file` for a DELETE whose answer was lost: the record and its access
    /// requests go, and the pair's other member is owed the removal.
    fn complete_delete(&mut self, ss: &str, file: &str, now_ms: u64) {
        let Some(pair) = self.ns.files.get(file).map(|r| r.ss.clone()) else {
            return;
        };
        self.reg.note_removed(&pair, file);
        self.retire_name(file);
        self.drop_requests_for(file);
        self.del_file(file);
        let other = self
            .reg
            .membership(ss)
            .and_then(|(p, m)| self.reg.member_name(&p, m.other()));
        if let Some(other) = other {
            self.upsert_job(&other, file, Want::Delete, now_ms);
        }
    }
}
