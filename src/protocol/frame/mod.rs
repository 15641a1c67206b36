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
//!
//! Unfinished frames cost memory on the receiving side, so a server shares one
//! [`FrameBudget`] among all its connections: a body larger than what a connection may buffer
//! freely is read only once the budget grants its whole size, and the grant is returned when
//! the frame is taken off (or the connection goes). A peer that cannot get budget is simply
//! not read (backpressure) until budget frees or its deadline drops it.

use super::budget::Grant;
pub use super::budget::{FrameBudget, FRAME_BUDGET_BYTES};
use super::error::{ErrorCode, WireError};
use super::message::{Message, PROTOCOL_VERSION};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
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

/// The encoded size of the frame at the front of `buf` once its header line has arrived
/// (`Ok(None)` before), without consuming anything: what a receiver must be ready to hold.
pub fn front_frame_size(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(nl) = header_end(buf)? else {
        return Ok(None);
    };
    let (_, len, _) = parse_header(&buf[..nl])?;
    Ok(Some(nl + 1 + len))
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
    /// A TLS handshake arrived where a frame was expected.
    #[error("TLS: a TLS handshake reached a server running without --tls-dir; start it with --tls-dir, or drop --tls-dir on the connecting side")]
    TlsHello,
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> WireError {
        let code = match e {
            FrameError::BodyTooLarge(_) | FrameError::HeaderTooLong => ErrorCode::Limit,
            FrameError::TlsHello => ErrorCode::Unavailable,
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
    Ok(match decode_front(buf)? {
        Front::Frame(f, _) => Some(f),
        Front::NeedHeader | Front::NeedBody(_) => None,
    })
}

/// What the front of a read buffer holds.
enum Front {
    /// A whole frame, taken off the buffer, with its body's CRC32C (verified against it; 0
    /// for no body).
    Frame(Frame, u32),
    /// Part of a header line.
    NeedHeader,
    /// A whole header line whose body has not all arrived (nothing is consumed).
    NeedBody(Header),
}

/// A parsed header line.
struct Header {
    /// Offset of its newline in the buffer.
    nl: usize,
    msg: Message,
    /// Body length.
    len: usize,
    /// The body's CRC32C (0 for no body).
    crc: u32,
}

impl Header {
    /// The frame's encoded size.
    fn total(&self) -> usize {
        self.nl + 1 + self.len
    }
}

/// Where the header line at the front of `buf` ends (its newline), `None` before it has
/// arrived; a TLS hello or a header past [`MAX_HEADER_BYTES`] is an error.
fn header_end(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.first() == Some(&crate::tls::HANDSHAKE_BYTE) {
        // No header starts with it: a TLS client dialled a plain server.
        return Err(FrameError::TlsHello);
    }
    let scan = buf.len().min(MAX_HEADER_BYTES);
    match buf[..scan].iter().position(|&b| b == b'\n') {
        Some(nl) => Ok(Some(nl)),
        None if buf.len() >= MAX_HEADER_BYTES => Err(FrameError::HeaderTooLong),
        None => Ok(None),
    }
}

/// [`decode`], saying what is missing when no frame is whole, with the header parsed once.
fn decode_front(buf: &mut Vec<u8>) -> Result<Front, FrameError> {
    let Some(nl) = header_end(buf)? else {
        return Ok(Front::NeedHeader);
    };
    let (msg, len, crc) = parse_header(&buf[..nl])?;
    let h = Header {
        nl,
        msg,
        len,
        crc: crc.unwrap_or(0),
    };
    let total = h.total();
    if buf.len() < total {
        return Ok(Front::NeedBody(h));
    }
    if len > 0 && crc32c::crc32c(&buf[nl + 1..total]) != h.crc {
        return Err(FrameError::BadChecksum);
    }
    let body = buf[nl + 1..total].to_vec();
    buf.drain(..total);
    Ok(Front::Frame(Frame { msg: h.msg, body }, h.crc))
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

impl ConnError {
    /// Whether the peer did not answer in time: a read timeout ran out (`WouldBlock` on Unix)
    /// or a frame deadline passed.
    pub fn timed_out(&self) -> bool {
        matches!(self, ConnError::Io(io)
            if matches!(io.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
    }
}

impl From<ConnError> for WireError {
    fn from(e: ConnError) -> WireError {
        match e {
            ConnError::Frame(f) => f.into(),
            ref timeout if timeout.timed_out() => WireError::new(
                ErrorCode::Timeout,
                format!("peer did not answer in time ({e})"),
            ),
            other => WireError::new(ErrorCode::Unavailable, other.to_string()),
        }
    }
}

/// A blocking framed connection: owns the socket and the read buffer, so partial frames are
/// never lost between calls. Used by the storage server, the client, and the name server's
/// worker threads (the name server's event loop uses [`decode`] directly).
///
/// The bytes travel over plain TCP or TLS ([`crate::tls`]): [`Connection::connect`] and
/// [`Connection::accept`] pick by the process's TLS settings, installed once at start, so
/// no call site carries them; tests use [`Connection::connect_tls`] and
/// [`Connection::accept_tls`]. Either way [`Connection::stream`] is the TCP socket itself,
/// for timeouts, shutdown and clones that abort a blocked call. Under TLS a large body is
/// still written from where it lies, but rustls encrypts it into records of its own (one
/// copy, which encryption needs anyway), and received records are decrypted into the frame
/// buffer as before.
pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    /// Total size of the frame at the front of `buf` once its header has been read.
    need: Option<usize>,
    /// A frame with a large body whose header has arrived: the body is read straight into
    /// its own buffer, with no copy out of `buf` afterwards.
    large: Option<LargeFrame>,
    /// CRC32C of the body of the frame last taken off the buffer.
    body_crc: u32,
    /// Where large bodies get their memory from (servers); `None` reads them unmetered.
    budget: Option<Arc<FrameBudget>>,
    /// Buffers of large bodies handed back ([`Connection::recycle`]) for the next ones.
    spare: Vec<Vec<u8>>,
    /// The frame taken last had a large body: the next is likely another (a CHUNK of a
    /// stream), so its header is read with little of its body ([`HEADER_READ_BYTES`]).
    after_large: bool,
    /// The socket's timeouts as this connection last set them (`None`: not known), so that
    /// setting one it already has, and a receive deadline it already keeps, cost no system
    /// call; see [`Connection::set_timeout`].
    timeouts: Cell<Timeouts>,
}

/// The read timeout [`Connection::set_timeout`] was given and the timeouts the socket has now:
/// a receive by a deadline may leave the read timeout shorter until the next plain receive.
#[derive(Clone, Copy, Default)]
struct Timeouts {
    wanted_read: Option<Option<Duration>>,
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
}

/// Buffers a connection keeps for the next large bodies.
const MAX_SPARE_BODIES: usize = 2;

/// The byte stream under a [`Connection`]: the socket itself, or TLS over it. Either way the
/// TCP socket stays reachable ([`Connection::stream`]) for timeouts, shutdown and clones that
/// abort a blocked call.
enum Stream {
    Plain(TcpStream),
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Client(t) => t.get_ref(),
            Stream::Server(t) => t.get_ref(),
        }
    }
}

/// A peer that closes without TLS's close_notify ends the stream like a plain close: every
/// frame carries its own length and checksum, so a cut-off frame is caught by the framing.
fn clean_eof(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        r => r,
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Client(t) => clean_eof(t.read(buf)),
            Stream::Server(t) => clean_eof(t.read(buf)),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Client(t) => t.write(buf),
            Stream::Server(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Client(t) => t.flush(),
            Stream::Server(t) => t.flush(),
        }
    }
}

/// Runs a blocking TLS handshake on `sock` within `timeout` (the socket's own timeouts are
/// put back afterwards).
fn handshake<C, D>(conn: &mut C, sock: &mut TcpStream, timeout: Duration) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let saved = (sock.read_timeout()?, sock.write_timeout()?);
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    sock.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let deadline = Instant::now() + timeout;
    let mut res = Ok(());
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            res = Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake did not finish in time",
            ));
            break;
        }
        match conn.complete_io(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    if res.is_ok() {
        // Anything still queued (the client's Finished) goes out now.
        while conn.wants_write() {
            if let Err(e) = conn.write_tls(sock) {
                res = Err(e);
                break;
            }
        }
    }
    let _ = sock.set_read_timeout(saved.0);
    let _ = sock.set_write_timeout(saved.1);
    res
}

/// A frame of at least [`LARGE_BODY_BYTES`] being received: its header, and its body so far
/// (allocated once at its declared size, at most [`MAX_BODY_BYTES`], or an earlier body's
/// buffer handed back with [`Connection::recycle`]; its pages are touched only as the bytes
/// arrive).
struct LargeFrame {
    msg: Message,
    crc: u32,
    len: usize,
    body: Vec<u8>,
    /// The body's share of the connection's budget, returned once the frame is taken off.
    _grant: Option<Grant>,
}

/// How long a body waits for budget when the caller gave no deadline.
const BUDGET_WAIT_MS: u64 = 30_000;

/// Most bytes one read asks for while the size of the next frame is not known yet.
const READ_BYTES: usize = 64 * 1024;
/// Most bytes one read asks for while the next frame's header is awaited after a large body:
/// the body's bytes read with the header are zeroed first and copied out of the buffer
/// afterwards, so a stream of chunks reads little more than each header before its body.
const HEADER_READ_BYTES: usize = 4 * 1024;
/// Most bytes one read asks for while a body of known size arrives.
const MAX_READ_BYTES: usize = 256 * 1024;
/// Most a receive may end after its deadline, to spare resetting the read timeout.
const DEADLINE_SLACK_MS: u64 = 20;
/// Bodies at least this large are written without copying them behind their header.
const LARGE_BODY_BYTES: usize = 64 * 1024;

impl Connection {
    /// Wraps an accepted or connected stream, speaking plain TCP.
    pub fn new(stream: TcpStream) -> Connection {
        let _ = stream.set_nodelay(true);
        Connection::over(Stream::Plain(stream))
    }

    fn over(stream: Stream) -> Connection {
        Connection {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            need: None,
            large: None,
            body_crc: 0,
            budget: None,
            spare: Vec::new(),
            after_large: false,
            timeouts: Cell::new(Timeouts::default()),
        }
    }

    /// Meters large bodies against `budget`: one is read only once its size is granted
    /// (waiting until the receive deadline, else failing with `TimedOut`).
    pub fn set_budget(&mut self, budget: Arc<FrameBudget>) {
        self.budget = Some(budget);
    }

    /// Connects to `addr` (first resolved address) within `timeout`: over TLS when this
    /// process runs with TLS ([`crate::tls::install`]), else plain TCP.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Connection> {
        match crate::tls::installed() {
            Some(t) => Connection::connect_tls(addr, timeout, t.client_config(), &t.ca_path()),
            None => Ok(Connection::new(Connection::dial(addr, timeout)?)),
        }
    }

    fn dial(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
        let sa: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve {addr}"),
            )
        })?;
        TcpStream::connect_timeout(&sa, timeout)
    }

    /// Connects to `addr` over TLS with `config`, verifying the server's certificate names
    /// [`crate::tls::CLUSTER_NAME`]; the handshake must finish within `timeout`. A failed
    /// handshake says why in words (`ca` is named when the certificate is not the cluster's).
    pub fn connect_tls(
        addr: &str,
        timeout: Duration,
        config: Arc<rustls::ClientConfig>,
        ca: &std::path::Path,
    ) -> io::Result<Connection> {
        let mut sock = Connection::dial(addr, timeout)?;
        let _ = sock.set_nodelay(true);
        let mut tls = rustls::ClientConnection::new(config, crate::tls::cluster_name())
            .map_err(io::Error::other)?;
        handshake(&mut tls, &mut sock, timeout).map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                crate::tls::describe_handshake(&e, addr, ca),
            )
        })?;
        Ok(Connection::over(Stream::Client(Box::new(
            rustls::StreamOwned::new(tls, sock),
        ))))
    }

    /// Takes an accepted stream: over TLS when this process runs with TLS (the handshake must
    /// finish within `timeout`), else plain. A peer speaking plain frames to a TLS server is
    /// told `ERROR [UNAVAILABLE]: TLS: ...` in a plain frame and refused.
    pub fn accept(stream: TcpStream, timeout: Duration, server: &str) -> io::Result<Connection> {
        match crate::tls::installed().and_then(|t| t.server_config()) {
            Some(cfg) => Connection::accept_tls(stream, timeout, cfg, server),
            None => Ok(Connection::new(stream)),
        }
    }

    /// [`Connection::accept`] with an explicit TLS configuration.
    pub fn accept_tls(
        mut sock: TcpStream,
        timeout: Duration,
        config: Arc<rustls::ServerConfig>,
        server: &str,
    ) -> io::Result<Connection> {
        let _ = sock.set_nodelay(true);
        let saved = sock.read_timeout()?;
        sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut first = [0u8; 1];
        let peeked = sock.peek(&mut first);
        sock.set_read_timeout(saved)?;
        if peeked? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if first[0] != crate::tls::HANDSHAKE_BYTE {
            refuse_plain(&mut sock, server);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain connection to a TLS-only server",
            ));
        }
        let mut tls = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        handshake(&mut tls, &mut sock, timeout)?;
        Ok(Connection::over(Stream::Server(Box::new(
            rustls::StreamOwned::new(tls, sock),
        ))))
    }

    /// Whether this connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    /// The TCP socket (under TLS, if any), for timeouts, shutdown and clones that abort.
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Sets both read and write timeouts (`None` blocks forever). A timeout the socket has
    /// already is not set again, so the socket's timeouts must be set only through here (a
    /// clone of [`Connection::stream`] changing them leaves this connection's view stale).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.timeouts.set(Timeouts {
            wanted_read: Some(t),
            ..self.timeouts.get()
        });
        self.set_read_timeout(t)?;
        self.set_socket_timeout(t, |k| &mut k.write, TcpStream::set_write_timeout)
    }

    /// Gives the socket read timeout `t` unless it has it already.
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_socket_timeout(t, |k| &mut k.read, TcpStream::set_read_timeout)
    }

    /// Sets the socket timeout that `known` picks out of [`Timeouts`] to `t` with `apply`,
    /// unless the socket has it already; while the call is made (and if it fails) the value
    /// counts as not known.
    fn set_socket_timeout(
        &self,
        t: Option<Duration>,
        known: fn(&mut Timeouts) -> &mut Option<Option<Duration>>,
        apply: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut now = self.timeouts.get();
        if *known(&mut now) == Some(t) {
            return Ok(());
        }
        *known(&mut now) = None;
        self.timeouts.set(now);
        apply(self.stream.tcp(), t)?;
        *known(&mut now) = Some(t);
        self.timeouts.set(now);
        Ok(())
    }

    /// Whether bytes already received wait here (in the frame buffer or decrypted by TLS),
    /// so the socket's readiness alone does not tell whether a frame can be read.
    pub fn has_buffered_input(&mut self) -> bool {
        if !self.buf.is_empty() || self.large.is_some() {
            return true;
        }
        match &mut self.stream {
            Stream::Plain(_) => false,
            Stream::Client(t) => t
                .conn
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() > 0),
            Stream::Server(t) => t
                .conn
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() > 0),
        }
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
        self.write_frame(&head, body)
    }

    /// Writes one frame.
    pub fn send(&mut self, msg: &Message, body: &[u8]) -> io::Result<()> {
        if body.len() < LARGE_BODY_BYTES {
            let bytes = encode(msg, body);
            self.stream.write_all(&bytes)?;
            return self.stream.flush();
        }
        // A large body is written from where it lies rather than copied behind its header.
        let mut head = Vec::with_capacity(128);
        encode_header(&mut head, msg, body);
        self.write_frame(&head, body)
    }

    /// Writes a frame's header line and its body. Over plain TCP both leave in the same
    /// `writev`: written one after the other, the header would go out as a packet of its own
    /// (the socket has no Nagle delay) and wake the peer for it alone.
    fn write_frame(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let Stream::Plain(s) = &mut self.stream else {
            self.stream.write_all(head)?;
            self.stream.write_all(body)?;
            return self.stream.flush();
        };
        let mut bufs = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            match s.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what the socket has: into the body of the large frame being received, else into
    /// the buffer, at most the rest of the frame being received when its size is known (so a
    /// body arrives in few reads and is never followed by bytes that must be moved later; at
    /// most [`MAX_READ_BYTES`] at a time), else at most [`READ_BYTES`] ([`HEADER_READ_BYTES`]
    /// right after a large body).
    ///
    /// `bounded` asks for one read only, so the caller can check its deadline between reads;
    /// otherwise a large body is read to its end with the socket's own timeout per read (over
    /// plain TCP into memory that is never zeroed first).
    fn fill(&mut self, bounded: bool) -> io::Result<usize> {
        if let Some(l) = self.large.as_mut() {
            let rest = l.len - l.body.len();
            if !bounded {
                // Plain TCP reads straight into the body's spare capacity: the standard
                // library's socket reads fill uninitialised memory, so the body is never
                // zeroed first. Over TLS the bytes come out of rustls's own buffers, which
                // reads through `Read::read` only, so the room each read gets is zeroed once.
                return match &mut self.stream {
                    Stream::Plain(s) => s.take(rest as u64).read_to_end(&mut l.body),
                    tls => tls.take(rest as u64).read_to_end(&mut l.body),
                };
            }
            return read_zeroed(&mut self.stream, &mut l.body, rest.min(MAX_READ_BYTES));
        }
        // The room a read gets is zeroed first, and whatever the read leaves unfilled is
        // zeroed again by the next one: capping it keeps that linear in the body's size.
        let want = match self.need {
            Some(total) if total > self.buf.len() => (total - self.buf.len()).min(MAX_READ_BYTES),
            _ if self.after_large => HEADER_READ_BYTES,
            _ => READ_BYTES,
        };
        read_zeroed(&mut self.stream, &mut self.buf, want)
    }

    /// Takes the next frame off the buffer if it is complete, remembering the size of a frame
    /// whose header has arrived but whose body has not, and moving a large body's first bytes
    /// into a buffer of its own.
    fn take_frame(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>, ConnError> {
        if let Some(l) = self.large.take_if(|l| l.body.len() == l.len) {
            if crc32c::crc32c(&l.body) != l.crc {
                return Err(FrameError::BadChecksum.into());
            }
            self.body_crc = l.crc;
            self.after_large = true;
            return Ok(Some(Frame {
                msg: l.msg,
                body: l.body,
            }));
        }
        if self.large.is_some() {
            return Ok(None);
        }
        if let Some(total) = self.need {
            if self.buf.len() < total {
                return Ok(None);
            }
        }
        self.need = None;
        match decode_front(&mut self.buf)? {
            Front::Frame(f, crc) => {
                self.body_crc = crc;
                self.after_large = false;
                Ok(Some(f))
            }
            Front::NeedHeader => Ok(None),
            Front::NeedBody(h) if h.len >= LARGE_BODY_BYTES => {
                let grant = match self.budget.clone() {
                    None => None,
                    Some(b) => {
                        // Not reading while waiting is the backpressure: the peer's sends
                        // stall in its socket buffers, not in this process's memory.
                        let until = deadline.unwrap_or_else(|| {
                            Instant::now() + Duration::from_millis(BUDGET_WAIT_MS)
                        });
                        if !b.take_by(h.len, until) {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no memory budget for the frame's body in time",
                            )
                            .into());
                        }
                        Some(Grant::new(b, h.len))
                    }
                };
                self.start_large(h, grant);
                Ok(None)
            }
            Front::NeedBody(h) => {
                self.need = Some(h.total());
                Ok(None)
            }
        }
    }

    /// Moves the header of a frame with a large body out of the buffer as a [`LargeFrame`],
    /// with whatever of the body has arrived.
    fn start_large(&mut self, h: Header, grant: Option<Grant>) {
        let mut body = match self.spare.iter().position(|b| b.capacity() >= h.len) {
            Some(i) => self.spare.swap_remove(i),
            None => Vec::with_capacity(h.len),
        };
        let end = self.buf.len().min(h.total());
        body.extend_from_slice(&self.buf[h.nl + 1..end]);
        self.buf.drain(..end);
        self.large = Some(LargeFrame {
            msg: h.msg,
            crc: h.crc,
            len: h.len,
            body,
            _grant: grant,
        });
    }

    /// Hands back the body of a frame this connection received, once nothing reads it any
    /// more: the next large body is read into it rather than into fresh memory, whose pages
    /// the kernel would have to find and clear again (a stream of 1 MiB chunks otherwise costs
    /// a page fault per 4 KiB). A few are kept; the rest are freed.
    pub fn recycle(&mut self, mut body: Vec<u8>) {
        if body.capacity() >= LARGE_BODY_BYTES && self.spare.len() < MAX_SPARE_BODIES {
            body.clear();
            self.spare.push(body);
        }
    }

    /// Frees the buffers kept by [`Connection::recycle`] (a stream of large bodies is over).
    pub fn drop_spares(&mut self) {
        self.spare = Vec::new();
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
        if deadline.is_none() {
            // A receive by a deadline may have shortened the socket's read timeout: the one
            // the caller set is put back first, so this waits as long as it asked.
            if let Some(wanted) = self.timeouts.get().wanted_read {
                self.set_read_timeout(wanted)?;
            }
        } else if self.timeouts.get().wanted_read.is_none() {
            // Learnt once, so that a later plain receive can put it back.
            let t = self.stream.tcp().read_timeout()?;
            self.timeouts.set(Timeouts {
                wanted_read: Some(t),
                read: Some(t),
                ..self.timeouts.get()
            });
        }
        self.recv_loop(deadline)
    }

    fn recv_loop(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(f) = self.take_frame(deadline)? {
                return Ok(Some(f));
            }
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(
                        io::Error::new(io::ErrorKind::TimedOut, "frame deadline passed").into(),
                    );
                }
                // Each read must end by the deadline. A read timeout the socket has already
                // does that if it is no longer than what is left, give or take a 64th (at
                // most DEADLINE_SLACK_MS), and it is kept unless far shorter (which would wake
                // the read often for nothing): an idle limit set as the timeout and as the
                // deadline, or one deadline per frame, then costs no system call per frame.
                let slack = (left / 64).min(Duration::from_millis(DEADLINE_SLACK_MS));
                let keeps = matches!(self.timeouts.get().read,
                    Some(Some(t)) if t <= left + slack && t >= left - left / 8);
                if !keeps {
                    self.set_read_timeout(Some(left))?;
                }
            }
            let n = match self.fill(deadline.is_some()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // With a deadline, an expired read timeout (WouldBlock on Unix) loops to the
                // check above, which reports the missed deadline as TimedOut.
                Err(e) if deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() && self.large.is_none() {
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

/// Extends a running CRC32C by the CRC32C of the bytes after it. `crc32c_combine` squares 32x32
/// matrices for every call, which at one call per 1 MiB chunk showed in an upload's profile;
/// the operator that shifts a CRC past `len` bytes is linear, so once a length repeats (a
/// stream of full chunks) it is kept as its 32 columns and applied with at most 32 XORs.
#[derive(Default)]
pub struct CrcJoin {
    /// The length `columns` are for (0: none yet).
    len: usize,
    columns: [u32; 32],
    /// The length of the bytes joined last.
    last: usize,
}

impl CrcJoin {
    /// The CRC32C of (bytes with CRC32C `crc`) followed by `len` bytes with CRC32C `next`.
    pub fn join(&mut self, crc: u32, next: u32, len: usize) -> u32 {
        let repeated = std::mem::replace(&mut self.last, len) == len;
        if len != self.len {
            if !repeated || len == 0 {
                return crc32c::crc32c_combine(crc, next, len);
            }
            self.len = len;
            self.columns = std::array::from_fn(|i| crc32c::crc32c_combine(1 << i, 0, len));
        }
        let mut shifted = 0;
        let mut bits = crc;
        while bits != 0 {
            shifted ^= self.columns[bits.trailing_zeros() as usize];
            bits &= bits - 1;
        }
        shifted ^ next
    }
}

/// Tells a peer that sent plain bytes to a TLS-only `server` why it is refused, in a plain
/// frame: what it sent is read first (bounded), so closing does not reset the connection
/// before the peer reads the answer.
fn refuse_plain(sock: &mut TcpStream, server: &str) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = sock.set_write_timeout(Some(Duration::from_millis(1_000)));
    let mut scratch = [0u8; 16 * 1024];
    let _ = sock.read(&mut scratch);
    let _ = sock.write_all(&encode(
        &Message::err(crate::tls::plain_refused(server)),
        &[],
    ));
    let _ = sock.shutdown(std::net::Shutdown::Write);
    // Wait (briefly) for the peer to read the answer and close its end.
    let until = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < until {
        match sock.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// One read from `stream` appended to `buf`, into at most `want` bytes of room that are zeroed
/// first; the room the read leaves unfilled is cut off again.
fn read_zeroed(stream: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let have = buf.len();
    buf.resize(have + want, 0);
    let res = stream.read(&mut buf[have..]);
    let n = *res.as_ref().unwrap_or(&0);
    buf.truncate(have + n);
    res
}

#[cfg(test)]
mod tests;
