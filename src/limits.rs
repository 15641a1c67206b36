//! Process limits both servers apply at start: the descriptor limit, the connection cap that
//! follows from it, and the idle timeout flag's parsing.
//!
//! A server whose connections can use up every descriptor stops being able to open its own
//! store files, worker sockets or log files, and (under edge-triggered polling) may never be
//! woken again once `accept` fails. So at start the soft `RLIMIT_NOFILE` is raised to the hard
//! limit, and the connection cap is kept below it by a headroom for everything else the
//! process opens.

use crate::logging::ev;

/// What [`raise_nofile`] found: the descriptor limit now in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit after raising it (what `open`/`accept` are held to).
    pub soft: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit in force. A
/// failure to read or raise it is not fatal: the current soft limit (or a conservative 1024)
/// is returned and the cap follows from that.
pub fn raise_nofile() -> NoFile {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return NoFile { soft: 1024 };
    };
    // An unlimited hard limit is not a number the kernel accepts for the soft one
    // (nr_open caps it); a million is beyond any connection cap this program allows.
    let want = if hard == RLIM_INFINITY { 1 << 20 } else { hard };
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return NoFile { soft: want };
    }
    NoFile { soft }
}

/// The connection cap: `wanted`, lowered so that `headroom` descriptors (plus `per_conn - 1`
/// extra per connection, for servers whose connections open files) stay free below the
/// descriptor limit. Never below 1. Logs the outcome as `conn_limit` (at WARN when lowered).
pub fn cap_connections(
    server: &str,
    wanted: usize,
    nofile: NoFile,
    headroom: u64,
    per_conn: u64,
) -> usize {
    let soft = nofile.soft;
    // With a tiny limit the headroom cannot be had in full: keep half the descriptors for
    // connections rather than refusing every one.
    let room = soft
        .saturating_sub(headroom)
        .max(soft / 2)
        .max(per_conn.max(1));
    let fit = usize::try_from(room / per_conn.max(1)).unwrap_or(usize::MAX);
    let cap = wanted.min(fit).max(1);
    if cap < wanted {
        log::warn!(target: ev::CONN_LIMIT, server = server, max_connections = cap as u64, nofile = soft;
            "{server}: at most {cap} connections (not {wanted}): the descriptor limit is {soft}");
    } else {
        log::info!(target: ev::CONN_LIMIT, server = server, max_connections = cap as u64, nofile = soft;
            "{server}: at most {cap} connections; descriptor limit {soft}");
    }
    cap
}

/// Parses an idle timeout in seconds, fractions allowed (`0.3`), into milliseconds (at least
/// 1). For clap's `value_parser`.
pub fn parse_seconds_ms(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(format!("{s} must be more than 0 and at most 86400 seconds"));
    }
    Ok(((v * 1000.0).round() as u64).max(1))
}

/// Whether an accept error means the process or system ran out of descriptors (or kernel
/// memory for sockets): the pending connection stays queued and readiness will not repeat.
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_with_fractions_and_refuse_nonsense() {
        assert_eq!(parse_seconds_ms("60"), Ok(60_000));
        assert_eq!(parse_seconds_ms("0.3"), Ok(300));
        assert_eq!(parse_seconds_ms("0.0001"), Ok(1));
        assert!(parse_seconds_ms("0").is_err());
        assert!(parse_seconds_ms("-1").is_err());
        assert!(parse_seconds_ms("abc").is_err());
        assert!(parse_seconds_ms("inf").is_err());
    }

    #[test]
    fn cap_keeps_headroom_and_never_reaches_zero() {
        let nf = |soft| NoFile { soft };
        assert_eq!(cap_connections("t", 1024, nf(1024), 100, 1), 924);
        assert_eq!(cap_connections("t", 100, nf(1024), 100, 1), 100);
        assert_eq!(cap_connections("t", 1024, nf(64), 100, 1), 32);
        assert_eq!(cap_connections("t", 256, nf(1024), 64, 2), 256);
        assert_eq!(cap_connections("t", 1024, nf(1024), 64, 2), 480);
        assert_eq!(cap_connections("t", 5, nf(0), 64, 1), 1);
    }
}
