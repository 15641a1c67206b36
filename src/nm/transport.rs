//! One event-loop connection's bytes: plain TCP, or TLS over it, behind `Read`/`Write` with
//! the non-blocking (`WouldBlock`) semantics the loop already uses for plain sockets.
//!
//! With TLS on, the first byte decides: a TLS hello starts a rustls `ServerConnection`;
//! anything else is a peer speaking plain frames, which is told in a plain frame that it
//! needs `--tls-dir` and closed. Under TLS, reading drains decrypted bytes first, then reads
//! records off the socket until it would block (so an edge-triggered readiness event is never
//! left half-used); writing hands bytes to rustls (which buffers at most its own limit, so
//! `write` reports `WouldBlock` while the socket cannot take the records) and pushes records
//! out. Records left over (handshake answers, a reply's tail) go out on the next writable
//! event: [`Transport::flush_tls`], and a closing connection waits for them
//! ([`Transport::has_pending_output`]).

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// Bytes a refused plain peer's request is read off (bounded) before the refusal is written.
const REFUSE_DRAIN_BYTES: usize = 64 * 1024;

enum Mode {
    Plain,
    /// TLS required; nothing has arrived yet.
    Sniff(Arc<ServerConfig>),
    Tls(Box<ServerConnection>),
    /// A plain peer of a TLS-only server, already told so.
    Refused,
}

/// A connection's socket with its TLS state.
pub struct Transport {
    sock: TcpStream,
    mode: Mode,
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl Transport {
    /// Wraps an accepted socket; with `tls`, only TLS peers are served.
    pub fn new(sock: TcpStream, tls: Option<Arc<ServerConfig>>) -> Transport {
        let mode = match tls {
            Some(cfg) => Mode::Sniff(cfg),
            None => Mode::Plain,
        };
        Transport { sock, mode }
    }

    /// The socket, to register with the poll.
    pub fn sock_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Writes TLS records waiting in rustls until the socket would block.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        if let Mode::Tls(t) = &mut self.mode {
            while t.wants_write() {
                match t.write_tls(&mut self.sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether TLS records are still waiting for the socket.
    pub fn has_pending_output(&self) -> bool {
        matches!(&self.mode, Mode::Tls(t) if t.wants_write())
    }

    /// Tells a plain peer of a TLS-only server why it is refused (module docs).
    fn refuse_plain(&mut self) {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSE_DRAIN_BYTES {
            match self.sock.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        let e = crate::tls::plain_refused("name server");
        let _ = self.sock.write(&crate::protocol::encode(
            &crate::protocol::Message::err(e),
            &[],
        ));
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        self.mode = Mode::Refused;
    }

    fn read_tls(
        t: &mut ServerConnection,
        sock: &mut TcpStream,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match t.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A close without close_notify ends the stream like a plain close: frames
                // carry their own lengths and checksums.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match t.read_tls(sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = t.process_new_packets() {
                // The alert tells the peer why, best effort.
                let _ = t.write_tls(sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake answers leave now if the socket has room, else on the next writable
            // event.
            while t.wants_write() {
                match t.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Mode::Sniff(cfg) = &self.mode {
            let mut first = [0u8; 1];
            if self.sock.peek(&mut first)? == 0 {
                return Ok(0);
            }
            if first[0] == crate::tls::HANDSHAKE_BYTE {
                let conn = ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
                self.mode = Mode::Tls(Box::new(conn));
            } else {
                self.refuse_plain();
            }
        }
        match &mut self.mode {
            Mode::Plain => self.sock.read(buf),
            Mode::Tls(t) => Transport::read_tls(t, &mut self.sock, buf),
            Mode::Refused => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain connection to a TLS-only server",
            )),
            Mode::Sniff(_) => Err(would_block()),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.mode {
            // A peer that has not spoken yet gets plain bytes (only ever an ERR before close).
            Mode::Plain | Mode::Sniff(_) => self.sock.write(buf),
            Mode::Refused => Err(io::ErrorKind::BrokenPipe.into()),
            Mode::Tls(_) => {
                match self.flush_tls() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let Mode::Tls(t) = &mut self.mode else {
                    return Err(would_block());
                };
                let n = t.writer().write(buf)?;
                if n == 0 && !buf.is_empty() {
                    // rustls holds as many records as it may: wait for the socket.
                    return Err(would_block());
                }
                match self.flush_tls() {
                    Ok(()) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}
