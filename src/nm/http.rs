//! A tiny HTTP/1.1 endpoint for operators: `GET /health` answers `ok`, `GET /status` answers
//! the JSON snapshot the event loop publishes about once a second.
//!
//! It serves one request per connection from its own thread, with bounded request size and
//! read timeouts, and never touches the name server's state: only the published snapshot.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request head read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request.
pub const READ_TIMEOUT_MS: u64 = 2_000;

/// The latest status JSON, replaced by the event loop.
pub type Snapshot = Arc<Mutex<String>>;

/// Serves requests on `listener` forever from a new thread.
pub fn spawn(listener: TcpListener, snapshot: Snapshot) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nm-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let _ = serve(s, &snapshot);
                    }
                    Err(_) => continue,
                }
            }
        })?;
    Ok(())
}

fn serve(mut s: TcpStream, snapshot: &Snapshot) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))?;
    s.set_write_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_REQUEST_BYTES {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            );
        }
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
        return respond(&mut s, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    match path {
        "/health" => respond(&mut s, "200 OK", "text/plain", "ok\n"),
        "/status" => {
            let body = snapshot.lock().map(|g| g.clone()).unwrap_or_default();
            respond(&mut s, "200 OK", "application/json", &body)
        }
        _ => respond(&mut s, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
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
        spawn(l, snap.clone()).unwrap();
        let h = get(addr, "/health");
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(h.ends_with("\r\n\r\nok\n"));
        *snap.lock().unwrap() = r#"{"servers":[1]}"#.to_string();
        assert!(get(addr, "/status").ends_with(r#"{"servers":[1]}"#));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }
}
