//! Setting copies aside under `quarantine/` and listing what is there.

use super::*;

impl Store {
    /// Sets this copy of `file` aside into `quarantine/` unless it is at version `keep`.
    /// Returns the quarantined content's path relative to the storage directory, or `None`
    /// when there was nothing to set aside. Caller holds the lock.
    pub fn quarantine(
        &self,
        file: &str,
        keep: Option<Version>,
    ) -> Result<Option<String>, StoreError> {
        self.settle(file)?;
        let meta = self.read_meta(file);
        let content = self.content_path(file);
        let has_content = self.fs.exists(&content);
        if !has_content && meta.is_none() {
            return Ok(None);
        }
        if meta.as_ref().is_some_and(|m| Some(m.version) == keep) && has_content {
            return Ok(None);
        }
        let v = meta.as_ref().map_or(
            Version {
                epoch: 0,
                counter: 0,
            },
            |m| m.version,
        );
        let rel = quarantine_rel(file, v);
        let dest = self.quarantine.join(&rel);
        let dir = dest
            .parent()
            .map_or_else(|| self.quarantine.clone(), Path::to_path_buf);
        self.fs
            .create_dirs_durable(&dir)
            .map_err(|e| self.io(file, e))?;
        // The same version was set aside before (a retried job): that entry and its
        // bookkeeping are kept as they are.
        let kept = has_content && self.fs.exists(&dest);
        let meta_dest = self.quarantine.join(format!("{rel}.meta"));
        // The bookkeeping first, with the file's full name (a long leaf is cut in the entry's
        // name): a crash before the content moves leaves the entry's name known.
        let shortened = quarantine_base(file) != leaf_of(file);
        if (meta.is_some() || shortened) && !(kept && self.fs.exists(&meta_dest)) {
            let mut doc = match &meta {
                Some(m) => serde_json::to_value(m),
                None => Ok(serde_json::Value::Object(Default::default())),
            }
            .map_err(|e| self.io(file, io::Error::other(e)))?;
            if let Some(o) = doc.as_object_mut() {
                o.insert("file".into(), serde_json::Value::String(file.to_string()));
            }
            let bytes = serde_json::to_vec(&doc).map_err(|e| self.io(file, io::Error::other(e)))?;
            self.fs
                .replace(&self.tmp, &meta_dest, &bytes)
                .map_err(|e| self.io(file, e))?;
        }
        if kept {
            self.fs.remove(&content).map_err(|e| self.io(file, e))?;
        } else if has_content {
            self.fs
                .rename(&content, &dest)
                .map_err(|e| self.io(file, e))?;
            self.fs.sync_dir(&dir).map_err(|e| self.io(file, e))?;
            if let Some(parent) = content.parent() {
                self.fs.sync_dir(parent).map_err(|e| self.io(file, e))?;
            }
        }
        self.fs
            .remove(&self.meta_path(file))
            .map_err(|e| self.io(file, e))?;
        Ok(Some(format!("quarantine/{rel}")))
    }

    /// Versions of `file` set aside under `quarantine/`, oldest first. The quarantine
    /// directory may not exist (nothing was ever set aside).
    pub fn quarantined(&self, file: &str) -> Result<Vec<Version>, StoreError> {
        let path = self.quarantine.join(file);
        let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
            return Ok(Vec::new());
        };
        let base = base.to_string_lossy();
        let short = quarantine_base(file);
        let rd = match self.fs.read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(file, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| self.io(file, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some((b, v)) = parse_quarantine_name(&name) {
                // `base`: an entry named before long leaves were cut, unless it has the form
                // of another file's cut name.
                let ours = b == short || (b == base && !is_cut_base(b));
                if ours && e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    out.push(v);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Quarantine entries of files this server holds no copy of (FSCK lists them apart from
    /// any file's line), at most `cap`, sorted; plus how many more there are.
    pub fn quarantine_orphans(
        &self,
        cap: usize,
    ) -> Result<(Vec<QuarantineEntry>, u64), StoreError> {
        let mut names = Vec::new();
        match walk(&*self.fs, &self.quarantine, &self.quarantine, &mut names) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(self.io("quarantine/", e)),
        }
        let mut entries: Vec<QuarantineEntry> = names
            .iter()
            .filter_map(|rel| {
                let (dir, leaf) = match rel.rsplit_once('/') {
                    Some((d, l)) => (Some(d), l),
                    None => (None, rel.as_str()),
                };
                let (base, version) = parse_quarantine_name(leaf)?;
                let file = match dir {
                    Some(d) => format!("{d}/{base}"),
                    None => base.to_string(),
                };
                // A cut leaf: the full name is in the entry's bookkeeping.
                let file = match is_cut_base(base) {
                    true => self
                        .quarantined_name(rel)
                        .filter(|f| quarantine_rel(f, version) == *rel)
                        .unwrap_or(file),
                    false => file,
                };
                let canonical = names::canonical_file(&file).ok()? == file;
                (canonical && !self.fs.is_file(&self.content_path(&file)))
                    .then_some(QuarantineEntry { file, version })
            })
            .collect();
        entries.sort_by(|a, b| (&a.file, a.version).cmp(&(&b.file, b.version)));
        let more = entries.len().saturating_sub(cap) as u64;
        entries.truncate(cap);
        Ok((entries, more))
    }

    /// The full file name a quarantine entry's bookkeeping (`<rel>.meta`) records.
    pub(super) fn quarantined_name(&self, rel: &str) -> Option<String> {
        let bytes = self
            .fs
            .read(&self.quarantine.join(format!("{rel}.meta")))
            .ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        doc.get("file")?.as_str().map(str::to_string)
    }
}
