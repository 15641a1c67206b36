//! A tiny HTTP/1.1 endpoint for operators, shared by the name server (`/`, `/status`,
//! `/metrics`) and storage servers started with `--http-port` (`/metrics`). `GET /health`
//! answers `ok`; every other path goes to the server's [`Routes`], which answer from data
//! already published (a snapshot string, atomics), never from the event loop's state.
//!
//! It serves one request per connection, each connection on a thread of its own (at most
//! [`MAX_CONNECTIONS`] at once; beyond that a connection gets `503` at once), with a bounded
//! request size and a total deadline of [`DEADLINE_MS`] for the request to arrive and the
//! answer to be written, so a slow or stalled reader delays nobody else. It never touches the
//! server's state: only what the routes read.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest request head read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a connection has, from accept, to send its request and take the whole answer.
pub const DEADLINE_MS: u64 = 5_000;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a connection refused for being over [`MAX_CONNECTIONS`] may take its `503`.
const REFUSE_WRITE_MS: u64 = 100;

/// Counts one connection being served for as long as it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The latest status JSON, replaced by the event loop.
pub type Snapshot = Arc<Mutex<String>>;

/// An answer a route gives: content type and body.
pub struct Page {
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The whole body.
    pub body: String,
}

/// Answers `GET path` (`None`: 404). Runs on the connection's own thread.
pub type Routes = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// Serves requests on `listener` forever from a new thread named `name`.
pub fn spawn(listener: TcpListener, name: &str, routes: Routes) -> std::io::Result<()> {
    let conn_name = format!("{name}-conn");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let mut s = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        if crate::limits::is_fd_exhaustion(&e) {
                            // The queued connection stays queued: wait for descriptors.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let by = Instant::now() + Duration::from_millis(REFUSE_WRITE_MS);
                    let _ = respond(
                        &mut s,
                        by,
                        "503 Service Unavailable",
                        "text/plain",
                        "busy\n",
                    );
                    continue;
                }
                let slot = Slot(busy.clone());
                let routes = routes.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name(conn_name.clone())
                        .spawn(move || {
                            let _slot = slot;
                            let _ = serve(s, &routes);
                        });
                // A thread that cannot start drops its connection (and slot) with it.
                drop(spawned);
            }
        })?;
    Ok(())
}

/// The time left until `deadline`, as a socket timeout (never zero, which would mean none);
/// a passed deadline is a `TimedOut` error.
fn left(deadline: Instant) -> std::io::Result<Option<Duration>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "HTTP connection deadline passed",
        ));
    }
    Ok(Some(left))
}

fn serve(mut s: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    let result = serve_by(&mut s, routes, deadline);
    let _ = s.shutdown(std::net::Shutdown::Both);
    result
}

fn serve_by(s: &mut TcpStream, routes: &Routes, deadline: Instant) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_REQUEST_BYTES {
            return respond(
                s,
                deadline,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            );
        }
        // Each read may wait only for what is left of the connection's deadline, so a
        // trickle of bytes cannot stretch it.
        s.set_read_timeout(left(deadline)?)?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(
            s,
            deadline,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        );
    }
    // The query string is not used by any route.
    let path = path.split('?').next().unwrap_or("");
    if path == "/health" {
        return respond(s, deadline, "200 OK", "text/plain", "ok\n");
    }
    match routes(path) {
        Some(p) => respond(s, deadline, "200 OK", p.content_type, &p.body),
        None => respond(s, deadline, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(
    s: &mut TcpStream,
    deadline: Instant,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.push_str(body);
    // Written a piece at a time, each write bounded by what is left of the deadline, so a
    // reader that takes its answer slowly is cut off when the deadline passes.
    let mut rest = out.as_bytes();
    while !rest.is_empty() {
        s.set_write_timeout(left(deadline)?)?;
        let n = s.write(&rest[..rest.len().min(16 * 1024)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        rest = &rest[n..];
    }
    s.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn health_status_and_unknown_paths() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let snap: Snapshot = Arc::new(Mutex::new(r#"{"servers":[]}"#.to_string()));
        let s2 = snap.clone();
        let routes: Routes = Arc::new(move |p: &str| {
            (p == "/status").then(|| Page {
                content_type: "application/json",
                body: s2.lock().unwrap().clone(),
            })
        });
        spawn(l, "test-http", routes).unwrap();
        let h = get(addr, "/health");
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(h.ends_with("\r\n\r\nok\n"));
        *snap.lock().unwrap() = r#"{"servers":[1]}"#.to_string();
        assert!(get(addr, "/status").ends_with(r#"{"servers":[1]}"#));
        assert!(get(addr, "/status?x=1").ends_with(r#"{"servers":[1]}"#));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
