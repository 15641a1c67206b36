//! The record of a file ([`Meta`]) and its serialisation under `meta/`, the facts counted
//! from content ([`ContentFacts`], [`ContentCounter`]), and reading a file with its record.

use super::*;

/// Per-file bookkeeping, stored as JSON in `meta/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Current version.
    pub version: Version,
    /// CRC32C of the content.
    pub checksum: u32,
    /// Content size in bytes, as last recorded.
    pub size: u64,
    /// Content mtime in nanoseconds, as last recorded; a mismatch means a hand edit.
    pub mtime_ns: i128,
    /// Whitespace-separated words.
    pub words: u64,
    /// Unicode scalar values.
    pub chars: u64,
    /// Unix milliseconds of the last content change.
    pub modified_ms: u64,
    /// Owner, if known (absent for hand-placed files).
    #[serde(default)]
    pub owner: Option<String>,
    /// Undo blob ids, newest last.
    #[serde(default)]
    pub undo: Vec<String>,
}

impl Meta {
    /// The wire form of this record for `file`.
    pub fn state(&self, file: &str) -> FileState {
        FileState {
            file: file.to_string(),
            version: self.version,
            checksum: self.checksum,
            size: self.size,
            words: self.words,
            chars: self.chars,
            modified_ms: self.modified_ms,
            owner: self.owner.clone(),
        }
    }
}

/// Facts about content computed from its bytes.
#[derive(Debug, Clone)]
pub struct ContentFacts {
    /// CRC32C of the content.
    pub checksum: u32,
    /// Bytes.
    pub size: u64,
    /// Mtime of the file the facts were taken from, in nanoseconds (0 for a stream).
    pub mtime_ns: i128,
    /// Whitespace-separated words.
    pub words: u64,
    /// Characters of the content read as UTF-8, invalid sequences counting one each.
    pub chars: u64,
}

/// Checksum, size, words and characters of content computed as its bytes stream past, so no
/// file is ever held whole in memory. The counts equal `document::count_words` and
/// `document::count_chars` over `String::from_utf8_lossy` of the whole content, so text and
/// binary content are counted alike however the bytes are split into chunks (see
/// [`TextCount`]).
#[derive(Debug, Default)]
pub struct ContentCounter {
    crc: u32,
    size: u64,
    /// None when only checksum and size are wanted (a replicated copy carries its counts), or
    /// while the text is being counted elsewhere (see [`ContentCounter::take_text`]).
    text: Option<TextCount>,
}

impl ContentCounter {
    /// A counter that has seen nothing.
    pub fn new() -> ContentCounter {
        ContentCounter {
            text: Some(TextCount::new()),
            ..ContentCounter::default()
        }
    }

    /// A counter of checksum and size only, for content whose counts are known already.
    pub fn bytes_only() -> ContentCounter {
        ContentCounter::default()
    }

    /// A counter standing for content of `size` bytes with `checksum` that was counted
    /// and verified when it arrived (an upload staged by the partner).
    pub fn known(size: u64, checksum: u32) -> ContentCounter {
        ContentCounter {
            crc: checksum,
            size,
            text: None,
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// CRC32C of the bytes seen so far.
    pub fn checksum(&self) -> u32 {
        self.crc
    }

    /// Takes the next bytes of the content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.size += bytes.len() as u64;
        if let Some(t) = self.text.as_mut() {
            t.update(bytes);
        }
    }

    /// [`ContentCounter::update`] for bytes whose CRC32C is known already (the frame they
    /// arrived in was verified against it): the checksum is combined, not computed again.
    pub fn update_known(&mut self, bytes: &[u8], crc: u32) {
        self.crc = crc32c::crc32c_combine(self.crc, crc, bytes.len());
        self.size += bytes.len() as u64;
        if let Some(t) = self.text.as_mut() {
            t.update(bytes);
        }
    }

    /// Takes the word and character counting out, so another thread can do it while this one
    /// receives and writes (the caller feeds it the same bytes and puts it back).
    pub fn take_text(&mut self) -> Option<TextCount> {
        self.text.take()
    }

    /// Puts back the counting taken by [`ContentCounter::take_text`].
    pub fn put_text(&mut self, text: TextCount) {
        self.text = Some(text);
    }

    /// The facts of everything seen (an unfinished sequence at the end counts as one char).
    pub fn finish(self, mtime_ns: i128) -> ContentFacts {
        let (words, chars) = self.text.as_ref().map_or((0, 0), TextCount::finish);
        ContentFacts {
            checksum: self.crc,
            size: self.size,
            mtime_ns,
            words,
            chars,
        }
    }
}

/// Largest piece [`copy_counting`] reads at once.
pub(super) const COPY_BUF_BYTES: usize = 256 * 1024;

/// Copies `from` into `to` in bounded pieces, feeding each piece to `counter`. `size_hint`
/// (the expected length) keeps the buffer small for small files: a scan adopts thousands.
pub fn copy_counting(
    from: &mut impl Read,
    to: &mut impl Write,
    counter: &mut ContentCounter,
    size_hint: u64,
) -> io::Result<()> {
    let len = usize::try_from(size_hint).map_or(COPY_BUF_BYTES, |n| n.clamp(1, COPY_BUF_BYTES));
    let mut buf = vec![0u8; len];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        counter.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}

pub(super) fn mtime_ns(md: &fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

impl Store {
    pub(super) fn read_meta(&self, file: &str) -> Option<Meta> {
        let bytes = self.fs.read(&self.meta_path(file)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(super) fn write_meta(&self, file: &str, meta: &Meta) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        self.fs
            .replace(&self.tmp, &self.meta_path(file), &bytes)
            .map_err(|e| self.io(file, e))
    }

    /// Writes bookkeeping atomically but without fsync. Scans use it: adopting 10,000 files
    /// with two fsyncs each takes far too long, and losing such a record in a crash only
    /// means the file is adopted again. The scan syncs the file system once at its end.
    pub(super) fn write_meta_relaxed(&self, file: &str, meta: &Meta) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(meta).map_err(|e| self.io(file, io::Error::other(e)))?;
        let target = self.meta_path(file);
        let tmp = durable::temp_path(&self.tmp);
        let res = (|| {
            self.fs.create_new(&tmp)?.write_all(&bytes)?;
            if let Some(parent) = target.parent() {
                self.fs.create_dir_all(parent)?;
            }
            self.fs.rename(&tmp, &target)
        })();
        if res.is_err() {
            let _ = self.fs.remove_file(&tmp);
        }
        res.map_err(|e| self.io(file, e))
    }

    pub(super) fn next_version(&self, old: Option<&Meta>) -> Version {
        let epoch = self.epoch.load(Ordering::SeqCst);
        match old {
            Some(m) => m.version.next(epoch),
            None => Version { epoch, counter: 1 },
        }
    }

    /// Opens the content for reading together with its bookkeeping, under the file lock, so
    /// the reader sees one whole version even if a commit replaces the file meanwhile.
    pub fn snapshot(&self, file: &str) -> Result<(File, Meta, bool), StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = self.current(file)?;
        let f = self
            .fs
            .open(&self.content_path(file))
            .map_err(|e| self.io(file, e))?;
        Ok((f, meta, adopted))
    }

    /// The content as text with its bookkeeping. Caller holds the lock.
    pub fn load_text(&self, file: &str) -> Result<(String, Meta, bool), StoreError> {
        let (meta, adopted) = self.current(file)?;
        let bytes = self
            .fs
            .read(&self.content_path(file))
            .map_err(|e| self.io(file, e))?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::NotText)?;
        Ok((text, meta, adopted))
    }

    /// What this copy holds of `file` (PEEK_FILE): its record, if any, and the versions of
    /// the history entries it holds.
    pub fn held(&self, file: &str) -> Result<Option<(Meta, Vec<Version>)>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = self.record_locked(file)? else {
            return Ok(None);
        };
        let blobs = meta
            .undo
            .iter()
            .filter(|id| self.fs.is_file(&self.undo.join(id)))
            .filter_map(|id| parse_blob_id(id).map(|(v, _)| v))
            .collect();
        Ok(Some((meta, blobs)))
    }

    /// `file`'s record as [`Store::held`] finds it, without looking at its history entries.
    pub fn record(&self, file: &str) -> Result<Option<Meta>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.record_locked(file)
    }

    /// [`Store::record`] with the file's lock held by the caller.
    pub(super) fn record_locked(&self, file: &str) -> Result<Option<Meta>, StoreError> {
        match self.current(file) {
            Ok((m, _)) => Ok(Some(m)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
