//! Moving a name-server database written by an earlier release onto the current redb.
//!
//! Releases before this one stored `nm.redb` with redb 2, whose file format (v2) the current
//! redb refuses to open (`UpgradeRequired`). [`super::store::Store::open`] calls
//! [`from_redb2`] when it meets such a file; every table is copied, row by row, into a new
//! database, and the old file is kept beside it:
//!
//! 1. open `nm.redb` with redb 2 (its lock keeps another name server out while we copy);
//! 2. copy every table it lists (all are string to string) into `nm.redb.migrating`, in one
//!    durable write transaction, then fsync that file;
//! 3. hard-link `nm.redb` to `nm.redb.redb2.bak` and fsync the directory;
//! 4. rename `nm.redb.migrating` over `nm.redb` and fsync the directory.
//!
//! A crash before step 4 leaves the old `nm.redb` in place, and the next start migrates
//! again (a leftover `.migrating` file is removed, and a leftover backup link to the very same
//! file is replaced). A backup that is a different file is never overwritten: the start fails
//! and says so. The backup stays after a successful migration, for going back to the earlier
//! release; the operator removes it. The migration is logged as `nm_store_migrated`.

use super::store::{StoreError, DB_FILE};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a migration copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Tables copied, by name.
    pub tables: Vec<String>,
    /// Rows copied, over all tables.
    pub rows: u64,
    /// Where the old file is kept.
    pub backup: PathBuf,
}

/// The old file's name after the migration.
pub fn backup_path(dir: &Path) -> PathBuf {
    dir.join(format!("{DB_FILE}.redb2.bak"))
}

fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{DB_FILE}.migrating"))
}

fn fail(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Migrate(format!("{what}: {e}"))
}

/// Copies the redb-2 database `dir/nm.redb` into a current one that replaces it, keeping the
/// old file as [`backup_path`].
pub fn from_redb2(dir: &Path) -> Result<Migrated, StoreError> {
    let path = dir.join(DB_FILE);
    let old = match redb2::Database::open(&path) {
        Ok(db) => db,
        Err(redb2::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::InUse(path.display().to_string()))
        }
        Err(e) => return Err(fail("open the redb 2 database", e)),
    };
    let tmp = temp_path(dir);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove an unfinished migration", e)),
    }
    let (tables, rows) = copy_tables(&old, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail("sync the new database", e))?;

    let backup = backup_path(dir);
    keep_backup(&path, &backup)?;
    std::fs::rename(&tmp, &path).map_err(|e| fail("replace the database", e))?;
    crate::durable::fsync_dir(dir).map_err(|e| fail("sync the data directory", e))?;
    drop(old);
    log::info!(target: crate::logging::ev::NM_STORE_MIGRATED,
        from = "redb2", tables = tables.len(), rows = rows,
        backup = backup.display().to_string().as_str();
        "migrated {} from redb 2: {} tables, {rows} rows; the old file is kept as {}",
        path.display(), tables.len(), backup.display());
    Ok(Migrated {
        tables,
        rows,
        backup,
    })
}

/// Copies every table of `old` into a new database at `tmp`, in one durable transaction.
/// Returns the table names and the number of rows.
fn copy_tables(old: &redb2::Database, tmp: &Path) -> Result<(Vec<String>, u64), StoreError> {
    use redb2::ReadableTable as _;
    let new = redb::Database::create(tmp).map_err(|e| fail("create the new database", e))?;
    let read = old
        .begin_read()
        .map_err(|e| fail("read the redb 2 database", e))?;
    let mut write = new
        .begin_write()
        .map_err(|e| fail("write the new database", e))?;
    write
        .set_durability(redb::Durability::Immediate)
        .map_err(|e| fail("write the new database", e))?;
    let mut names = Vec::new();
    let mut rows = 0u64;
    let handles = read
        .list_tables()
        .map_err(|e| fail("list the redb 2 tables", e))?;
    for handle in handles {
        let name = redb2::TableHandle::name(&handle).to_string();
        let from = read
            .open_table(redb2::TableDefinition::<&str, &str>::new(&name))
            .map_err(|e| fail(&format!("open table {name}"), e))?;
        let mut to = write
            .open_table(redb::TableDefinition::<&str, &str>::new(&name))
            .map_err(|e| fail(&format!("create table {name}"), e))?;
        for item in from.iter().map_err(|e| fail(&format!("read {name}"), e))? {
            let (k, v) = item.map_err(|e| fail(&format!("read {name}"), e))?;
            to.insert(k.value(), v.value())
                .map_err(|e| fail(&format!("write {name}"), e))?;
            rows += 1;
        }
        names.push(name);
    }
    write
        .commit()
        .map_err(|e| fail("commit the new database", e))?;
    Ok((names, rows))
}

/// Makes `backup` a durable second name of `path`'s file. A leftover link to the same file
/// (an earlier migration that did not finish) is replaced; any other file there is an error.
fn keep_backup(path: &Path, backup: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    match std::fs::symlink_metadata(backup) {
        Ok(b) => {
            let p = std::fs::metadata(path).map_err(|e| fail("stat the database", e))?;
            if b.dev() != p.dev() || b.ino() != p.ino() {
                return Err(StoreError::Migrate(format!(
                    "{} already exists and is not the database being migrated; move it away first",
                    backup.display()
                )));
            }
            std::fs::remove_file(backup).map_err(|e| fail("replace the old backup link", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("stat the backup", e)),
    }
    std::fs::hard_link(path, backup).map_err(|e| fail("keep the old database", e))?;
    crate::durable::fsync_dir(dir).map_err(|e| fail("sync the data directory", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::store::Store;
    use super::*;

    /// Writes `rows` (table, key, value) into a redb 2 database at `dir/nm.redb`, as the
    /// earlier release stored them; `tables` are created even when empty.
    fn write_redb2(dir: &Path, tables: &[&str], rows: &[(&str, &str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        let db = redb2::Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        for t in tables {
            txn.open_table(redb2::TableDefinition::<&str, &str>::new(t))
                .unwrap();
        }
        for (t, k, v) in rows {
            let mut table = txn
                .open_table(redb2::TableDefinition::<&str, &str>::new(t))
                .unwrap();
            table.insert(*k, *v).unwrap();
        }
        txn.commit().unwrap();
    }

    const TABLES: &[&str] = &[
        "users",
        "files",
        "servers",
        "pairs",
        "pair_states",
        "jobs",
        "folders",
        "requests",
        "moves",
        "meta",
    ];

    const FILE: &str = r#"{"owner":"alice","ss":"ss1","version":{"epoch":1,"counter":2},"checksum":7,"size":3,"words":1,"chars":3,"created_ms":10,"modified_ms":20,"access":{"bob":true},"accessed_ms":30,"accessed_by":"bob","backup_version":null}"#;
    const JOB: &str = r#"{"target":"ss1_backup","file":"a.txt","want":{"kind":"content","version":{"epoch":1,"counter":2}},"attempts":3,"next_ms":99,"last_error":"refused","state":"PENDING","since_ms":7}"#;
    const REQUEST: &str = r#"{"id":2,"user":"bob","file":"a.txt","kind":"RW","created_ms":5}"#;

    fn old_rows() -> Vec<(&'static str, &'static str, &'static str)> {
        vec![
            ("users", "alice", r#"{"key":"ab12"}"#),
            ("users", "bob", "{}"),
            ("files", "docs/a.txt", FILE),
            (
                "servers",
                "ss1",
                r#"{"host":"127.0.0.1","client_port":6001,"backup_of":null}"#,
            ),
            ("pairs", "ss1", r#""ss1_backup""#),
            ("jobs", "ss1_backup\na.txt", JOB),
            ("folders", "docs", r#"{"owner":"alice","created_ms":3}"#),
            ("requests", "00000000000000000002", REQUEST),
            ("meta", "schema", "1"),
            ("meta", "next_request", "3"),
        ]
    }

    #[test]
    fn a_redb2_database_is_migrated_on_open_and_keeps_every_row() {
        let d = tempfile::tempdir().unwrap();
        write_redb2(d.path(), TABLES, &old_rows());
        let s = Store::open(d.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.users.iter().collect::<Vec<_>>(), vec!["alice", "bob"]);
        assert_eq!(l.user_keys["alice"], "ab12");
        let f = &l.files["docs/a.txt"];
        assert_eq!(
            (f.owner.as_str(), f.size, f.access["bob"]),
            ("alice", 3, true)
        );
        assert_eq!(l.servers["ss1"].client_port, 6001);
        assert_eq!(l.pairs["ss1"], "ss1_backup");
        assert_eq!(l.jobs["ss1_backup\na.txt"].attempts, 3);
        assert_eq!(l.folders["docs"].owner, "alice");
        assert_eq!(l.requests[&2].user, "bob");
        assert_eq!(l.next_request, 3);
        // The old file is kept, the temp file is gone, and the new file opens as is.
        assert!(backup_path(d.path()).exists());
        assert!(!temp_path(d.path()).exists());
        drop(s);
        let again = redb::Database::open(d.path().join(DB_FILE)).unwrap();
        drop(again);
        let old = redb2::Database::open(backup_path(d.path())).unwrap();
        drop(old);
        assert_eq!(
            Store::open(d.path()).unwrap().load().unwrap().files.len(),
            1
        );
    }

    #[test]
    fn the_copy_counts_every_table_and_row() {
        let d = tempfile::tempdir().unwrap();
        write_redb2(d.path(), TABLES, &old_rows());
        let m = from_redb2(d.path()).unwrap();
        let mut tables = m.tables.clone();
        tables.sort();
        let mut want: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(tables, want);
        assert_eq!(m.rows, old_rows().len() as u64);
    }

    #[test]
    fn an_interrupted_migration_is_redone() {
        let d = tempfile::tempdir().unwrap();
        write_redb2(d.path(), TABLES, &old_rows());
        // As a crash after step 3 leaves it: a half-written copy and a backup link.
        std::fs::write(temp_path(d.path()), b"half a database").unwrap();
        std::fs::hard_link(d.path().join(DB_FILE), backup_path(d.path())).unwrap();
        let l = Store::open(d.path()).unwrap().load().unwrap();
        assert_eq!(l.requests.len(), 1);
        assert!(!temp_path(d.path()).exists());
    }

    #[test]
    fn a_foreign_backup_file_stops_the_migration_untouched() {
        let d = tempfile::tempdir().unwrap();
        write_redb2(d.path(), TABLES, &old_rows());
        std::fs::write(backup_path(d.path()), b"something else").unwrap();
        let e = Store::open(d.path()).err().unwrap();
        assert!(e.to_string().contains("move it away first"), "{e}");
        assert_eq!(
            std::fs::read(backup_path(d.path())).unwrap(),
            b"something else"
        );
        // The old database is still the redb 2 one, whole.
        let old = redb2::Database::open(d.path().join(DB_FILE)).unwrap();
        let txn = old.begin_read().unwrap();
        let files = txn
            .open_table(redb2::TableDefinition::<&str, &str>::new("files"))
            .unwrap();
        assert!(redb2::ReadableTable::get(&files, "docs/a.txt")
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_file_that_is_no_database_is_an_error_not_a_crash() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(DB_FILE), vec![7u8; 9000]).unwrap();
        assert!(Store::open(d.path()).is_err());
    }
}
