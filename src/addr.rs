//! Host and port text as the flags, the wire and the logs carry it.
//!
//! A host is a name or an IP address as given to `--host`, `--nm-host` or
//! `--advertise-host`. Joined with a port it becomes the `host:port` text a socket address is
//! parsed from, so an IPv6 address is bracketed there (`[::1]:6001`), never written bare
//! (`::1:6001` is not an address). Given hosts may already carry brackets (`[::1]`); they are
//! taken off where a bare address is wanted (binding, comparing) and put back when joining.
//!
//! The name server decides what address a storage server is reached at from two facts: the
//! host the server advertises and the address its registration arrives from
//! ([`reachable_host`]). A wildcard (`0.0.0.0`, `::`) is never an address a peer can use: it
//! is replaced by the address the registration came from. A loopback address is usable only by
//! peers on the same machine, so it is refused when the registration comes from another
//! machine (neither over loopback nor from the address it connected to): a client given it
//! would connect to itself.

use std::net::IpAddr;

/// `host` without the brackets an IPv6 address may be written with.
pub fn bare(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The `host:port` text for a host and a port: an IPv6 address is bracketed.
pub fn join(host: &str, port: u16) -> String {
    let h = bare(host);
    if h.contains(':') {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

/// True when `host` is an unspecified address (`0.0.0.0`, `::`): a socket bound there
/// listens on every interface, and no peer can connect to the address itself.
pub fn is_wildcard(host: &str) -> bool {
    bare(host)
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// True when `host` names this machine only: a loopback address (`127.0.0.0/8`, `::1`) or
/// `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let h = bare(host);
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the name server does with an advertised host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachable {
    /// The advertised host is usable as it is.
    AsGiven,
    /// The advertised host is a wildcard; peers reach the server at this address instead (the
    /// one its registration came from).
    Corrected(String),
    /// No peer could use the advertised host; the text says why and what to do.
    Refused(String),
}

/// Where a registration came from, as the name server's socket saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The peer's address.
    pub peer: IpAddr,
    /// The name server's own address on that connection.
    pub local: IpAddr,
}

impl Origin {
    /// True when the peer runs on the name server's own machine: it came over loopback, or
    /// from the very address it connected to (the kernel's choice of source address for a
    /// connection to one of the machine's own addresses).
    fn same_host(&self) -> bool {
        let peer = canonical(self.peer);
        peer.is_loopback() || peer == canonical(self.local)
    }
}

/// Judges the host a storage server named `name` advertises, given where its registration
/// arrived from (`None` when that is not known, as in unit tests of the core).
pub fn reachable_host(name: &str, advertised: &str, from: Option<Origin>) -> Reachable {
    let same_host = from.is_some_and(|o| o.same_host());
    let from = from.map(|o| canonical(o.peer));
    if is_wildcard(advertised) {
        return match from {
            Some(ip) if !ip.is_unspecified() => Reachable::Corrected(ip.to_string()),
            _ => Reachable::Refused(format!(
                "{name} advertises the wildcard address {advertised}, which no peer can \
                 connect to; start it with --advertise-host set to an address clients can reach"
            )),
        };
    }
    if is_loopback(advertised) && !same_host {
        if let Some(ip) = from {
            return Reachable::Refused(format!(
                "{name} advertises the loopback address {advertised} but registers from {ip}, \
                 so no other machine could reach it; start it with --advertise-host set to an \
                 address clients can reach (for example --advertise-host {ip})"
            ));
        }
    }
    Reachable::AsGiven
}

/// An IPv4 address that arrived as an IPv4-mapped IPv6 address (`::ffff:10.0.0.2`, on a
/// dual-stack socket) is written as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(peer: &str, local: &str) -> Origin {
        Origin {
            peer: peer.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed_once() {
        assert_eq!(join("::1", 6001), "[::1]:6001");
        assert_eq!(join("[::1]", 6001), "[::1]:6001");
        assert_eq!(join("127.0.0.1", 5000), "127.0.0.1:5000");
        assert_eq!(join("nm.example", 5000), "nm.example:5000");
        assert!(join("::1", 1).parse::<std::net::SocketAddr>().is_ok());
    }

    #[test]
    fn wildcards_and_loopbacks_are_recognised() {
        for w in ["0.0.0.0", "::", "[::]"] {
            assert!(is_wildcard(w), "{w}");
        }
        for l in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback(l), "{l}");
        }
        assert!(!is_wildcard("10.0.0.1"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("example.org"));
    }

    #[test]
    fn a_wildcard_becomes_the_address_the_registration_came_from() {
        let from = origin("10.1.0.3", "10.1.0.1");
        assert_eq!(
            reachable_host("ss1", "0.0.0.0", Some(from)),
            Reachable::Corrected("10.1.0.3".into())
        );
        let v6 = origin("fd00::3", "fd00::1");
        assert_eq!(
            reachable_host("ss1", "::", Some(v6)),
            Reachable::Corrected("fd00::3".into())
        );
        let mapped = origin("::ffff:10.1.0.3", "::ffff:10.1.0.1");
        assert_eq!(
            reachable_host("ss1", "::", Some(mapped)),
            Reachable::Corrected("10.1.0.3".into())
        );
        assert!(matches!(
            reachable_host("ss1", "0.0.0.0", None),
            Reachable::Refused(_)
        ));
    }

    #[test]
    fn loopback_is_refused_only_from_another_machine() {
        let here = origin("127.0.0.1", "127.0.0.1");
        // Connecting to one of its own machine's addresses, a peer comes from that address.
        let own = origin("10.1.0.1", "10.1.0.1");
        let there = origin("10.1.0.3", "10.1.0.1");
        assert_eq!(
            reachable_host("ss1", "127.0.0.1", Some(here)),
            Reachable::AsGiven
        );
        assert_eq!(
            reachable_host("ss1", "localhost", Some(own)),
            Reachable::AsGiven
        );
        match reachable_host("ss1", "127.0.0.1", Some(there)) {
            Reachable::Refused(m) => assert!(m.contains("--advertise-host 10.1.0.3"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reachable_host("ss1", "10.1.0.2", Some(there)),
            Reachable::AsGiven
        );
    }
}
