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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::MAX_BODY_BYTES;
    use crate::protocol::{decode, encode, Connection, ErrorCode, Message};
    use mio::{Events, Interest, Poll, Token};
    use std::time::{Duration, Instant};

    /// Serves one connection the way the event loop does (edge-triggered readiness, reads
    /// and writes until WouldBlock), echoing every frame, until the peer goes (at most 20 s).
    fn echo_loop(listener: std::net::TcpListener, tls: Option<Arc<ServerConfig>>) {
        let (sock, _) = listener.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut t = Transport::new(TcpStream::from_std(sock), tls);
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(
                t.sock_mut(),
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut events = Events::with_capacity(8);
        let (mut input, mut output, mut written) = (Vec::new(), Vec::new(), 0usize);
        let limit = Instant::now() + Duration::from_secs(20);
        while Instant::now() < limit {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match t.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
            while let Ok(Some(f)) = decode(&mut input) {
                output.extend_from_slice(&encode(&f.msg, &f.body));
            }
            let _ = t.flush_tls();
            while written < output.len() {
                match t.write(&output[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return,
                }
            }
        }
    }

    #[test]
    fn tls_frames_large_and_small_cross_the_non_blocking_transport() {
        let d = tempfile::tempdir().unwrap();
        crate::tls::init_dir(d.path(), &[]).unwrap();
        let tls = crate::tls::Tls::load_server(d.path()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cfg = tls.server_config();
        let server = std::thread::spawn(move || echo_loop(listener, cfg));
        let mut c = Connection::connect_tls(
            &addr,
            Duration::from_secs(5),
            tls.client_config(),
            &tls.ca_path(),
        )
        .unwrap();
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let big: Vec<u8> = (0..MAX_BODY_BYTES).map(|i| (i % 253) as u8).collect();
        // Two large frames at once: the echo's writes meet a full socket, so WouldBlock and
        // the records rustls holds are both exercised.
        c.send(&Message::Chunk {}, &big).unwrap();
        c.send(&Message::Chunk {}, &big).unwrap();
        c.send(&Message::End {}, &[]).unwrap();
        for _ in 0..2 {
            let f = c.recv_some().unwrap();
            assert!(f.msg == Message::Chunk {} && f.body == big);
        }
        assert_eq!(c.recv_some().unwrap().msg, Message::End {});
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_plain_peer_of_a_tls_transport_is_told_and_closed() {
        let d = tempfile::tempdir().unwrap();
        crate::tls::init_dir(d.path(), &[]).unwrap();
        let tls = crate::tls::Tls::load_server(d.path()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = tls.server_config();
        let server = std::thread::spawn(move || echo_loop(listener, cfg));
        let mut c = Connection::new(std::net::TcpStream::connect(addr).unwrap());
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let e = c.call(&Message::End {}, &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.msg.contains("--tls-dir"), "{e}");
        server.join().unwrap();
    }
}
