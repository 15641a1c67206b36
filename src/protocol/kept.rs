//! Whether a connection kept open between requests may carry the next one.
//!
//! Clients keep their storage-server connection between commands (`client::sslink`) and the
//! name server keeps connections to storage servers between calls (`nm::sscall`). Either
//! peer may close a kept connection meanwhile (an idle timeout, a restart), and neither
//! server sends frames nobody asked for. So a kept connection is looked at before it is
//! used, in one system call that neither blocks nor consumes bytes: an end of stream, a
//! reset, or any byte waiting (which would be taken for the next reply) make it unfit.
//! A close that arrives after this look races with the request; each keeper decides what
//! it may do then (see its docs).

use super::Connection;

/// Whether the peer has closed `c`, or sent bytes nobody asked for (checked without blocking
/// and without consuming bytes, in one system call).
pub fn peer_closed(c: &Connection) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    // Bytes nobody asked for would be taken for the next reply, so a connection holding any is
    // as good as closed; so is an end of stream.
    match recv(
        c.stream().as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(_) => true,
        Err(e) => e != nix::errno::Errno::EAGAIN,
    }
}

/// Whether kept connection `c` may carry the next request: nothing unread waits in its
/// buffers and its peer has not closed it.
pub fn reusable(c: &mut Connection) -> bool {
    !c.has_buffered_input() && !peer_closed(c)
}
