//! Test hosts made of network namespaces: each process of a cluster can run on a "machine" of
//! its own, with its own address, all joined by one bridge.
//!
//! The bridge lives in a namespace of its own (the switch), and each host's veth pair is made
//! inside the switch with its other end moved straight into the host: nothing is added to the
//! machine's own network namespace, so concurrent tests never see each other's links, and the
//! same addresses (`10.232.0.0/24`) can be used by every test at once. Processes are started
//! with `ip netns exec NS PROGRAM`, which execs, so the PID the harness holds is the server's.
//!
//! Making namespaces needs root and `ip` (iproute2, installed by `scripts/deps.sh`);
//! [`Hosts::create`] says why it cannot, and the tests that need it print `SKIPPED` with that
//! reason. Dropping [`Hosts`] deletes every namespace, which deletes the veths and the bridge
//! inside them; processes must be stopped first (the cluster drops them before its hosts).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The /24 every test network uses (each test network is isolated in its own switch).
const SUBNET: &str = "10.232.0";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A set of test hosts on one isolated bridge.
pub struct Hosts {
    /// Prefix of every namespace name of this set (unique in the machine).
    tag: String,
    /// The namespace holding the bridge.
    switch: String,
    /// Host name → (namespace, address).
    hosts: BTreeMap<String, (String, String)>,
}

/// Runs `ip` with `args`; panics with its stderr on failure (the caller already knows
/// namespaces can be made, so a failure here is a broken test machine, not a skip).
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Hosts {
    /// An empty set of hosts with its switch, or why there can be none here.
    pub fn create() -> Result<Hosts, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => return Err("no `ip` command (iproute2)".into()),
        }
        let tag = format!(
            "pfs{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let switch = format!("{tag}-sw");
        let probe = Command::new("ip")
            .args(["netns", "add", &switch])
            .output()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if !probe.status.success() {
            return Err(format!(
                "cannot make a network namespace: {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        let h = Hosts {
            tag,
            switch,
            hosts: BTreeMap::new(),
        };
        ip(&["-n", &h.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &h.switch, "link", "set", "br0", "up"]);
        Ok(h)
    }

    /// Adds host `name` (its own namespace, address and veth to the bridge) and returns its
    /// address; an existing host's address is returned as it is.
    pub fn add(&mut self, name: &str) -> String {
        if let Some((_, addr)) = self.hosts.get(name) {
            return addr.clone();
        }
        let n = self.hosts.len() + 1;
        let ns = format!("{}-{n}", self.tag);
        let addr = format!("{SUBNET}.{n}");
        let port = format!("p{n}");
        ip(&["netns", "add", &ns]);
        // Record it before configuring, so a failure below still deletes it.
        self.hosts
            .insert(name.to_string(), (ns.clone(), addr.clone()));
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&["-n", &self.switch, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        addr
    }

    /// The namespace of host `name`.
    pub fn netns(&self, name: &str) -> String {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no test host {name}"))
            .0
            .clone()
    }

    /// The address of host `name`.
    pub fn addr(&self, name: &str) -> String {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no test host {name}"))
            .1
            .clone()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (ns, _) in self.hosts.values() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .output();
    }
}
