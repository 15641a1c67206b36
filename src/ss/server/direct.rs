//! Writing a large received part to its temp file beside the page cache.
//!
//! A part of at least [`DIRECT_MIN_BYTES`] (an UPLOAD, the partner's stage of it, a copy a
//! backup receives whole) is not written by the thread that receives it. That thread reads
//! each chunk's body straight from the socket into a [`Body`] of its own whose bytes sit
//! where an `O_DIRECT` write can take them from (aligned to [`DIRECT_ALIGN`]), checks its
//! CRC32C and hands it (shared, not copied) to a writer thread of its own. The writer passes
//! the aligned chunks on in batches of about [`DIRECT_BUF_BYTES`] to a disk thread, which
//! writes each batch with one `O_DIRECT` `pwritev` on a second descriptor of the same temp
//! file while the next batch gathers. So the bytes are copied once, from the socket, and
//! never into the page cache: on a storage server that copy (allocating and filling a fresh
//! page per 4 KiB, then writing it back) cost more CPU than receiving the bytes, and the two
//! servers of a pair write the same bytes at once.
//!
//! A chunk that cannot be written so (its length not a multiple of [`DIRECT_ALIGN`], as the
//! last one of most parts; a body that was not received aligned) is copied into an aligned
//! buffer of [`DIRECT_BUF_BYTES`] instead, and so is every chunk after it; each full buffer
//! is written with `O_DIRECT`, the last, partial one through the ordinary descriptor. A file
//! system that refuses `O_DIRECT` (at open or at a write) gets the same bytes through the
//! ordinary descriptor instead, with their write-back started as they are written
//! ([`super::start_writeback`]). Durability is unchanged: `O_DIRECT` only bypasses the cache,
//! so the part's temp file is still made durable by the fsync its caller asks for
//! ([`super::SyncBy`]), after the writer is done; nothing is installed before that.
//!
//! A write that fails (disk full) ends the writing, not the receiving: the part is still read
//! to its END and the error is reported with it, as for a part written in place.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

/// Parts at least this large are written by a writer thread with `O_DIRECT`.
pub(super) const DIRECT_MIN_BYTES: u64 = 4 << 20;
/// Bytes of one `O_DIRECT` write: a batch of whole chunks, or one buffer of copied ones.
pub(super) const DIRECT_BUF_BYTES: usize = 4 << 20;
/// Alignment of an `O_DIRECT` write's memory, offset and length.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// Chunks that may wait for the writer thread: bounds the memory a part takes while the disk
/// is slower than the network (the receiving thread then waits, and so does its peer).
pub(super) const WRITE_QUEUE_CHUNKS: usize = 8;

/// Aligned buffers of one part that copies chunks: one is gathered while the other is
/// written.
const BUFFERS: usize = 2;

/// The bytes of one received chunk: a frame's body as received, or room (aligned to
/// [`DIRECT_ALIGN`]) that a body was read into.
pub(super) struct Body {
    raw: Vec<u8>,
    /// Where the bytes start in `raw`.
    start: usize,
    /// How many there are.
    len: usize,
    /// For aligned room ([`Body::aligned`]), how much of it there is.
    room: Option<usize>,
}

impl Body {
    /// Room for `room` bytes at an aligned address, holding none yet (where the allocation
    /// cannot be aligned, the room starts unaligned and its chunks are copied).
    pub(super) fn aligned(room: usize) -> Body {
        let raw = vec![0u8; room + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Body {
            raw,
            start,
            len: 0,
            room: Some(room),
        }
    }

    /// A frame's body, as received.
    pub(super) fn from_vec(raw: Vec<u8>) -> Body {
        let len = raw.len();
        Body {
            raw,
            start: 0,
            len,
            room: None,
        }
    }

    /// The room a body can be received into (all of it, whatever it holds now; none for a
    /// frame's body).
    pub(super) fn room(&mut self) -> &mut [u8] {
        let room = self.room.unwrap_or(0);
        &mut self.raw[self.start..self.start + room]
    }

    /// The first `len` bytes of the room hold a body now.
    pub(super) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.room.unwrap_or(0));
    }

    /// Whether this is aligned room ([`Body::aligned`]) rather than a frame's body.
    pub(super) fn is_room(&self) -> bool {
        self.room.is_some()
    }

    /// The memory of a frame's body, to be handed back to its connection.
    pub(super) fn into_vec(self) -> Vec<u8> {
        self.raw
    }

    /// Whether an `O_DIRECT` write can take the bytes from where they are.
    fn direct(&self) -> bool {
        self.len > 0
            && self.len.is_multiple_of(DIRECT_ALIGN)
            && self.as_ptr().align_offset(DIRECT_ALIGN) == 0
    }
}

impl Deref for Body {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for Body {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// What the disk thread writes next, at the next offset.
enum Job {
    /// Whole chunks, aligned where they are, in one `O_DIRECT` write.
    Chunks(Vec<Arc<Body>>),
    /// A buffer of copied chunks (handed back once written).
    Copied(Aligned),
}

/// The writer thread's body: writes the chunks from `rx` one after the other to `out`, whose
/// path is `path`, until the sender is dropped. Returns the first error; after an error the
/// rest is only drained.
///
/// This thread batches the chunks (or copies them into aligned buffers) and a disk thread of
/// its own writes each batch, so the disk is not idle while the next one gathers (without a
/// thread to be had, this one writes them itself).
pub(super) fn write_all(path: &Path, out: &File, rx: Receiver<Arc<Body>>) -> io::Result<()> {
    let (job_tx, job_rx) = sync_channel::<Job>(1);
    let (free_tx, free_rx) = sync_channel::<Aligned>(BUFFERS);
    thread::scope(|scope| {
        let disk = thread::Builder::new()
            .name("ss-disk".into())
            .spawn_scoped(scope, move || {
                let mut disk = Inline {
                    disk: Disk::new(path, out),
                    spare: None,
                    result: Ok(()),
                };
                for job in job_rx {
                    disk.send(job);
                    // The gathering side may be gone already.
                    if let Some(b) = disk.spare.take() {
                        let _ = free_tx.send(b);
                    }
                }
                disk.result
            });
        let Ok(disk) = disk else {
            return write_inline(path, out, rx);
        };
        let mut to_disk = ToDisk {
            jobs: job_tx,
            free: free_rx,
            gone: false,
        };
        let mut gather = Gather::default();
        for body in rx {
            // The disk thread is gone (it failed): the rest is only drained.
            if !to_disk.gone {
                gather.take(body, &mut to_disk);
            }
        }
        gather.finish(&mut to_disk);
        drop(to_disk);
        disk.join()
            .unwrap_or_else(|_| Err(io::Error::other("the disk thread failed")))
    })
}

/// [`write_all`] on this thread alone.
fn write_inline(path: &Path, out: &File, rx: Receiver<Arc<Body>>) -> io::Result<()> {
    let mut disk = Inline {
        disk: Disk::new(path, out),
        spare: None,
        result: Ok(()),
    };
    let mut gather = Gather::default();
    for body in rx {
        gather.take(body, &mut disk);
    }
    gather.finish(&mut disk);
    disk.result
}

/// Where [`Gather`] sends the jobs it completes, and gets written buffers back from.
trait JobSink {
    /// Writes `job` (or has it written).
    fn send(&mut self, job: Job);
    /// A written buffer to copy into again (None once the disk side is gone).
    fn free(&mut self) -> Option<Aligned>;
}

/// The disk thread, seen from the writer thread.
struct ToDisk {
    jobs: SyncSender<Job>,
    free: Receiver<Aligned>,
    /// The disk thread is gone.
    gone: bool,
}

impl JobSink for ToDisk {
    fn send(&mut self, job: Job) {
        self.gone |= self.jobs.send(job).is_err();
    }

    fn free(&mut self) -> Option<Aligned> {
        let b = self.free.recv().ok();
        self.gone |= b.is_none();
        b
    }
}

/// Jobs written on the spot: the first error is kept, and after it nothing more is written.
struct Inline<'a> {
    disk: Disk<'a>,
    /// The buffer last written, to copy into again.
    spare: Option<Aligned>,
    result: io::Result<()>,
}

impl JobSink for Inline<'_> {
    fn send(&mut self, job: Job) {
        match job {
            Job::Chunks(chunks) => {
                if self.result.is_ok() {
                    self.result = self.disk.write_chunks(&chunks);
                }
            }
            Job::Copied(mut b) => {
                if self.result.is_ok() {
                    self.result = self.disk.write(&b);
                }
                b.fill = 0;
                self.spare = Some(b);
            }
        }
    }

    fn free(&mut self) -> Option<Aligned> {
        Some(self.spare.take().unwrap_or_else(Aligned::new))
    }
}

/// Chunks turned into disk jobs, in order.
#[derive(Default)]
struct Gather {
    /// Whole aligned chunks not yet handed on.
    batch: Vec<Arc<Body>>,
    batch_bytes: usize,
    /// From the first chunk that could not be written where it is: the buffer copied into.
    copying: Option<Aligned>,
    /// Buffers made so far (at most [`BUFFERS`]; after that they come back from the disk).
    made: usize,
}

impl Gather {
    /// Takes one chunk, sending `to` the jobs it completes.
    fn take(&mut self, body: Arc<Body>, to: &mut impl JobSink) {
        if self.copying.is_none() && self.made == 0 && body.direct() {
            self.batch_bytes += body.len();
            self.batch.push(body);
            if self.batch_bytes >= DIRECT_BUF_BYTES {
                self.flush_batch(to);
            }
            return;
        }
        // Copied from here on: what was batched goes first.
        self.flush_batch(to);
        let mut rest = &body[..];
        while !rest.is_empty() {
            if self.copying.is_none() {
                self.copying = if self.made < BUFFERS {
                    self.made += 1;
                    Some(Aligned::new())
                } else {
                    to.free()
                };
            }
            // The disk side is gone: the rest is only drained.
            let Some(b) = self.copying.as_mut() else {
                return;
            };
            rest = &rest[b.put(rest)..];
            if b.fill == DIRECT_BUF_BYTES {
                if let Some(full) = self.copying.take() {
                    to.send(Job::Copied(full));
                }
            }
        }
    }

    fn flush_batch(&mut self, to: &mut impl JobSink) {
        self.batch_bytes = 0;
        if !self.batch.is_empty() {
            to.send(Job::Chunks(std::mem::take(&mut self.batch)));
        }
    }

    /// Sends the last job: what is still batched, or the last, partial buffer.
    fn finish(&mut self, to: &mut impl JobSink) {
        match self.copying.take().filter(|b| b.fill > 0) {
            Some(b) => to.send(Job::Copied(b)),
            None => self.flush_batch(to),
        }
    }
}

/// Room for [`DIRECT_BUF_BYTES`] at an aligned address.
struct Aligned {
    raw: Vec<u8>,
    /// Where the aligned room starts in `raw` (past the end of the alignment where the
    /// allocation cannot be aligned: then the buffer is written through the cache).
    start: usize,
    /// Bytes gathered.
    fill: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let raw = vec![0u8; DIRECT_BUF_BYTES + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Aligned {
            raw,
            start,
            fill: 0,
        }
    }

    /// Copies what fits of `bytes` in; returns how many.
    fn put(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(DIRECT_BUF_BYTES - self.fill);
        let at = self.start + self.fill;
        self.raw[at..at + n].copy_from_slice(&bytes[..n]);
        self.fill += n;
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.fill]
    }

    /// Whole and aligned, so it can be written with `O_DIRECT`.
    fn direct(&self) -> bool {
        self.fill == DIRECT_BUF_BYTES && self.start < DIRECT_ALIGN
    }
}

/// The temp file, written buffer after buffer from its start.
struct Disk<'a> {
    /// The temp file as created (buffered writes; its caller's fsync).
    out: &'a File,
    /// The same file opened with `O_DIRECT`; None where the file system refuses it.
    direct: Option<File>,
    /// Bytes of the file written so far (the offset of the next buffer).
    pos: u64,
    /// Bytes written through `out` whose write-back has not been started yet.
    unflushed: u64,
}

impl<'a> Disk<'a> {
    fn new(path: &Path, out: &'a File) -> Disk<'a> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Disk {
            out,
            direct,
            pos: 0,
            unflushed: 0,
        }
    }

    /// Writes `b` at the next offset: with `O_DIRECT` when it is whole and the file system
    /// takes it, else (the last, partial buffer; from a refusal on) through the page cache.
    fn write(&mut self, b: &Aligned) -> io::Result<()> {
        if let (true, Some(d)) = (b.direct(), &self.direct) {
            match d.write_all_at(b.bytes(), self.pos) {
                Ok(()) => {
                    self.pos += b.fill as u64;
                    return Ok(());
                }
                // Refused (EINVAL where the file system cannot write around the cache) or
                // failed: the ordinary descriptor writes it again below, and says which.
                Err(_) => self.direct = None,
            }
        }
        self.cached(b.bytes())
    }

    /// Writes whole aligned chunks at the next offset with one `O_DIRECT` `pwritev`; what it
    /// does not write (refused, failed, cut short) goes through the page cache.
    fn write_chunks(&mut self, chunks: &[Arc<Body>]) -> io::Result<()> {
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        let mut done = 0;
        if let Some(d) = &self.direct {
            match pwritev(d, chunks, self.pos) {
                Ok(n) => done = n.min(total),
                // As in `write`: the ordinary descriptor takes over.
                Err(_) => self.direct = None,
            }
            if done < total {
                self.direct = None;
            }
        }
        self.pos += done as u64;
        let mut skip = done;
        for c in chunks {
            let n = skip.min(c.len());
            skip -= n;
            if n < c.len() {
                self.cached(&c[n..])?;
            }
        }
        Ok(())
    }

    /// Writes `bytes` at the next offset through the page cache, starting their write-back.
    fn cached(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        self.unflushed += bytes.len() as u64;
        if self.unflushed >= super::WRITEBACK_BYTES {
            super::start_writeback(self.out, self.pos - self.unflushed, self.unflushed);
            self.unflushed = 0;
        }
        Ok(())
    }
}

/// One `pwritev` of `chunks` at `offset` of `f`: the bytes it wrote.
fn pwritev(f: &File, chunks: &[Arc<Body>], offset: u64) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = chunks
        .iter()
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        })
        .collect();
    let count = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    loop {
        // SAFETY: every iovec points into a chunk that `chunks` keeps alive and unchanged for
        // the call (the kernel only reads them); `f` keeps the descriptor open.
        let n = unsafe { libc::pwritev(f.as_raw_fd(), iov.as_ptr(), count, offset) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk of `c`'s bytes: received into aligned room when `aligned`, else as a frame's
    /// own body.
    fn chunk(c: &[u8], aligned: bool) -> Arc<Body> {
        if !aligned {
            return Arc::new(Body::from_vec(c.to_vec()));
        }
        let mut b = Body::aligned(c.len());
        b.room().copy_from_slice(c);
        b.set_len(c.len());
        Arc::new(b)
    }

    /// Runs the writer over `chunks` into a fresh file and returns what the file holds.
    fn written_as(chunks: &[Vec<u8>], aligned: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let out = File::create(&path).unwrap();
        let (tx, rx) = sync_channel(WRITE_QUEUE_CHUNKS);
        std::thread::scope(|s| {
            let h = s.spawn(|| write_all(&path, &out, rx));
            for c in chunks {
                tx.send(chunk(c, aligned)).unwrap();
            }
            drop(tx);
            h.join().unwrap()
        })
        .unwrap();
        out.sync_all().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn written(chunks: &[Vec<u8>]) -> Vec<u8> {
        written_as(chunks, false)
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
        assert_eq!(written_as(&chunks, true), want);
    }

    #[test]
    fn aligned_whole_chunks_are_written_where_they_are_and_the_rest_copied_in_order() {
        let body = chunk(&bytes(1 << 20, 1), true);
        assert!(body.direct());
        assert!(!chunk(&bytes((1 << 20) + 1, 1), true).direct());
        // Whole chunks (batched and written where they lie), a short one (copied), then whole
        // ones again (copied too, after it), and a last partial buffer.
        let mut chunks: Vec<Vec<u8>> = (0..9).map(|i| bytes(1 << 20, i)).collect();
        chunks.push(bytes(4_095, 20));
        chunks.extend((0..6).map(|i| bytes(1 << 20, 30 + i)));
        chunks.push(bytes(77, 40));
        assert_eq!(written_as(&chunks, true), chunks.concat());
        // Only whole chunks: a batch left short at the end is written too.
        let whole: Vec<Vec<u8>> = (0..6).map(|i| bytes(1 << 20, 50 + i)).collect();
        assert_eq!(written_as(&whole, true), whole.concat());
    }

    #[test]
    fn a_file_system_refusing_o_direct_gets_the_same_bytes_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let out = File::create(&path).unwrap();
        let mut disk = Disk::new(&path, &out);
        // As where the open with O_DIRECT failed.
        disk.direct = None;
        let chunks = [bytes(DIRECT_BUF_BYTES, 9), bytes(11, 10)];
        for c in &chunks {
            let mut b = Aligned::new();
            assert_eq!(b.put(c), c.len());
            disk.write(&b).unwrap();
        }
        let whole = [bytes(1 << 20, 13), bytes(1 << 20, 14)];
        let batch: Vec<Arc<Body>> = whole.iter().map(|c| chunk(c, true)).collect();
        disk.write_chunks(&batch).unwrap();
        out.sync_all().unwrap();
        let want = [chunks.concat(), whole.concat()].concat();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn written_on_this_thread_alone_every_byte_lands_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let out = File::create(&path).unwrap();
        let mut chunks: Vec<Vec<u8>> = (0..5).map(|i| bytes(1 << 20, i)).collect();
        chunks.extend([bytes(3 << 20, 11), bytes((6 << 20) + 13, 12)]);
        let (tx, rx) = sync_channel(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            tx.send(chunk(c, i < 5)).unwrap();
        }
        drop(tx);
        write_inline(&path, &out, rx).unwrap();
        out.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), chunks.concat());
    }

    #[test]
    fn whole_buffers_only_and_nothing_at_all_are_written_exactly() {
        let chunks = vec![bytes(DIRECT_BUF_BYTES, 7), bytes(DIRECT_BUF_BYTES, 8)];
        assert_eq!(written(&chunks), chunks.concat());
        assert_eq!(written_as(&chunks, true), chunks.concat());
        assert!(written(&[]).is_empty());
    }
}
