//! A name server started on the database an earlier release wrote with redb 2 migrates it to
//! the current format (keeping the old file as `nm.redb.redb2.bak`) and serves everything it
//! held: users, files with their access, folders, pairs, replication jobs and access requests.

use crate::harness::*;

/// The rows as the earlier release stored them (every value is the JSON it wrote).
const ROWS: &[(&str, &str, &str)] = &[
    ("users", "alice", "{}"),
    ("users", "bob", "{}"),
    (
        "files",
        "docs/a.txt",
        r#"{"owner":"alice","ss":"ss1","version":{"epoch":1,"counter":2},"checksum":7,"size":3,"words":1,"chars":3,"created_ms":1700000000000,"modified_ms":1700000000000,"access":{"bob":true},"accessed_ms":null,"accessed_by":null,"backup_version":null}"#,
    ),
    (
        "servers",
        "ss1",
        r#"{"host":"127.0.0.1","client_port":1,"backup_of":null}"#,
    ),
    (
        "servers",
        "ss1_backup",
        r#"{"host":"127.0.0.1","client_port":2,"backup_of":"ss1"}"#,
    ),
    ("pairs", "ss1", r#""ss1_backup""#),
    (
        "jobs",
        "ss1_backup\ndocs/a.txt",
        r#"{"target":"ss1_backup","file":"docs/a.txt","want":{"kind":"content","version":{"epoch":1,"counter":2}},"attempts":0,"next_ms":0,"last_error":null,"state":"PENDING","since_ms":1700000000000}"#,
    ),
    (
        "folders",
        "docs",
        r#"{"owner":"alice","created_ms":1700000000000}"#,
    ),
    (
        "requests",
        "00000000000000000002",
        r#"{"id":2,"user":"bob","file":"docs/a.txt","kind":"R","created_ms":1700000000000}"#,
    ),
    ("meta", "schema", "1"),
    ("meta", "next_request", "3"),
];

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

/// Writes [`ROWS`] into a redb 2 database at `path`, creating every table.
fn write_redb2(path: &std::path::Path) {
    let db = redb2::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for t in TABLES {
        txn.open_table(redb2::TableDefinition::<&str, &str>::new(t))
            .unwrap();
    }
    for (t, k, v) in ROWS {
        let mut table = txn
            .open_table(redb2::TableDefinition::<&str, &str>::new(t))
            .unwrap();
        table.insert(*k, *v).unwrap();
    }
    txn.commit().unwrap();
}

fn check_served(c: &Cluster) {
    let alice = c.client("alice");
    alice
        .run("INFO /docs/a.txt\n")
        .assert_contains("Access: alice (RW), bob (RW)")
        .assert_code(0);
    alice
        .run("VIEWFOLDER /docs\n")
        .assert_contains("a.txt")
        .assert_code(0);
    let requests = alice.run("VIEWACCR\n");
    assert!(
        requests
            .lines()
            .iter()
            .any(|l| l.starts_with("| #2 | bob ") && l.contains("| R ")),
        "{requests:?}"
    );
    let status = alice.run("STATUS\n");
    status.assert_code(0);
    // The pair, and the replication job owed to its backup.
    assert!(
        status
            .lines()
            .iter()
            .any(|l| l.contains("ss1 -> ss1_backup") && l.contains("lag 1 job")),
        "{status:?}"
    );
}

#[test]
fn a_redb2_database_of_the_earlier_release_is_migrated_at_start() {
    let mut c = Cluster::builder().servers(&[]).start();
    assert_eq!(c.term("nm"), Some(0));
    let data = c.dir().join("nm");
    let db = data.join("nm.redb");
    std::fs::remove_file(&db).unwrap();
    write_redb2(&db);

    let since = c.mark("nm");
    c.restart("nm");
    let ev = c.wait_event_since("nm", since, "nm_store_migrated", |_| true, WAIT);
    assert_eq!(ev["rows"], ROWS.len(), "{ev}");
    assert_eq!(ev["tables"], TABLES.len(), "{ev}");
    assert!(data.join("nm.redb.redb2.bak").exists());
    assert!(!data.join("nm.redb.migrating").exists());
    check_served(&c);
    // The request counter survived: the next id is 3, never a reused one.
    c.client("carol")
        .run("RACC /docs/a.txt W\n")
        .assert_lines(&["Access request created with ID #3"]);

    // The migrated file is the database from now on: no second migration, nothing lost.
    assert_eq!(c.term("nm"), Some(0));
    let since = c.mark("nm");
    c.restart("nm");
    check_served(&c);
    assert_eq!(c.log("nm").count(since, "nm_store_migrated", &|_| true), 0);
    assert!(c
        .client("alice")
        .run("VIEWACCR\n")
        .lines()
        .iter()
        .any(|l| l.starts_with("| #3 | carol ")));
}
