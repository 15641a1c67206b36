//! Writing a large received part to its temp file beside the page cache.
//!
//! A part of at least [`DIRECT_MIN_BYTES`] (an UPLOAD, the partner's stage of it, a copy a
//! backup receives whole) is not written by the thread that receives it: each chunk, once its
//! CRC32C is checked, goes (shared, not copied) to a writer thread of its own, which gathers
//! the chunks into one aligned buffer of [`DIRECT_BUF_BYTES`] and writes every full buffer
//! with `O_DIRECT` on a second descriptor of the same temp file. So the disk works while the
//! network does, and the bytes are not copied into the page cache: on a storage server that
//! copy (allocating and filling a fresh page per 4 KiB, then writing it back) cost more CPU
//! than receiving the bytes, and the two servers of a pair write the same bytes at once.
//!
//! The last, partial buffer is written through the ordinary descriptor. A file system that
//! refuses `O_DIRECT` (at open or at a write) gets the same buffers through the ordinary
//! descriptor instead, with their write-back started as they are written
//! ([`super::start_writeback`]). Durability is unchanged: `O_DIRECT` only bypasses the cache,
//! so the part's temp file is still made durable by the fsync its caller asks for
//! ([`super::SyncBy`]), after the writer is done; nothing is installed before that.
//!
//! A write that fails (disk full) ends the writing, not the receiving: the part is still read
//! to its END and the error is reported with it, as for a part written in place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

/// Parts at least this large are written by a writer thread with `O_DIRECT`.
pub(super) const DIRECT_MIN_BYTES: u64 = 4 << 20;
/// Bytes gathered before one `O_DIRECT` write.
pub(super) const DIRECT_BUF_BYTES: usize = 4 << 20;
/// Alignment of an `O_DIRECT` write's memory, offset and length.
const DIRECT_ALIGN: usize = 4096;
/// Chunks that may wait for the writer thread: bounds the memory a part takes while the disk
/// is slower than the network (the receiving thread then waits, and so does its peer).
pub(super) const WRITE_QUEUE_CHUNKS: usize = 8;

/// The writer thread's body: writes the chunks from `rx` one after the other to `out`, whose
/// path is `path`, until the sender is dropped. Returns the first error; after an error the
/// rest is only drained.
pub(super) fn write_all(path: &Path, out: &File, rx: Receiver<Arc<Vec<u8>>>) -> io::Result<()> {
    let mut w = Writer::new(path, out);
    let mut result = Ok(());
    for body in rx {
        if result.is_ok() {
            result = w.push(&body);
        }
    }
    if result.is_ok() {
        result = w.finish();
    }
    result
}

/// An aligned buffer and the descriptors it is written through.
struct Writer<'a> {
    /// The temp file as created (buffered writes; its caller's fsync).
    out: &'a File,
    /// The same file opened with `O_DIRECT`; None where the file system refuses it.
    direct: Option<File>,
    /// Room for [`DIRECT_BUF_BYTES`] at an aligned offset (`start`).
    raw: Vec<u8>,
    start: usize,
    /// Bytes gathered in the buffer.
    fill: usize,
    /// Bytes of the file written so far (the offset of the buffer's first byte).
    pos: u64,
    /// Bytes written through `out` whose write-back has not been started yet.
    unflushed: u64,
}

impl<'a> Writer<'a> {
    fn new(path: &Path, out: &'a File) -> Writer<'a> {
        let raw = vec![0u8; DIRECT_BUF_BYTES + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        let direct = if start < DIRECT_ALIGN {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        Writer {
            out,
            direct,
            start: start.min(DIRECT_ALIGN),
            raw,
            fill: 0,
            pos: 0,
            unflushed: 0,
        }
    }

    /// Gathers `body`, writing each buffer it fills.
    fn push(&mut self, mut body: &[u8]) -> io::Result<()> {
        while !body.is_empty() {
            let n = body.len().min(DIRECT_BUF_BYTES - self.fill);
            let at = self.start + self.fill;
            self.raw[at..at + n].copy_from_slice(&body[..n]);
            self.fill += n;
            body = &body[n..];
            if self.fill == DIRECT_BUF_BYTES {
                self.write_buffer()?;
            }
        }
        Ok(())
    }

    /// Writes the full buffer: with `O_DIRECT` when the file system takes it, else (from
    /// then on) through the page cache.
    fn write_buffer(&mut self) -> io::Result<()> {
        let bytes = &self.raw[self.start..self.start + self.fill];
        if let Some(d) = &self.direct {
            match d.write_all_at(bytes, self.pos) {
                Ok(()) => {
                    self.pos += self.fill as u64;
                    self.fill = 0;
                    return Ok(());
                }
                // Refused (EINVAL where the file system cannot write around the cache) or
                // failed: the ordinary descriptor writes it again below, and says which.
                Err(_) => self.direct = None,
            }
        }
        self.write_cached()
    }

    /// Writes what the buffer holds through the page cache, starting its write-back every
    /// [`super::WRITEBACK_BYTES`].
    fn write_cached(&mut self) -> io::Result<()> {
        let bytes = &self.raw[self.start..self.start + self.fill];
        self.out.write_all_at(bytes, self.pos)?;
        self.pos += self.fill as u64;
        self.unflushed += self.fill as u64;
        self.fill = 0;
        if self.unflushed >= super::WRITEBACK_BYTES {
            super::start_writeback(self.out, self.pos - self.unflushed, self.unflushed);
            self.unflushed = 0;
        }
        Ok(())
    }

    /// Writes the last, partial buffer (its length is not aligned) through the page cache.
    fn finish(&mut self) -> io::Result<()> {
        if self.fill > 0 {
            self.write_cached()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    /// Runs the writer over `chunks` into a fresh file and returns what the file holds.
    fn written(chunks: &[Vec<u8>]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let out = File::create(&path).unwrap();
        let (tx, rx) = sync_channel(WRITE_QUEUE_CHUNKS);
        std::thread::scope(|s| {
            let h = s.spawn(|| write_all(&path, &out, rx));
            for c in chunks {
                tx.send(Arc::new(c.clone())).unwrap();
            }
            drop(tx);
            h.join().unwrap()
        })
        .unwrap();
        out.sync_all().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn every_byte_lands_in_order_whatever_the_chunk_sizes() {
        let chunks = vec![
            bytes(1 << 20, 1),
            bytes(3 << 20, 2),
            bytes(12_345, 3),
            bytes(DIRECT_BUF_BYTES, 4),
            bytes(1, 5),
            bytes((5 << 20) + 7, 6),
        ];
        let want: Vec<u8> = chunks.concat();
        assert_eq!(written(&chunks), want);
    }

    #[test]
    fn a_file_system_refusing_o_direct_gets_the_same_bytes_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let out = File::create(&path).unwrap();
        let mut w = Writer::new(&path, &out);
        // As where the open with O_DIRECT failed.
        w.direct = None;
        let chunks = [bytes(3 << 20, 9), bytes((6 << 20) + 11, 10)];
        for c in &chunks {
            w.push(c).unwrap();
        }
        w.finish().unwrap();
        out.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), chunks.concat());
    }

    #[test]
    fn whole_buffers_only_and_nothing_at_all_are_written_exactly() {
        let chunks = vec![bytes(DIRECT_BUF_BYTES, 7), bytes(DIRECT_BUF_BYTES, 8)];
        assert_eq!(written(&chunks), chunks.concat());
        assert!(written(&[]).is_empty());
    }
}
