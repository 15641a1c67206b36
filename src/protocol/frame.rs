//! Framing: how a [`Message`] and its optional raw body travel on a byte stream.
//!
//! A frame is one header line of JSON terminated by `\n`, then exactly `len` raw body bytes:
//!
//! ```text
//! {"v":1,"op":"CHUNK","len":5,"crc":3363354025}\nhello
//! ```
//!
//! * `v` is [`PROTOCOL_VERSION`]; any other value is refused.
//! * `len` (default 0) is the body length; `crc` is the CRC32C of the body, required when
//!   `len > 0`. File content is never put inside the JSON.
//! * The header line is at most [`MAX_HEADER_BYTES`] including its `\n`; a body is at most
//!   [`MAX_BODY_BYTES`]. Larger content travels as a sequence of CHUNK frames.
//!
//! Decoding is pure: [`decode`] looks at a buffer and returns `Ok(None)` when the frame is not
//! complete yet, which is the normal case on a non-blocking socket, not an error.

use super::error::{ErrorCode, WireError};
use super::message::{Message, PROTOCOL_VERSION};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest header line accepted, including the newline.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest body of one frame.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Body size used for CHUNK frames carrying file content.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Most entries in one FILE_BATCH frame (keeps the header under its cap for long names too).
pub const FILE_BATCH_MAX: usize = 100;
/// Header bytes one page of a paged listing (FILE_LIST, USERS) may fill; well under
/// [`MAX_HEADER_BYTES`] even when its last row is the longest a name allows.
pub const PAGE_BUDGET_BYTES: usize = 32 * 1024;

/// Splits `rows` into pages whose estimated encoded size stays within [`PAGE_BUDGET_BYTES`];
/// always at least one page (possibly empty), so a listing always gets an answer.
pub fn paginate<T>(rows: Vec<T>, size_of: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut pages = vec![Vec::new()];
    let mut used = 0;
    for row in rows {
        let n = size_of(&row);
        if used + n > PAGE_BUDGET_BYTES && !pages.last().is_some_and(Vec::is_empty) {
            pages.push(Vec::new());
            used = 0;
        }
        used += n;
        if let Some(p) = pages.last_mut() {
            p.push(row);
        }
    }
    pages
}

/// A decoded frame: the message and its body (empty when the header declared none).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The message.
    pub msg: Message,
    /// Raw body bytes.
    pub body: Vec<u8>,
}

/// Why a byte stream could not be decoded. Every variant is the peer's fault; the connection
/// should be answered with an ERR (where possible) and closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// No newline within [`MAX_HEADER_BYTES`].
    #[error("header line longer than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLong,
    /// The header is not a JSON object we understand.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// A protocol version we do not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u64),
    /// Declared body above [`MAX_BODY_BYTES`].
    #[error("declared body of {0} bytes exceeds the limit of {MAX_BODY_BYTES}")]
    BodyTooLarge(u64),
    /// Body bytes do not match the declared CRC32C.
    #[error("body checksum mismatch")]
    BadChecksum,
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> WireError {
        let code = match e {
            FrameError::BodyTooLarge(_) | FrameError::HeaderTooLong => ErrorCode::Limit,
            _ => ErrorCode::Invalid,
        };
        WireError::new(code, e.to_string())
    }
}

/// Appends the encoding of `msg` with `body` to `out`.
pub fn encode_into(out: &mut Vec<u8>, msg: &Message, body: &[u8]) {
    encode_header(out, msg, body);
    out.extend_from_slice(body);
}

/// Appends only the header line (with its newline) of the frame carrying `msg` and `body`.
fn encode_header(out: &mut Vec<u8>, msg: &Message, body: &[u8]) {
    let crc = if body.is_empty() {
        0
    } else {
        crc32c::crc32c(body)
    };
    encode_header_with(out, msg, body.len(), crc);
}

/// [`encode_header`] for a body of `len` bytes whose CRC32C is `crc`.
fn encode_header_with(out: &mut Vec<u8>, msg: &Message, len: usize, crc: u32) {
    let mut value = serde_json::to_value(msg).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("v".into(), PROTOCOL_VERSION.into());
        if len > 0 {
            map.insert("len".into(), (len as u64).into());
            map.insert("crc".into(), crc.into());
        }
    }
    // serde_json never emits a raw newline inside a JSON document, so the line is unambiguous.
    let _ = serde_json::to_writer(&mut *out, &value);
    out.push(b'\n');
}

/// Encodes one frame into a fresh buffer.
pub fn encode(msg: &Message, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    encode_into(&mut out, msg, body);
    out
}

/// Tries to take one whole frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (nothing is consumed), `Ok(Some(frame))` after
/// removing the frame's bytes from `buf`, and `Err` when the bytes can never form a valid frame.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    Ok(decode_crc(buf)?.map(|(f, _)| f))
}

/// [`decode`], also returning the CRC32C of the frame's body (verified against it; 0 for
/// no body).
fn decode_crc(buf: &mut Vec<u8>) -> Result<Option<(Frame, u32)>, FrameError> {
    let scan = buf.len().min(MAX_HEADER_BYTES);
    let Some(nl) = buf[..scan].iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_HEADER_BYTES {
            Err(FrameError::HeaderTooLong)
        } else {
            Ok(None)
        };
    };
    let (msg, len, crc) = parse_header(&buf[..nl])?;
    let total = nl + 1 + len;
    if buf.len() < total {
        return Ok(None);
    }
    if len > 0 && crc32c::crc32c(&buf[nl + 1..total]) != crc.unwrap_or(0) {
        return Err(FrameError::BadChecksum);
    }
    let body = buf[nl + 1..total].to_vec();
    buf.drain(..total);
    Ok(Some((Frame { msg, body }, crc.unwrap_or(0))))
}

/// The total encoded size of the frame at the front of `buf` once its header line is
/// complete, so a reader can wait for the whole body without parsing the header again for
/// every piece that arrives. `None` while the header is incomplete or invalid (then
/// [`decode`] reports why).
fn frame_total(buf: &[u8]) -> Option<usize> {
    let scan = buf.len().min(MAX_HEADER_BYTES);
    let nl = buf[..scan].iter().position(|&b| b == b'\n')?;
    let (_, len, _) = parse_header(&buf[..nl]).ok()?;
    Some(nl + 1 + len)
}

/// Parses a header line (without its newline) into the message, body length and CRC.
fn parse_header(line: &[u8]) -> Result<(Message, usize, Option<u32>), FrameError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| FrameError::BadHeader("header is not a JSON object".into()))?;
    let v = map.remove("v").and_then(|v| v.as_u64()).unwrap_or(0);
    if v != u64::from(PROTOCOL_VERSION) {
        return Err(FrameError::BadVersion(v));
    }
    let len = match map.remove("len") {
        None => 0,
        Some(l) => l
            .as_u64()
            .ok_or_else(|| FrameError::BadHeader("len is not a number".into()))?,
    };
    if len > MAX_BODY_BYTES as u64 {
        return Err(FrameError::BodyTooLarge(len));
    }
    let crc = match map.remove("crc") {
        None if len > 0 => return Err(FrameError::BadHeader("body without crc".into())),
        None => None,
        Some(c) => Some(
            c.as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| FrameError::BadHeader("crc is not a u32".into()))?,
        ),
    };
    let msg: Message =
        serde_json::from_value(value).map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok((msg, len as usize, crc))
}

/// Errors of a blocking [`Connection`].
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed or timed out.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a frame.
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the connection before a whole frame arrived.
    #[error("connection closed by peer")]
    Closed,
}

impl From<ConnError> for WireError {
    fn from(e: ConnError) -> WireError {
        match e {
            ConnError::Frame(f) => f.into(),
            ConnError::Io(ref io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                WireError::new(
                    ErrorCode::Timeout,
                    format!("peer did not answer in time ({e})"),
                )
            }
            other => WireError::new(ErrorCode::Unavailable, other.to_string()),
        }
    }
}

/// A blocking framed connection: owns the socket and the read buffer, so partial frames are
/// never lost between calls. Used by the storage server, the client, and the name server's
/// worker threads (the name server's event loop uses [`decode`] directly).
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Total size of the frame at the front of `buf` once its header has been read.
    need: Option<usize>,
    /// CRC32C of the body of the frame last taken off the buffer.
    body_crc: u32,
}

/// Most bytes one read asks for while the size of the next frame is not known yet.
const READ_BYTES: usize = 64 * 1024;
/// Most bytes one read asks for while a body of known size arrives.
const MAX_READ_BYTES: usize = 256 * 1024;
/// Bodies at least this large are written without copying them behind their header.
const LARGE_BODY_BYTES: usize = 64 * 1024;

impl Connection {
    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream) -> Connection {
        let _ = stream.set_nodelay(true);
        Connection {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            need: None,
            body_crc: 0,
        }
    }

    /// Connects to `addr` (first resolved address) within `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Connection> {
        let sa: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve {addr}"),
            )
        })?;
        let stream = TcpStream::connect_timeout(&sa, timeout)?;
        Ok(Connection::new(stream))
    }

    /// The socket, for timeouts and shutdown.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sets both read and write timeouts (`None` blocks forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(t)?;
        self.stream.set_write_timeout(t)
    }

    /// CRC32C of the body of the frame [`Connection::recv`] last returned, which it was
    /// verified against (0 for a frame without a body). A relay or a running checksum can
    /// use it instead of reading the body once more.
    pub fn body_crc(&self) -> u32 {
        self.body_crc
    }

    /// Writes one frame whose body's CRC32C the caller knows already (from the frame it
    /// arrived in, [`Connection::body_crc`]). A wrong `crc` makes the peer refuse the frame.
    pub fn send_with_crc(&mut self, msg: &Message, body: &[u8], crc: u32) -> io::Result<()> {
        let mut head = Vec::with_capacity(128);
        encode_header_with(&mut head, msg, body.len(), crc);
        self.stream.write_all(&head)?;
        self.stream.write_all(body)
    }

    /// Writes one frame.
    pub fn send(&mut self, msg: &Message, body: &[u8]) -> io::Result<()> {
        if body.len() < LARGE_BODY_BYTES {
            let bytes = encode(msg, body);
            return self.stream.write_all(&bytes);
        }
        // A large body is written from where it lies rather than copied behind its header.
        let mut head = Vec::with_capacity(128);
        encode_header(&mut head, msg, body);
        self.stream.write_all(&head)?;
        self.stream.write_all(body)
    }

    /// Reads what the socket has into the buffer: at most the rest of the frame being
    /// received when its size is known (so a large body arrives in few reads and is never
    /// followed by bytes that must be moved later; at most [`MAX_READ_BYTES`] at a time), else
    /// at most [`READ_BYTES`].
    fn fill(&mut self) -> io::Result<usize> {
        let have = self.buf.len();
        // The room a read gets is zeroed first, and whatever the read leaves unfilled is
        // zeroed again by the next one: capping it keeps that linear in the body's size.
        let want = match self.need {
            Some(total) if total > have => (total - have).min(MAX_READ_BYTES),
            _ => READ_BYTES,
        };
        self.buf.resize(have + want, 0);
        let res = self.stream.read(&mut self.buf[have..]);
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(have + n);
        res
    }

    /// Takes the next frame off the buffer if it is complete, remembering the size of a frame
    /// whose header has arrived but whose body has not.
    fn take_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(total) = self.need {
            if self.buf.len() < total {
                return Ok(None);
            }
        }
        self.need = None;
        match decode_crc(&mut self.buf)? {
            Some((f, crc)) => {
                self.body_crc = crc;
                Ok(Some(f))
            }
            None => {
                self.need = frame_total(&self.buf);
                Ok(None)
            }
        }
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream between frames. Waits as long as
    /// the socket's read timeout allows for each read.
    pub fn recv(&mut self) -> Result<Option<Frame>, ConnError> {
        self.recv_until(None)
    }

    /// Reads one frame that must be complete by `deadline`: unlike a per-read timeout, a peer
    /// trickling a byte at a time cannot hold the connection past it. `Ok(None)` on a clean end
    /// of stream between frames; a missed deadline is an `Io` error of kind `TimedOut`.
    pub fn recv_by(&mut self, deadline: Instant) -> Result<Option<Frame>, ConnError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(Some(f));
            }
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(
                        io::Error::new(io::ErrorKind::TimedOut, "frame deadline passed").into(),
                    );
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            let n = match self.fill() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // With a deadline, an expired read timeout (WouldBlock on Unix) loops to the
                // check above, which reports the missed deadline as TimedOut.
                Err(e) if deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Closed)
                };
            }
        }
    }

    /// Reads one frame, treating end of stream as an error.
    pub fn recv_some(&mut self) -> Result<Frame, ConnError> {
        self.recv()?.ok_or(ConnError::Closed)
    }

    /// Sends a request and reads one reply; an ERR reply becomes `Err(WireError)`.
    pub fn call(&mut self, msg: &Message, body: &[u8]) -> Result<Frame, WireError> {
        self.send(msg, body).map_err(ConnError::from)?;
        let f = self.recv_some()?;
        let msg = f.msg.into_result()?;
        Ok(Frame { msg, body: f.body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Version;
    use proptest::prelude::*;

    fn sample(i: u8) -> Message {
        match i % 4 {
            0 => Message::Create {
                file: "a.txt".into(),
            },
            1 => Message::Chunk {},
            2 => Message::ReadOk {
                size: 7,
                version: Version {
                    epoch: 1,
                    counter: 3,
                },
                checksum: 42,
            },
            _ => Message::Err {
                code: ErrorCode::NotFound,
                msg: "no \"such\"\nfile".into(),
            },
        }
    }

    #[test]
    fn incomplete_is_none_not_error() {
        let bytes = encode(&Message::Chunk {}, b"hello");
        for cut in 0..bytes.len() {
            let mut buf = bytes[..cut].to_vec();
            assert_eq!(decode(&mut buf), Ok(None));
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn endless_line_is_refused() {
        let mut buf = vec![b'x'; MAX_HEADER_BYTES];
        assert_eq!(decode(&mut buf), Err(FrameError::HeaderTooLong));
    }

    #[test]
    fn huge_body_is_refused_before_reading_it() {
        let mut buf = br#"{"v":1,"op":"CHUNK","len":99999999999,"crc":1}"#.to_vec();
        buf.push(b'\n');
        assert!(matches!(decode(&mut buf), Err(FrameError::BodyTooLarge(_))));
    }

    #[test]
    fn flipped_body_byte_is_refused() {
        let mut bytes = encode(&Message::Chunk {}, b"hello");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode(&mut bytes), Err(FrameError::BadChecksum));
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut buf = b"{\"v\":9,\"op\":\"DONE\"}\n".to_vec();
        assert_eq!(decode(&mut buf), Err(FrameError::BadVersion(9)));
    }

    #[test]
    fn a_relayed_body_keeps_the_checksum_it_arrived_with() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let mut c = Connection::new(TcpStream::connect(addr).unwrap());
            let body = b"relayed bytes".to_vec();
            c.send(&Message::Chunk {}, &body).unwrap();
            c.send_with_crc(&Message::Chunk {}, &body, crc32c::crc32c(&body))
                .unwrap();
            c.send(&Message::End {}, &[]).unwrap();
            // A wrong checksum is the peer's to refuse.
            c.send_with_crc(&Message::Chunk {}, &body, 7).unwrap();
        });
        let (stream, _) = listener.accept().unwrap();
        let mut conn = Connection::new(stream);
        for _ in 0..2 {
            let f = conn.recv_some().unwrap();
            assert_eq!(f.body, b"relayed bytes");
            assert_eq!(conn.body_crc(), crc32c::crc32c(b"relayed bytes"));
        }
        assert_eq!(conn.recv_some().unwrap().msg, Message::End {});
        assert_eq!(conn.body_crc(), 0);
        assert!(matches!(
            conn.recv_some(),
            Err(ConnError::Frame(FrameError::BadChecksum))
        ));
        peer.join().unwrap();
    }

    #[test]
    fn a_trickling_peer_cannot_hold_a_connection_past_the_frame_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let peer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // One byte every 50 ms: a per-read timeout of 300 ms would never fire.
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                if s.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let mut conn = Connection::new(stream);
        let start = Instant::now();
        let got = conn.recv_by(start + Duration::from_millis(300));
        let took = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        peer.join().unwrap();
        assert!(
            matches!(got, Err(ConnError::Io(ref e)) if e.kind() == io::ErrorKind::TimedOut),
            "{got:?}"
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn pages_stay_under_the_budget_and_keep_order() {
        let rows: Vec<String> = (0..10_000).map(|i| format!("file-{i:05}.txt")).collect();
        let pages = paginate(rows.clone(), |r| r.len() + 100);
        assert!(pages.len() > 1);
        for p in &pages {
            assert!(p.iter().map(|r| r.len() + 100).sum::<usize>() <= PAGE_BUDGET_BYTES);
        }
        assert_eq!(pages.concat(), rows);
        assert_eq!(
            paginate(Vec::<String>::new(), |_| 1),
            vec![Vec::<String>::new()]
        );
    }

    proptest! {
        #[test]
        fn round_trip_under_any_split(
            kinds in proptest::collection::vec(0u8..4, 1..6),
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 6),
            splits in proptest::collection::vec(1usize..50, 1..40),
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (i, k) in kinds.iter().enumerate() {
                let m = sample(*k);
                encode_into(&mut wire, &m, &bodies[i]);
                expected.push(Frame { msg: m, body: bodies[i].clone() });
            }
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut s = splits.iter().cycle();
            while pos < wire.len() {
                let n = (*s.next().unwrap_or(&1)).min(wire.len() - pos);
                buf.extend_from_slice(&wire[pos..pos + n]);
                pos += n;
                while let Some(f) = decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = bytes;
            // Either a clean error, a need for more bytes, or (rarely) a real frame.
            let _ = decode(&mut buf);
        }
    }
}
