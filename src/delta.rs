//! Delta transfer of a stale copy: content-defined chunks, signatures and copy/literal ops.
//! This module is the pure part; the worker's relay is `nm/replication/delta.rs`, the storage
//! server's side `ss/server/delta.rs`, and both point here.
//!
//! A target holding an older copy of a large file sends a *signature* of it: its content cut
//! into chunks at content-defined boundaries (a gear rolling hash whose high bits pick a cut,
//! so an insertion moves only the boundaries next to it), each described by its length and
//! XXH3-128. The source cuts its current content the same way and sends a stream of *ops*:
//! "copy these bytes of your old copy" for every chunk the signature lists, the bytes
//! themselves for the rest. The target rebuilds the content from its old copy and the
//! literals, then verifies size and checksum as for a full transfer; any mismatch makes the
//! worker fall back to a full transfer.
//!
//! # When
//!
//! When PEEK_FILE shows the target holding an older copy of at least `--delta-min-bytes`
//! ([`DELTA_MIN_BYTES`]; smaller copies are sent whole, 0 turns delta off) and at most
//! [`DELTA_MAX_BYTES`] ([`worth_it`]): the target reads its copy whole twice before the first
//! op lands (the signature, the basis check), the worker waits on it the frame timeout plus
//! [`read_wait_ms`] (the copy's size at 50 MB/s), and a larger copy goes whole at once
//! without that read.
//!
//! # The exchange
//!
//! 1. The worker asks the target for a SIGNATURE of its copy: chunks of average 2^15 = 32 KiB,
//!    growing with the file so a signature stays under 32k chunks ([`Params::for_size`]; min
//!    a quarter of the average, max four times), [`ENTRY_BYTES`] a chunk, at most
//!    [`MAX_SIGNATURE_ENTRIES`] chunks (else the copy goes whole), so the signature is one
//!    frame body of at most 1.25 MiB. SIGNED names the state (version, checksum) it
//!    describes. XXH3-128 is not collision-resistant against a crafted input: the CRC32C
//!    check of the rebuilt content stands behind it, and only the crafter's own file is at
//!    risk.
//! 2. The worker passes it as the body of GET_FILE_DELTA (a GET_FILE_CONTENT that also names
//!    the target's copy by version and checksum: that copy stands for the history entry of
//!    its version, so the source does not send that entry when its own entry of that version
//!    has the same checksum, and sends it as ops otherwise). The source cuts its current
//!    content and streams ops instead of the content part: COPY (offset and length in the old
//!    copy; adjacent copies merge) and LITERAL, each frame body holding whole ops. A frame
//!    goes out once its ops rebuild 8 MiB however few bytes they take, so the target rebuilds
//!    while the source still cuts and a file of repeated content still sends a frame every
//!    8 MiB.
//! 3. The worker relays the stream into PUT_FILE_DELTA (PUT_FILE_CONTENT naming the basis
//!    version and checksum; every part of it is ops). The target opens its copy under the
//!    file lock and refuses unless it is still at the basis by its record and by a whole read
//!    of its bytes against the basis checksum (bit rot must not rebuild content nor become a
//!    history entry). It rebuilds the content into `tmp/` by positioned reads of the old copy
//!    and the literals (an op reaching past the old copy or the declared size breaks the
//!    protocol), verifies size and CRC32C and installs exactly as for a full copy. Only for a
//!    PUT_FILE_DELTA, and only with that verified basis, the install links the copy it
//!    replaces in as the history entry of its own version when the source did not send it,
//!    next to the renames of the received entries, and removes that link if the install
//!    fails; a copy sent whole must carry every entry the target lacks.
//!
//! The history entries and checkpoints the target lacks go the same way, each as ops against
//! the same old copy (the versions between the target's and the current one are mostly the
//! same bytes), so ten changes to a large file while its backup was away cost about ten times
//! the changed chunks, not ten times the file. A success is logged `replication_delta` with
//! the bytes sent and the signature's size. In a batch, jobs whose target holds a large stale
//! copy leave the batch and run this way on their own.
//!
//! # Failure
//!
//! Any failure (an old server without these messages, a signature refused, a copy that
//! changed since its signature, rebuilt content that does not verify, a broken connection) is
//! logged `replication_delta_fallback` and the same job sends the file whole at once, so a
//! wrong copy is never installed. A failed delta costs what it did before failing plus the
//! whole transfer: at worst the target's two whole reads of its copy, the signature's frame,
//! the source's cut of every part and the op stream, and the target's rebuild into `tmp/`.
//!
//! Everything here is pure and bounded: a chunk is at most [`Params::max`] bytes, a signature
//! at most [`MAX_SIGNATURE_ENTRIES`] entries, and an op stream travels in frame bodies of at
//! most [`CHUNK_BYTES`] that each hold whole ops. Every process stays bounded: a chunk buffer
//! of at most twice the largest chunk, one op frame, the signature and its hash index.

use crate::protocol::frame::CHUNK_BYTES;
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

/// Stale copies at least this large are caught up by delta; smaller ones are sent whole
/// (the default of `bin_nm --delta-min-bytes`).
pub const DELTA_MIN_BYTES: u64 = 1 << 20;

/// The threshold in force in this process (see [`set_min_bytes`]).
static MIN_BYTES: AtomicU64 = AtomicU64::new(DELTA_MIN_BYTES);

/// Sets the size from which a stale copy is caught up by delta; 0 turns delta off. A name
/// server sets it once at start (`--delta-min-bytes`).
pub fn set_min_bytes(n: u64) {
    MIN_BYTES.store(n, Ordering::Relaxed);
}

/// Stale copies larger than this are sent whole at once: the target reads its copy whole
/// twice (the signature, then the check of the basis) before the first op lands, which must
/// stay within [`read_wait_ms`], and the signature must stay within its entry cap.
pub const DELTA_MAX_BYTES: u64 = 16 << 30;

/// The slowest whole-file read of a target's copy a worker waits for, in bytes per ms
/// (50 MB/s: a disk under load).
pub const READ_BYTES_PER_MS: u64 = 50_000;

/// Whether a stale copy of `size` bytes is caught up by delta.
pub fn worth_it(size: u64) -> bool {
    let min = MIN_BYTES.load(Ordering::Relaxed);
    min > 0 && size >= min && size <= DELTA_MAX_BYTES
}

/// How long, beyond the usual frame timeout, a worker waits for a target to read its copy
/// of `size` bytes whole (the signature before SIGNED, the basis check before the first op
/// is taken): the read's time at [`READ_BYTES_PER_MS`].
pub fn read_wait_ms(size: u64) -> u64 {
    size / READ_BYTES_PER_MS
}
/// Most chunks a signature may list (bounds its size to 1.25 MiB, one frame body).
pub const MAX_SIGNATURE_ENTRIES: usize = 65_536;
/// Bytes of one signature entry: XXH3-128 (16, little endian) and the chunk length (4).
pub const ENTRY_BYTES: usize = 20;
/// Smallest and largest average chunk size, as powers of two (32 KiB and 1 MiB).
pub const MIN_AVG_BITS: u32 = 15;
/// See [`MIN_AVG_BITS`].
pub const MAX_AVG_BITS: u32 = 20;
/// Chunks a signature aims for at most: the average grows with the file to stay under it.
const TARGET_CHUNKS: u64 = 32_768;

/// Op code: copy `len` bytes at `offset` of the old copy (u64 offset, u64 len).
const OP_COPY: u8 = 1;
/// Op code: the `len` bytes that follow (u32 len, then the bytes).
const OP_LITERAL: u8 = 2;
/// Bytes of a COPY op.
const COPY_OP_BYTES: usize = 17;
/// Bytes of a LITERAL op's head.
const LITERAL_HEAD_BYTES: usize = 5;
/// Ops buffered since the last frame that rebuild this many bytes go out at once, so the
/// target rebuilds while the source is still cutting, and a frame follows a frame within the
/// time of cutting 8 MiB: a 1 GiB file unchanged but at its end is not one op at the end, and
/// a file of repeated content (every chunk a copy of the first, none adjacent, 17 bytes an
/// op) is not a single frame after minutes of cutting.
const COPY_RUN_BYTES: u64 = 8 << 20;

/// How content is cut: average 2^`avg_bits` bytes, min a quarter of that, max four times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Log2 of the average chunk size.
    pub avg_bits: u32,
}

impl Params {
    /// The parameters for content of `size` bytes: about [`TARGET_CHUNKS`] chunks at most.
    pub fn for_size(size: u64) -> Params {
        let mut bits = MIN_AVG_BITS;
        while bits < MAX_AVG_BITS && (size >> bits) > TARGET_CHUNKS {
            bits += 1;
        }
        Params { avg_bits: bits }
    }

    /// Checked parameters from the wire.
    pub fn from_wire(avg_bits: u32) -> Option<Params> {
        (MIN_AVG_BITS..=MAX_AVG_BITS)
            .contains(&avg_bits)
            .then_some(Params { avg_bits })
    }

    /// Smallest chunk (but the last).
    pub fn min(&self) -> usize {
        1 << (self.avg_bits - 2)
    }

    /// Largest chunk.
    pub fn max(&self) -> usize {
        1 << (self.avg_bits + 2)
    }

    fn mask(&self) -> u64 {
        // The high bits of a gear hash depend on the last 64 bytes.
        !0u64 << (64 - self.avg_bits)
    }
}

/// The gear table: 256 fixed pseudo-random words (splitmix64 of the byte), the same on
/// every server.
const GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    let mut s: u64 = 0x7061_6972_6673_6364; // "pairfscd"
    while i < 256 {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        t[i] = z ^ (z >> 31);
        i += 1;
    }
    t
}

/// The length of the first chunk of `data` (which holds at least [`Params::max`] bytes unless
/// it is the end of the content).
pub fn cut(data: &[u8], p: Params) -> usize {
    let (min, max) = (p.min(), p.max());
    if data.len() <= min {
        return data.len();
    }
    let end = data.len().min(max);
    let mask = p.mask();
    // The hash starts 64 bytes before the minimum (it is full there: a byte leaves it after
    // 64 shifts), and a cut may come right after the minimum.
    let mut h = 0u64;
    for b in &data[min.saturating_sub(64)..min - 1] {
        h = (h << 1).wrapping_add(GEAR[usize::from(*b)]);
    }
    data[min - 1..end]
        .iter()
        .position(|b| {
            h = (h << 1).wrapping_add(GEAR[usize::from(*b)]);
            h & mask == 0
        })
        .map_or(end, |i| min + i)
}

/// Cuts what `r` yields into chunks and hands each to `f`, in order, holding at most a few
/// times [`Params::max`] bytes.
pub fn for_each_chunk<R: Read>(
    r: &mut R,
    p: Params,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let cap = (2 * p.max()).max(CHUNK_BYTES);
    let mut buf = vec![0u8; cap];
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    loop {
        if !eof && end - start < p.max() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < cap {
                match r.read(&mut buf[end..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if start == end {
            return Ok(());
        }
        let n = cut(&buf[start..end], p);
        f(&buf[start..start + n])?;
        start += n;
    }
}

/// The strong hash of a chunk.
pub fn strong(chunk: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(chunk)
}

/// Why a signature could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SigError {
    /// More than [`MAX_SIGNATURE_ENTRIES`] chunks: the copy is sent whole.
    #[error("the signature would list more than {MAX_SIGNATURE_ENTRIES} chunks")]
    TooLarge,
    /// A malformed signature body.
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    /// Reading the content failed.
    #[error("reading the old copy: {0}")]
    Io(#[from] io::Error),
}

/// The signature of what `r` yields, encoded as its wire body (entries of [`ENTRY_BYTES`]).
pub fn signature<R: Read>(r: &mut R, p: Params) -> Result<Vec<u8>, SigError> {
    let mut out = Vec::new();
    let mut count = 0usize;
    let mut too_large = false;
    for_each_chunk(r, p, |c| {
        count += 1;
        if count > MAX_SIGNATURE_ENTRIES {
            too_large = true;
            return Err(io::Error::other("too many chunks"));
        }
        out.extend_from_slice(&strong(c).to_le_bytes());
        // A chunk is at most 4 MiB, so its length fits.
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        Ok(())
    })
    .map_err(|e| {
        if too_large {
            SigError::TooLarge
        } else {
            SigError::Io(e)
        }
    })?;
    Ok(out)
}

/// The chunks of the old copy, found by hash: where each starts and how long it is.
pub struct Index {
    by_hash: HashMap<u128, (u64, u32)>,
    /// Bytes the signature covers (the old copy's size).
    pub size: u64,
}

impl Index {
    /// Reads a signature body of `count` entries.
    pub fn parse(body: &[u8], count: u64) -> Result<Index, SigError> {
        if count > MAX_SIGNATURE_ENTRIES as u64 {
            return Err(SigError::TooLarge);
        }
        if body.len() as u64 != count * ENTRY_BYTES as u64 {
            return Err(SigError::Malformed("its length does not match its count"));
        }
        let mut by_hash = HashMap::with_capacity(body.len() / ENTRY_BYTES);
        let mut offset = 0u64;
        for e in body.chunks_exact(ENTRY_BYTES) {
            let (h, l) = e.split_at(16);
            let mut hb = [0u8; 16];
            hb.copy_from_slice(h);
            let mut lb = [0u8; 4];
            lb.copy_from_slice(l);
            let len = u32::from_le_bytes(lb);
            if len == 0 {
                return Err(SigError::Malformed("an empty chunk"));
            }
            by_hash
                .entry(u128::from_le_bytes(hb))
                .or_insert((offset, len));
            offset += u64::from(len);
        }
        Ok(Index {
            by_hash,
            size: offset,
        })
    }

    /// Where a chunk with these bytes lies in the old copy, if it has one.
    pub fn find(&self, chunk: &[u8]) -> Option<(u64, u64)> {
        self.by_hash
            .get(&strong(chunk))
            .filter(|(_, len)| *len as usize == chunk.len())
            .map(|(off, len)| (*off, u64::from(*len)))
    }
}

/// What an op stream carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    /// Bytes taken from the old copy.
    pub copied: u64,
    /// Bytes sent as literals.
    pub literal: u64,
    /// Bytes of the encoded stream (what travels).
    pub wire: u64,
}

/// Encodes ops into frame bodies of at most [`CHUNK_BYTES`], each holding whole ops;
/// consecutive copies of adjacent old bytes merge into one.
pub struct OpWriter {
    buf: Vec<u8>,
    pending: Option<(u64, u64)>,
    /// Bytes of output the ops since the last frame rebuild (the pending copy included).
    covered: u64,
    /// What was encoded so far.
    pub stats: OpStats,
}

impl Default for OpWriter {
    fn default() -> Self {
        OpWriter::new()
    }
}

impl OpWriter {
    /// An empty writer.
    pub fn new() -> OpWriter {
        OpWriter {
            buf: Vec::with_capacity(CHUNK_BYTES),
            pending: None,
            covered: 0,
            stats: OpStats::default(),
        }
    }

    /// Copy `len` bytes at `offset` of the old copy.
    pub fn copy(
        &mut self,
        offset: u64,
        len: u64,
        emit: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.stats.copied += len;
        self.covered += len;
        match &mut self.pending {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => {
                self.flush_copy(emit)?;
                self.pending = Some((offset, len));
            }
        }
        if self.covered >= COPY_RUN_BYTES {
            self.flush_copy(emit)?;
            self.emit(emit)?;
        }
        Ok(())
    }

    /// These bytes as they are.
    pub fn literal(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.flush_copy(emit)?;
        self.stats.literal += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_BYTES.saturating_sub(self.buf.len() + LITERAL_HEAD_BYTES);
            if room < 4096 {
                self.emit(emit)?;
                continue;
            }
            let n = room.min(data.len());
            self.buf.push(OP_LITERAL);
            self.buf.extend_from_slice(&(n as u32).to_le_bytes());
            self.buf.extend_from_slice(&data[..n]);
            self.covered += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Emits what is left.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.flush_copy(emit)?;
        if !self.buf.is_empty() {
            self.emit(emit)?;
        }
        Ok(())
    }

    fn flush_copy(&mut self, emit: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let Some((off, len)) = self.pending.take() else {
            return Ok(());
        };
        if self.buf.len() + COPY_OP_BYTES > CHUNK_BYTES {
            self.emit(emit)?;
            // This op goes in the next frame.
            self.covered = len;
        }
        self.buf.push(OP_COPY);
        self.buf.extend_from_slice(&off.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }

    fn emit(&mut self, emit: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.stats.wire += self.buf.len() as u64;
        let r = emit(&self.buf);
        self.buf.clear();
        // A copy still pending is in no frame yet: only its later growth counts again.
        self.covered = 0;
        r
    }
}

/// Cuts what `r` yields, looks each chunk up in `index`, and writes the ops that rebuild it
/// from the old copy.
pub fn encode<R: Read>(
    r: &mut R,
    p: Params,
    index: &Index,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<OpStats> {
    let mut w = OpWriter::new();
    for_each_chunk(r, p, |c| match index.find(c) {
        Some((off, len)) => w.copy(off, len, &mut emit),
        None => w.literal(c, &mut emit),
    })?;
    w.finish(&mut emit)?;
    Ok(w.stats)
}

/// One decoded op.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Copy `len` bytes at `offset` of the old copy.
    Copy {
        /// Where in the old copy.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// These bytes.
    Literal(&'a [u8]),
}

/// Decodes the ops of one frame body, in order (whole ops only; a cut op is an error).
pub fn decode(mut body: &[u8]) -> impl Iterator<Item = Result<Op<'_>, &'static str>> {
    std::iter::from_fn(move || {
        let (&code, rest) = body.split_first()?;
        let r = match code {
            OP_COPY if rest.len() >= 16 => {
                let (a, b) = rest[..16].split_at(8);
                let offset = u64::from_le_bytes(a.try_into().unwrap_or_default());
                let len = u64::from_le_bytes(b.try_into().unwrap_or_default());
                body = &rest[16..];
                Ok(Op::Copy { offset, len })
            }
            OP_LITERAL if rest.len() >= 4 => {
                let n = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
                let rest = &rest[4..];
                if rest.len() < n {
                    body = &[];
                    Err("a literal runs past its frame")
                } else {
                    body = &rest[n..];
                    Ok(Op::Literal(&rest[..n]))
                }
            }
            _ => {
                body = &[];
                Err("an unknown or cut op")
            }
        };
        Some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    fn chunks(d: &[u8], p: Params) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_chunk(&mut &d[..], p, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .expect("chunking memory");
        out
    }

    /// Applies an op stream to `old`, as the target does.
    fn rebuild(old: &[u8], bodies: &[Vec<u8>]) -> Result<Vec<u8>, &'static str> {
        let mut out = Vec::new();
        for b in bodies {
            for op in decode(b) {
                match op? {
                    Op::Copy { offset, len } => {
                        let (o, l) = (offset as usize, len as usize);
                        out.extend_from_slice(old.get(o..o + l).ok_or("past the old copy")?);
                    }
                    Op::Literal(d) => out.extend_from_slice(d),
                }
            }
        }
        Ok(out)
    }

    fn delta(old: &[u8], new: &[u8], p: Params) -> (Vec<Vec<u8>>, OpStats) {
        let sig = signature(&mut &old[..], p).expect("signature");
        let index = Index::parse(&sig, (sig.len() / ENTRY_BYTES) as u64).expect("parse");
        assert_eq!(index.size, old.len() as u64);
        let mut bodies = Vec::new();
        let stats = encode(&mut &new[..], p, &index, |b| {
            assert!(b.len() <= CHUNK_BYTES);
            bodies.push(b.to_vec());
            Ok(())
        })
        .expect("encode");
        (bodies, stats)
    }

    #[test]
    fn chunks_respect_bounds_and_cover_the_content() {
        let p = Params { avg_bits: 15 };
        let d = data(3 << 20, 7);
        let cs = chunks(&d, p);
        assert_eq!(cs.concat(), d);
        for c in &cs[..cs.len() - 1] {
            assert!(c.len() >= p.min() && c.len() <= p.max(), "{}", c.len());
        }
        let avg = d.len() / cs.len();
        assert!(avg > 16 << 10 && avg < 96 << 10, "average {avg}");
    }

    #[test]
    fn boundaries_are_stable_under_an_insertion() {
        let p = Params { avg_bits: 15 };
        let old = data(4 << 20, 11);
        let mut new = old.clone();
        new.splice(2 << 20..2 << 20, b"an inserted sentence.".iter().copied());
        let (a, b) = (chunks(&old, p), chunks(&new, p));
        let shared = b.iter().filter(|c| a.contains(c)).count();
        // All but the chunk or two around the insertion are found again.
        assert!(shared + 3 >= b.len(), "{shared} of {} shared", b.len());
    }

    #[test]
    fn ops_rebuild_the_new_content_from_the_old() {
        let p = Params::for_size(4 << 20);
        let old = data(4 << 20, 3);
        let mut new = old.clone();
        new[1_000_000..1_004_096].copy_from_slice(&data(4096, 99));
        new.splice(3 << 20..3 << 20, b"inserted".iter().copied());
        new.extend_from_slice(b"appended sentence.");
        let (bodies, stats) = delta(&old, &new, p);
        assert_eq!(rebuild(&old, &bodies).expect("rebuild"), new);
        assert_eq!(stats.copied + stats.literal, new.len() as u64);
        assert!(stats.wire < 1 << 20, "{} bytes on the wire", stats.wire);
        // Adjacent copies merge: a few ops, not one per chunk.
        let ops: usize = bodies.iter().map(|b| decode(b).count()).sum();
        assert!(ops < 20, "{ops} ops");
    }

    #[test]
    fn unrelated_or_empty_content_goes_as_literals() {
        let p = Params::for_size(0);
        let (bodies, stats) = delta(&data(300_000, 1), &data(2_500_000, 2), p);
        assert_eq!(stats.copied, 0);
        assert_eq!(rebuild(&[], &bodies).expect("rebuild"), data(2_500_000, 2));
        let (bodies, stats) = delta(b"", b"", p);
        assert!(bodies.is_empty());
        assert_eq!(stats, OpStats::default());
    }

    #[test]
    fn malformed_signatures_and_ops_are_refused() {
        assert!(matches!(
            Index::parse(&[0; 19], 1),
            Err(SigError::Malformed(_))
        ));
        assert!(matches!(
            Index::parse(&[0; 20], 1),
            Err(SigError::Malformed(_))
        ));
        assert!(matches!(
            Index::parse(&[], MAX_SIGNATURE_ENTRIES as u64 + 1),
            Err(SigError::TooLarge)
        ));
        assert!(decode(&[9, 0, 0]).any(|r| r.is_err()));
        assert!(decode(&[OP_LITERAL, 10, 0, 0, 0, 1]).any(|r| r.is_err()));
        assert!(decode(&[OP_COPY, 1, 2]).any(|r| r.is_err()));
        assert!(Params::from_wire(3).is_none() && Params::from_wire(16).is_some());
    }

    #[test]
    fn repeated_content_still_goes_out_a_frame_every_few_mib() {
        // Zeros (every chunk a copy of the first, no two copies adjacent) and a repeated
        // pattern: each frame rebuilds at most COPY_RUN_BYTES and a chunk, however few
        // bytes its ops take, so the target hears from the source regularly.
        let mut pattern = data(200_000, 9).repeat(200);
        pattern.truncate(40 << 20);
        for new in [vec![0u8; 64 << 20], pattern] {
            let p = Params::for_size(new.len() as u64);
            let (bodies, stats) = delta(&new, &new, p);
            assert_eq!(rebuild(&new, &bodies).expect("rebuild"), new);
            assert_eq!(stats.literal, 0);
            for b in &bodies {
                let covered: u64 = decode(b)
                    .map(|op| match op.expect("op") {
                        Op::Copy { len, .. } => len,
                        Op::Literal(d) => d.len() as u64,
                    })
                    .sum();
                assert!(covered <= COPY_RUN_BYTES + p.max() as u64, "{covered}");
            }
            assert!(bodies.len() as u64 >= new.len() as u64 / (COPY_RUN_BYTES + p.max() as u64));
        }
    }

    #[test]
    fn only_sizes_the_target_can_read_in_time_go_by_delta() {
        assert!(worth_it(DELTA_MIN_BYTES) && worth_it(DELTA_MAX_BYTES));
        assert!(!worth_it(DELTA_MIN_BYTES - 1) && !worth_it(DELTA_MAX_BYTES + 1));
        // The largest copy's signature lists about half the entry cap (content that cuts
        // far more often than average is refused by the cap and goes whole).
        let p = Params::for_size(DELTA_MAX_BYTES);
        assert!(DELTA_MAX_BYTES >> p.avg_bits <= MAX_SIGNATURE_ENTRIES as u64 / 2);
        // A 16 GiB copy is given minutes, a 1 MiB one no more than the frame timeout.
        assert!(read_wait_ms(DELTA_MAX_BYTES) > 300_000);
        assert_eq!(read_wait_ms(DELTA_MIN_BYTES), 20);
    }

    #[test]
    fn the_average_grows_with_the_file_to_bound_the_signature() {
        assert_eq!(Params::for_size(1 << 20).avg_bits, MIN_AVG_BITS);
        assert_eq!(Params::for_size(1 << 30).avg_bits, 15);
        assert_eq!(Params::for_size(4 << 30).avg_bits, 17);
        assert_eq!(Params::for_size(1 << 50).avg_bits, MAX_AVG_BITS);
    }
}
