//! Addresses that work beyond one interface (SPEC §1, the several-hosts guide in README.md):
//! a storage server bound to a wildcard address is reached at the address its registration
//! came from, `--advertise-host` names the address outright, and a cluster runs on IPv6.

use crate::harness::*;

const PRIMARY: &str = "ss1";
const BACKUP: &str = "ss1_backup";

/// Create, write, read, then read again through the backup after a SIGKILL of the primary:
/// every address the name server handed out was one a client could use.
fn every_address_is_usable(c: &mut Cluster) {
    c.wait_event("nm", "replication_assign", |v| mentions(v, BACKUP), WAIT);
    c.client("alice")
        .run("CREATE a.txt\nWRITE a.txt 0\n0 Reached at a real address.\nETIRW\nREAD a.txt\n")
        .assert_code(0)
        .assert_contains("Reached at a real address.");
    wait_file_replicated(c, PRIMARY, BACKUP, "a.txt");
    c.kill_and_promote(PRIMARY);
    c.wait_readable("alice", "a.txt");
    c.client("alice")
        .run("READ a.txt\n")
        .assert_lines(&["Reached at a real address."]);
}

#[test]
fn a_storage_server_bound_to_the_wildcard_is_reached_where_it_registered_from() {
    let mut c = Cluster::builder()
        .pair()
        .ss_args(&["--host", "0.0.0.0"])
        .start();
    // The name server says what it did with the wildcard, for each member.
    for ss in [PRIMARY, BACKUP] {
        let v = c.wait_event(
            "nm",
            "nm_ss_register",
            |v| v["ss"] == ss && v["advertised"] == "0.0.0.0",
            WAIT,
        );
        assert_eq!(v["host"], "127.0.0.1", "{v}");
    }
    let status = c.client("alice").run("STATUS\n");
    status.assert_code(0).assert_lacks("0.0.0.0");
    every_address_is_usable(&mut c);
}

#[test]
fn advertise_host_names_the_address_clients_use() {
    // Listening everywhere, advertising loopback explicitly: the name server takes it as given.
    let mut c = Cluster::builder()
        .pair()
        .ss_args(&["--host", "0.0.0.0", "--advertise-host", "127.0.0.1"])
        .start();
    assert_eq!(
        c.log("nm")
            .count(Mark(0), "nm_ss_register", &|v| v["advertised"].is_string()),
        0,
        "an advertised address needs no correction"
    );
    every_address_is_usable(&mut c);
}

#[test]
fn a_cluster_runs_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIPPED: this machine has no IPv6 loopback");
        return;
    }
    let mut c = Cluster::builder()
        .pair()
        .nm_args(&["--host", "::1"])
        .ss_args(&["--host", "::1", "--nm-host", "::1"])
        .start();
    assert!(c.nm_addr().starts_with("[::1]:"), "{}", c.nm_addr());
    assert!(
        c.ss_addr(PRIMARY).starts_with("[::1]:"),
        "{}",
        c.ss_addr(PRIMARY)
    );
    every_address_is_usable(&mut c);
}
