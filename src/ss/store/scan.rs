//! Adoption of content changed behind the store's back (on access or at startup), the
//! startup scan and the live listing, and verification of content against its record.

use super::*;

/// Threads a scan uses to adopt files.
pub(super) const SCAN_THREADS: usize = 4;

impl Store {
    /// Reads the content in bounded pieces and computes checksum and counts (what adoption
    /// and commits record).
    pub(super) fn facts(&self, file: &str) -> Result<ContentFacts, StoreError> {
        let path = self.content_path(file);
        let mut f = self.fs.open(&path).map_err(|e| self.io(file, e))?;
        let md = f.metadata().map_err(|e| self.io(file, e))?;
        let mut counter = ContentCounter::new();
        copy_counting(&mut f, &mut io::sink(), &mut counter, md.len() + 1)
            .map_err(|e| self.io(file, e))?;
        Ok(counter.finish(mtime_ns(&md)))
    }

    /// Takes content that disagrees with its bookkeeping (or has none) as a new version.
    pub(super) fn adopt(
        &self,
        file: &str,
        old: Option<Meta>,
        durable: bool,
    ) -> Result<Meta, StoreError> {
        self.settle(file)?;
        let f = self.facts(file)?;
        let meta = Meta {
            version: self.next_version(old.as_ref()),
            checksum: f.checksum,
            size: f.size,
            mtime_ns: f.mtime_ns,
            words: f.words,
            chars: f.chars,
            modified_ms: crate::auth::now_ms(),
            owner: old.as_ref().and_then(|m| m.owner.clone()),
            undo: old.map(|m| m.undo).unwrap_or_default(),
        };
        // A scan may adopt thousands of files: it logs them per file at debug level and
        // once in summary; an access logs its one adoption at info.
        let level = if durable {
            self.write_meta(file, &meta)?;
            log::Level::Info
        } else {
            self.write_meta_relaxed(file, &meta)?;
            log::Level::Debug
        };
        log::log!(target: ev::SS_ADOPT, level, file = file, version = meta.version.to_string();
            "adopted {file} as version {}", meta.version);
        Ok(meta)
    }

    /// The current bookkeeping of `file`, adopting the content first if it was changed by
    /// hand. Returns whether it adopted (the caller reports the change). Caller holds the lock.
    pub fn current(&self, file: &str) -> Result<(Meta, bool), StoreError> {
        self.current_with(file, true)
    }

    /// [`Store::current`], with the adopted record written durably or not (scans).
    pub(super) fn current_with(
        &self,
        file: &str,
        durable: bool,
    ) -> Result<(Meta, bool), StoreError> {
        let md = match self.fs.metadata(&self.content_path(file)) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Err(StoreError::NotFound(names::display(file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(names::display(file)))
            }
            Err(e) => return Err(self.io(file, e)),
        };
        match self.read_meta(file) {
            Some(m) if m.size == md.len() && m.mtime_ns == mtime_ns(&md) => Ok((m, false)),
            old => Ok((self.adopt(file, old, durable)?, true)),
        }
    }

    /// Drops the bookkeeping of a file whose content vanished (deleted by hand). Returns
    /// whether there was any, i.e. whether the name server should hear about it.
    pub fn forget_vanished(&self, file: &str) -> bool {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.fs.exists(&self.content_path(file)) {
            return false;
        }
        let Some(meta) = self.read_meta(file) else {
            return false;
        };
        if self.settle(file).is_err() {
            return false;
        }
        let _ = self.fs.remove(&self.meta_path(file));
        for b in meta.undo {
            let _ = self.fs.remove_file(&self.undo.join(b));
        }
        self.remove_checkpoints(file);
        log::info!(target: ev::SS_ADOPT, file = file; "{file} was removed by hand; forgetting it");
        true
    }

    /// FSCK of one copy: adopts a hand edit first (size or mtime changed: a new version, not
    /// corruption), then reads the bytes and recomputes their checksum, so bit rot (same size
    /// and mtime, other bytes) shows as a checksum differing from the bookkeeping's. `None`
    /// when this server holds no copy. Also says whether it adopted (the caller reports it).
    pub fn verify(&self, file: &str) -> Result<Option<(HeldCopy, Meta, bool)>, StoreError> {
        let lock = self.file_lock(file);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (meta, adopted) = match self.current(file) {
            Ok(x) => x,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut f = match self.fs.open(&self.content_path(file)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(file, e)),
        };
        let mut counter = ContentCounter::bytes_only();
        copy_counting(&mut f, &mut io::sink(), &mut counter, meta.size + 1)
            .map_err(|e| self.io(file, e))?;
        let held = HeldCopy {
            version: meta.version,
            checksum: meta.checksum,
            actual: counter.checksum(),
            size: counter.size(),
        };
        Ok(Some((held, meta, adopted)))
    }

    /// The startup scan: walks `files/` and `meta/`, adopts new or changed content, removes
    /// unfinished creates and unreferenced undo blobs, and returns the state of every file.
    /// Stats every file but reads only those whose size or mtime changed. Run it before
    /// serving: the clean-up would race with creates and commits in progress.
    pub fn scan(&self) -> Result<Vec<FileState>, StoreError> {
        let started = Instant::now();
        let out = self.walk_states(true)?;
        let ms = started.elapsed().as_millis() as u64;
        log::info!(target: ev::SS_SCAN, files = out.len() as u64, ms = ms;
            "scanned {} files in {ms} ms", out.len());
        Ok(out)
    }

    /// The state of every file (adopting hand edits), without the clean-up, so it is safe
    /// while serving (registration after a reconnect uses it).
    pub fn list(&self) -> Result<Vec<FileState>, StoreError> {
        self.walk_states(false)
    }

    /// The bookkeeping of each of `files`, adopting as needed (relaxed; see the walk).
    pub(super) fn states_of(&self, files: &[String]) -> Vec<(String, Meta, bool)> {
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let lock = self.file_lock(file);
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.current_with(file, false) {
                Ok((meta, adopted)) => out.push((file.clone(), meta, adopted)),
                Err(e) => {
                    log::warn!(target: ev::SS_SCAN, file = file.as_str(); "cannot scan {file}: {e}")
                }
            }
        }
        out
    }

    pub(super) fn walk_states(&self, cleanup: bool) -> Result<Vec<FileState>, StoreError> {
        let mut out = Vec::new();
        let mut referenced = HashSet::new();
        let mut names_seen = HashSet::new();
        let mut adopted_count = 0u64;
        let mut content = Vec::new();
        walk(&*self.fs, &self.files, &self.files, &mut content)
            .map_err(|e| self.io("files/", e))?;
        content.retain(|file| {
            let ok = names::canonical_file(file).ok().as_deref() == Some(file.as_str());
            if !ok {
                log::warn!(target: ev::SS_ADOPT, file = file.as_str(); "ignoring {file}: not a valid file name");
            }
            ok
        });
        // Adopting means creating a record per file, which is latency-bound on a busy disk:
        // a few threads overlap those waits.
        let per_thread = content.len().div_ceil(SCAN_THREADS).max(1);
        // A thread that died must fail the scan: a short list would make the name server
        // forget files this server holds.
        let results: Option<Vec<Vec<(String, Meta, bool)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = content
                .chunks(per_thread)
                .map(|chunk| scope.spawn(move || self.states_of(chunk)))
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        let results =
            results.ok_or_else(|| self.io("files/", io::Error::other("a scan thread failed")))?;
        for (file, meta, adopted) in results.into_iter().flatten() {
            adopted_count += u64::from(adopted);
            referenced.extend(meta.undo.iter().cloned());
            out.push(meta.state(&file));
            names_seen.insert(file);
        }
        if adopted_count > 0 {
            log::info!(target: ev::SS_ADOPT, files = adopted_count;
                "adopted {adopted_count} files that were new or changed on disk");
            // One sync for every record the walk wrote (see write_meta_relaxed).
            let synced = self.fs.sync_fs(&self.meta);
            synced.map_err(|e| self.io("meta/", e))?;
        }
        if !cleanup {
            return Ok(out);
        }
        let mut metas = Vec::new();
        walk(&*self.fs, &self.meta, &self.meta, &mut metas).map_err(|e| self.io("meta/", e))?;
        for m in metas {
            let file = m.as_str();
            if !names_seen.contains(file) && !self.fs.exists(&self.content_path(file)) {
                let _ = self.fs.remove(&self.meta.join(&m));
            }
        }
        let hashes: HashSet<String> = names_seen.iter().map(|f| file_hash(f)).collect();
        self.remove_stray_checkpoints(&hashes);
        if let Ok(rd) = self.fs.read_dir(&self.undo) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !referenced.contains(&name) {
                    let _ = self.fs.remove_file(&e.path());
                }
            }
        }
        Ok(out)
    }
}
