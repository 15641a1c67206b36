//! Access times (INFO's `Last Accessed`, VIEW -l's Last Access): kept in memory, made durable
//! lazily in batches, so a READ writes nothing durable.
//!
//! A LOCATE sets the file's `accessed_ms`/`accessed_by` in the in-memory record, which INFO
//! and VIEW read, and marks the file dirty; nothing goes to the store. The dirty records are
//! written (whole, from memory, which always equals what the store holds plus these times)
//!
//! * with the next store batch that is shipped anyway (a change, a heartbeat's bookkeeping):
//!   no commit of their own;
//! * or, when no batch comes, in a batch of their own once the oldest unwritten access is
//!   [`ACCESS_FLUSH_MS`] old (`bin_nm --access-flush-ms`): at most one commit per interval,
//!   however many reads;
//! * and at clean shutdown, before the store is flushed.
//!
//! Store changes that may wait (a CREATE's bookkeeping after its answer, see `creates.rs`)
//! are shipped by the same rules.
//!
//! The bound: a crash (SIGKILL, power loss) loses at most the access times of the last
//! interval (5 s by default). Access times are the only state kept this way; content,
//! versions, rights, folders and every other record are durable before their change is
//! answered, as before.

use super::*;

/// Default longest time an access stays only in memory.
pub const ACCESS_FLUSH_MS: u64 = 5_000;

/// Files whose access time is newer in memory than in the store.
#[derive(Debug)]
pub(super) struct AccessTimes {
    dirty: BTreeSet<String>,
    /// When the oldest unwritten access must be written.
    due_ms: Option<u64>,
    /// Longest time an access stays only in memory.
    flush_ms: u64,
}

impl Default for AccessTimes {
    fn default() -> AccessTimes {
        AccessTimes {
            dirty: BTreeSet::new(),
            due_ms: None,
            flush_ms: ACCESS_FLUSH_MS,
        }
    }
}

impl Core {
    /// Sets the longest time an access stays only in memory (at least 1 ms).
    pub fn set_access_flush_ms(&mut self, ms: u64) {
        self.access.flush_ms = ms.max(1);
    }

    /// Records that `user` accessed `file` now, in memory only.
    pub(super) fn touch(&mut self, file: &str, user: &str) {
        let now = self.wall_ms();
        let Some(rec) = self.ns.files.get_mut(file) else {
            return;
        };
        rec.accessed_ms = Some(now);
        if rec.accessed_by.as_deref() != Some(user) {
            rec.accessed_by = Some(user.to_string());
        }
        if !self.access.dirty.contains(file) {
            self.access.dirty.insert(file.to_string());
        }
        if self.access.due_ms.is_none() {
            self.access.due_ms = Some(self.now_ms + self.access.flush_ms);
        }
    }

    /// When the unwritten access times must be written, if any are.
    pub(super) fn access_due_ms(&self) -> Option<u64> {
        self.access.due_ms
    }

    /// Writes the unwritten access times into the store batch when they are due.
    pub(super) fn flush_due_access_times(&mut self, now_ms: u64) {
        if self.access.due_ms.is_some_and(|d| now_ms >= d) {
            self.flush_access_times();
        }
    }

    /// Store changes that may wait (see [`Core::lazily`]) are shipped within the same bound.
    pub(super) fn access_due_soon(&mut self) {
        if self.access.due_ms.is_none() {
            self.access.due_ms = Some(self.now_ms + self.access.flush_ms);
        }
    }

    /// Adds every unwritten access time to the store batch now (at shutdown, or riding on a
    /// batch that is shipped anyway), and lets changes that could wait ship with it.
    pub fn flush_access_times(&mut self) {
        self.access.due_ms = None;
        self.lazy_ops = 0;
        for file in std::mem::take(&mut self.access.dirty) {
            // A file deleted since its access has nothing left to write.
            if let Some(rec) = self.ns.files.get(&file) {
                self.batch.push(StoreOp::PutFile(file, rec.clone()));
            }
        }
    }

    /// Files with an access time not yet in the store.
    pub fn unwritten_access_times(&self) -> usize {
        self.access.dirty.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{core, create, hello, only_reply, register, send};
    use super::*;
    use crate::protocol::AccessMode;

    fn read(c: &mut Core, now: u64) {
        let locate = Message::Locate {
            avoid: None,
            file: "a.txt".into(),
            mode: AccessMode::Read,
        };
        let m = only_reply(send(c, 10, locate, now));
        assert!(matches!(m, Message::Located { .. }), "{m:?}");
    }

    fn written_access(batch: &[StoreOp]) -> Option<u64> {
        batch.iter().find_map(|o| match o {
            StoreOp::PutFile(f, rec) if f == "a.txt" => rec.accessed_ms,
            _ => None,
        })
    }

    #[test]
    fn a_read_is_kept_in_memory_until_due_or_the_next_batch() {
        let mut c = core();
        c.set_access_flush_ms(1_000);
        register(&mut c, 1, "ss1", vec![]);
        hello(&mut c, 10, "alice");
        create(&mut c, 10, "a.txt");
        c.take_batch();
        read(&mut c, 100);
        // Shown at once, written nowhere.
        assert_eq!(c.ns.files["a.txt"].accessed_ms, Some(100));
        assert_eq!(c.ns.files["a.txt"].accessed_by.as_deref(), Some("alice"));
        assert!(c.take_batch().is_empty());
        assert_eq!(c.unwritten_access_times(), 1);
        assert_eq!(c.access_due_ms(), Some(1_100));
        // A second read inside the interval moves neither the deadline nor the count.
        read(&mut c, 600);
        assert_eq!(c.access_due_ms(), Some(1_100));
        assert_eq!(c.unwritten_access_times(), 1);
        c.flush_due_access_times(1_099);
        assert!(c.take_batch().is_empty());
        c.flush_due_access_times(1_100);
        assert_eq!(written_access(&c.take_batch()), Some(600));
        assert_eq!(c.access_due_ms(), None);
        // The next change's batch carries an access made before it.
        read(&mut c, 1_200);
        create(&mut c, 10, "b.txt");
        assert_eq!(written_access(&c.take_batch()), Some(1_200));
        assert_eq!(c.unwritten_access_times(), 0);
        assert_eq!(c.access_due_ms(), None);
    }
}
