//! CREATE's durable intent: the name server's commit runs while the storage server creates
//! (a child module of the core, so it shares the core's state and stays free of I/O).
//!
//! # One flush on each server, at the same time
//!
//! A CREATE's outcome is known before the storage server answers: the file is empty, its
//! version is the first one the SS_CREATE names, its owner is the caller. So the record it
//! will make is written, with a create intent (`creates` table: file → the server and epoch
//! the ticket names, the version), in the batch shipped when SS_CREATE is sent, and the call
//! runs while that batch is committed: the name server's flush and the storage server's
//! journal flush overlap instead of following each other. The record enters the in-memory
//! index only when the server answers, so nobody is directed to a file not created yet.
//!
//! The answer leaves once both are durable: the server's answer means the file is durable
//! there, and the reply, tagged like every reply with the batch sequence current when it was
//! produced (`server.rs`), waits for the batch holding the record. What the answer itself
//! changes (the record's mtime from the server, the job owing the copy to the other member,
//! the intent's removal) may wait for a later batch ([`Core::lazily`]): each is rebuilt if a
//! crash loses it. The record is durable already (the server's mtime only replaces the name
//! server's clock); the copy owed is found again when the other member registers and lacks
//! the file (`reconcile_member`); an intent left over is settled at registration, below.
//! Such changes ride on the next batch shipped for any other reason, or are shipped alone
//! within the access-time bound (`access.rs`).
//!
//! A refusal, a lost answer or an answer from an ended epoch removes the record and the
//! intent in the batch the error reply waits for, as if the record had never been written
//! (a lost answer may still have created the file: it is then an unknown file the server
//! lists at its next registration and the name server adopts, as before).
//!
//! A worker may send one SS_CREATE twice: when the connection it kept to the server closed
//! before any byte of an answer arrived, the same create goes again on a new connection with
//! a fresh ticket (`worker::sscall`). The server answers a repeat that finds the file exactly
//! as this create made it (the version and owner it names, empty, untouched) with the file's
//! state, and anything else there as EXISTS, as it would the first. So the one answer the
//! core hears is this create's, whichever send it came from, and everything above holds.
//!
//! # Settled at registration
//!
//! An intent the last run left (the name server stopped before the intent's removal was
//! durable) is settled when its server registers again ([`Core::resolve_creates`]), before
//! its file list is reconciled:
//!
//! * the server lists the file: the create happened (the client may or may not have heard
//!   so); the record stays and the intent goes;
//! * it does not, and the record is still the one the create wrote: the create never
//!   happened (the server answers only once the file is durable, so no client was told it
//!   did), and the record goes with the intent, instead of being marked missing forever.
//!
//! An intent whose call is still running in this run is left to its answer. An intent left
//! over is dropped as soon as anything else removes or replaces the name's record (a DELETE,
//! a MOVE onto the name after it), so it never takes a later record of the name for its own;
//! it also names the owner and creation time of the record it wrote, which must still match.
//!
//! Until its server registers again, a create the last run left unsettled shows its record
//! (VIEW, INFO; a CREATE of the name is refused as existing), whether or not it happened: the
//! client that asked was not answered, and either outcome is what it may expect. Should that
//! server never return, the owner's DELETE removes the record.

use super::deletes::listed_names;
use super::*;

impl Core {
    /// Runs `f`, whose store changes may wait for a later batch: a batch of nothing else is
    /// not shipped until another change, or the access-time bound, ships it (see
    /// [`Core::take_batch`]). Only for changes a crash may lose because they are rebuilt
    /// (module docs).
    pub(super) fn lazily<R>(&mut self, f: impl FnOnce(&mut Core) -> R) -> R {
        let before = self.batch.len();
        let r = f(self);
        let added = self.batch.len().saturating_sub(before);
        if added > 0 {
            self.lazy_ops += added;
            self.access_due_soon();
        }
        r
    }

    /// Writes the record a CREATE of `file` will make and its intent, in the batch shipped
    /// with the SS_CREATE (not in the in-memory index).
    pub(super) fn put_create_intent(&mut self, file: &str, rec: FileRecord, intent: CreateIntent) {
        self.batch.push(StoreOp::PutFile(file.to_string(), rec));
        self.batch
            .push(StoreOp::PutCreate(file.to_string(), intent.clone()));
        self.ns.creates.insert(file.to_string(), intent);
    }

    /// Whether the server's answer `st` is the state the create of `file` of pair `pair`
    /// wrote ahead, the durable record of the name is still that one (nothing recorded the
    /// name meanwhile, e.g. adopted from another server), and no replication row of the name
    /// is owed to either member (a removal still owed is rewritten eagerly, as before).
    pub(super) fn created_as_written(&self, file: &str, pair: &str, st: &FileState) -> bool {
        if self.ns.files.contains_key(file) {
            return false;
        }
        let rows = [Member::Primary, Member::Backup].into_iter().any(|m| {
            self.reg
                .member_name(pair, m)
                .is_some_and(|n| self.q.get(&job_key(&n, file)).is_some())
        });
        !rows
            && self.ns.creates.get(file).is_some_and(|c| {
                st.version == c.version
                    && st.size == 0
                    && st.checksum == crc32c::crc32c(b"")
                    && st.words == 0
                    && st.chars == 0
            })
    }

    /// The record of `file` is removed or replaced by something other than the answer of a
    /// create of it in flight: an intent a previous run left for the name is moot (it must
    /// never take a later record of the name for the one its create wrote ahead).
    pub(super) fn forget_create_of(&mut self, file: &str) {
        if self.ns.creates.contains_key(file) && !self.ops.awaited(file, is_create) {
            self.drop_create_intent(file);
        }
    }

    /// The create of `file` succeeded: its intent goes.
    pub(super) fn drop_create_intent(&mut self, file: &str) {
        if self.ns.creates.remove(file).is_some() {
            self.batch.push(StoreOp::DelCreate(file.to_string()));
        }
    }

    /// The create of `file` did not succeed here: the record written ahead and the intent go.
    pub(super) fn undo_create_intent(&mut self, file: &str) {
        if self.ns.creates.remove(file).is_some() {
            self.batch.push(StoreOp::DelCreate(file.to_string()));
            if !self.ns.files.contains_key(file) {
                self.batch.push(StoreOp::DelFile(file.to_string()));
            }
        }
    }

    /// Settles the creates on `ss` a previous run left, by what `ss` lists (module docs).
    pub(super) fn resolve_creates(&mut self, ss: &str, list: &[FileState]) {
        let open: Vec<(String, CreateIntent)> = self
            .ns
            .creates
            .iter()
            .filter(|(f, c)| c.ss == ss && !self.ops.awaited(f, is_create))
            .map(|(f, c)| (f.clone(), c.clone()))
            .collect();
        if open.is_empty() {
            return;
        }
        let held = listed_names(list);
        for (file, c) in open {
            self.drop_create_intent(&file);
            if held.contains(&file) {
                continue;
            }
            // A later change of the record would have shipped the intent's removal with it
            // (`forget_create_of`); the record is still the one written ahead.
            let unchanged = self.ns.files.get(&file).is_some_and(|rec| {
                rec.version == c.version
                    && rec.owner == c.owner
                    && rec.created_ms == c.created_ms
                    && rec.ss == self.reg.pair_name(ss)
            });
            if unchanged {
                self.drop_requests_for(&file);
                self.del_file(&file);
                log::info!(target: ev::NM_FILE_CHANGE, file = file.as_str(), ss = ss;
                    "the create of {file} did not happen on {ss} before the name server stopped; its record goes");
            }
        }
    }
}

fn is_create(p: &Purpose) -> bool {
    matches!(p, Purpose::Create { .. })
}
