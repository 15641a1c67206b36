//! Sentence locks of open write sessions. One table for the whole server; a session holds one
//! sentence of one file. When a commit turns sentence `i` into `n` sentences, every other
//! session of that file on an index above `i` moves by `n - 1` (see `document.rs`), so each
//! still points at the sentence its user opened.

use crate::protocol::{err, WireError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most write sessions open at once on the whole server.
pub const MAX_SESSIONS: usize = 4096;

/// The lock table.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    /// file -> (session id -> sentence index).
    table: Mutex<HashMap<String, HashMap<u64, usize>>>,
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, usize>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks sentence `i` of `file`; returns the session id.
    pub fn open(&self, file: &str, i: usize) -> Result<u64, WireError> {
        let mut t = self.table();
        let total: usize = t.values().map(HashMap::len).sum();
        if total >= MAX_SESSIONS {
            return Err(err::limit("too many open write sessions"));
        }
        let held = t.entry(file.to_string()).or_default();
        if held.values().any(|&s| s == i) {
            return Err(err::locked("Sentence is locked by another writer"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        held.insert(id, i);
        Ok(id)
    }

    /// The sentence session `id` currently holds (it may have shifted since it opened).
    pub fn index(&self, file: &str, id: u64) -> Option<usize> {
        self.table().get(file).and_then(|h| h.get(&id).copied())
    }

    /// After session `id`'s sentence `i` became `n` sentences (an existing sentence, not an
    /// append), moves the other sessions above `i` by `n - 1`.
    pub fn shift_after(&self, file: &str, id: u64, i: usize, n: usize) {
        let mut t = self.table();
        if let Some(h) = t.get_mut(file) {
            for (other, idx) in h.iter_mut() {
                if *other != id && *idx > i {
                    *idx = (*idx + n).saturating_sub(1);
                }
            }
        }
    }

    /// Releases session `id`'s lock.
    pub fn close(&self, file: &str, id: u64) {
        let mut t = self.table();
        if let Some(h) = t.get_mut(file) {
            h.remove(&id);
            if h.is_empty() {
                t.remove(file);
            }
        }
    }

    /// Whether any session is open on `file` (DELETE and UNDO refuse then).
    pub fn any_open(&self, file: &str) -> bool {
        self.table().get(file).is_some_and(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_conflict_and_shift() {
        let s = Sessions::new();
        let a = s.open("f", 0).unwrap();
        let b = s.open("f", 2).unwrap();
        let c = s.open("f", 1).unwrap();
        assert_eq!(
            s.open("f", 2).unwrap_err().code,
            crate::protocol::ErrorCode::Locked
        );
        let other = s.open("g", 2).unwrap();
        // Sentence 0 split into three: sessions above 0 move by two.
        s.shift_after("f", a, 0, 3);
        assert_eq!(s.index("f", b), Some(4));
        assert_eq!(s.index("f", c), Some(3));
        assert_eq!(s.index("g", other), Some(2));
        s.close("f", a);
        // Sentence 3 removed entirely: the one above moves down.
        s.shift_after("f", c, 3, 0);
        assert_eq!(s.index("f", b), Some(3));
        s.close("f", b);
        s.close("f", c);
        assert!(!s.any_open("f"));
        assert!(s.any_open("g"));
    }
}
