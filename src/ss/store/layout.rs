//! The on-disk layout (see the table in the parent module): the paths of a file's content and
//! record, file hashes, history entry (blob) ids, and the names of quarantine entries.

use super::*;

/// The name of the history entry holding `file`'s content at `version` with `checksum`: a
/// hash of the name keeps entries of different files apart in the one `undo/` directory, the
/// version and checksum make the name the same on every copy of the file.
pub fn blob_id(file: &str, version: Version, checksum: u32) -> String {
    format!(
        "{}-{}.{}-{checksum:08x}",
        file_hash(file),
        version.epoch,
        version.counter
    )
}

/// The first 16 hex digits of SHA-256 of a canonical name: how history entries and the
/// checkpoint directory of a file are named.
pub fn file_hash(file: &str) -> String {
    let h = Sha256::digest(file.as_bytes());
    hex::encode(&h[..8])
}

/// The version and checksum a history entry's name says it holds (None for names of another
/// form, such as entries written before entries were named by version).
pub fn parse_blob_id(id: &str) -> Option<(Version, u32)> {
    let mut parts = id.split('-');
    let _hash = parts.next()?;
    let (epoch, counter) = parts.next()?.split_once('.')?;
    let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    let version = Version {
        epoch: epoch.parse().ok()?,
        counter: counter.parse().ok()?,
    };
    Some((version, crc))
}

/// Makes the storage root 0700 when group or others may enter it (a directory created by an
/// older version, or by hand, with 0755): that alone puts everything under it out of their
/// reach, whatever the modes of the files inside.
pub(super) fn tighten_root(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(durable::DIR_MODE))?;
        log::warn!(target: crate::logging::ev::SS_STORAGE_MODE,
            dir = root.display().to_string(), was = format!("{mode:04o}");
            "storage directory {} had mode {mode:04o}; changed to 0700 so that only this \
             server's user can reach the stored files", root.display());
    }
    Ok(())
}

/// Collects the regular files under `dir` as `/`-joined paths relative to `base`.
/// Bytes a quarantine entry's name may add to its file's leaf: `.<epoch>-<counter>.meta` with
/// both numbers at their longest (20 digits each).
pub(super) const QUARANTINE_SUFFIX_MAX: usize = 47;

pub(super) fn leaf_of(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// The base name of `file`'s quarantine entries: its leaf, or, when the leaf is longer than
/// [`QUARANTINE_UNCUT_MAX`] (about what the longest suffix leaves of a component's 255
/// bytes), the leaf cut on a char boundary, `~` and the
/// file hash (so two long names never share entries; the `.meta` keeps the full name).
pub fn quarantine_base(file: &str) -> String {
    let leaf = leaf_of(file);
    if leaf.len() <= QUARANTINE_UNCUT_MAX {
        return leaf.to_string();
    }
    let mut cut = names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX - 17;
    while !leaf.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{}", &leaf[..cut], file_hash(file))
}

/// Longest leaf kept whole in a quarantine entry's name. A cut base is its leaf's first
/// 188–191 bytes (cut on a char boundary) plus `~` and 16 hex digits, so it is always longer
/// than this: no file's whole leaf can equal another file's cut base.
pub(super) const QUARANTINE_UNCUT_MAX: usize =
    names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX - 17 - 3;

/// Whether a quarantine base name is a cut one (see [`quarantine_base`]).
pub(super) fn is_cut_base(base: &str) -> bool {
    base.len() > QUARANTINE_UNCUT_MAX
        && base.len() <= names::MAX_COMPONENT_BYTES - QUARANTINE_SUFFIX_MAX
        && base.as_bytes()[base.len() - 17] == b'~'
        && base[base.len() - 16..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// Where `file`'s copy at `v` is set aside, relative to `quarantine/`: its folders, then
/// `<base>.<epoch>-<counter>` (see [`quarantine_base`]).
pub fn quarantine_rel(file: &str, v: Version) -> String {
    let base = quarantine_base(file);
    match file.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{base}.{}-{}", v.epoch, v.counter),
        None => format!("{base}.{}-{}", v.epoch, v.counter),
    }
}

/// Splits a quarantine entry's leaf name `<base>.<epoch>-<counter>` into its file's base name
/// and version; `None` for bookkeeping (`.meta`) and anything else.
pub fn parse_quarantine_name(leaf: &str) -> Option<(&str, Version)> {
    let (base, v) = leaf.rsplit_once('.')?;
    let (e, c) = v.split_once('-')?;
    let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !all_digits(e) || !all_digits(c) {
        return None;
    }
    Some((
        base,
        Version {
            epoch: e.parse().ok()?,
            counter: c.parse().ok()?,
        },
    ))
}

pub(super) fn walk(fs: &dyn Fs, base: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs.read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        let p = e.path();
        if ft.is_dir() {
            walk(fs, base, &p, out)?;
        } else if ft.is_file() {
            if let Ok(rel) = p.strip_prefix(base) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    Ok(())
}

impl Store {
    /// Path of the content of a canonical file name.
    pub fn content_path(&self, file: &str) -> PathBuf {
        self.files.join(file)
    }

    pub(super) fn meta_path(&self, file: &str) -> PathBuf {
        self.meta.join(file)
    }
}
