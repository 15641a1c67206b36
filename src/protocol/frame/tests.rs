//! Framing: decoding, connections, deadlines and timeouts over loopback sockets.

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
fn joined_checksums_equal_the_checksum_of_the_whole() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    let lens = [
        1 << 20,
        1 << 20,
        1 << 20,
        7,
        1 << 20,
        0,
        0,
        5,
        5,
        5,
        1,
        4096,
        4096,
        3,
    ];
    let mut join = CrcJoin::default();
    let (mut whole, mut sum) = (Vec::new(), 0u32);
    for len in lens {
        let piece = bytes(len);
        sum = join.join(sum, crc32c::crc32c(&piece), len);
        whole.extend_from_slice(&piece);
        assert_eq!(sum, crc32c::crc32c(&whole), "after {} bytes", whole.len());
    }
}

#[test]
fn front_frame_size_reads_only_the_header() {
    let bytes = encode(&Message::Chunk {}, &[7u8; 100]);
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap_or(0);
    assert_eq!(front_frame_size(&bytes[..nl]), Ok(None));
    assert_eq!(front_frame_size(&bytes[..nl + 3]), Ok(Some(bytes.len())));
    assert!(front_frame_size(b"junk\n").is_err());
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
fn frames_sent_after_large_bodies_arrive_whole_whatever_the_size_of_their_header() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let big: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i * 7) as u8).collect();
    let odd: Vec<u8> = (0..LARGE_BODY_BYTES + 5).map(|i| (i * 3) as u8).collect();
    // A header longer than the read that follows a large body.
    let long = Message::Err {
        code: ErrorCode::Invalid,
        msg: "x".repeat(3 * HEADER_READ_BYTES),
    };
    let frames = vec![
        (Message::Chunk {}, big.clone()),
        (long.clone(), Vec::new()),
        (Message::Chunk {}, odd.clone()),
        (Message::Chunk {}, big.clone()),
        (Message::Chunk {}, b"tiny".to_vec()),
        (Message::End {}, Vec::new()),
    ];
    let sent = frames.clone();
    let peer = std::thread::spawn(move || {
        let mut c = Connection::new(TcpStream::connect(addr).unwrap());
        for (i, (msg, body)) in sent.iter().enumerate() {
            if i == 3 {
                c.send_with_crc(msg, body, crc32c::crc32c(body)).unwrap();
            } else {
                c.send(msg, body).unwrap();
            }
        }
    });
    let (stream, _) = listener.accept().unwrap();
    let mut conn = Connection::new(stream);
    conn.set_timeout(Some(Duration::from_secs(30))).unwrap();
    for (msg, body) in &frames {
        let f = conn.recv_some().unwrap();
        assert_eq!(f.msg, *msg);
        assert!(f.body == *body, "a body of {} bytes differs", body.len());
    }
    peer.join().unwrap();
    assert!(conn.recv().unwrap().is_none(), "a clean end between frames");
}

/// A connected pair: the accepted end as a [`Connection`], and the raw peer socket.
fn socket_pair() -> (Connection, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let conn = Connection::new(stream);
    // A frame the connection misreads fails the test rather than hanging it.
    conn.set_timeout(Some(Duration::from_secs(30))).unwrap();
    (conn, peer)
}

#[test]
fn large_and_small_frames_arrive_whole_however_the_bytes_are_cut() {
    let (mut conn, mut peer) = socket_pair();
    let bodies: Vec<Vec<u8>> = [
        5,
        LARGE_BODY_BYTES,
        3,
        3 * MAX_READ_BYTES + 7,
        0,
        CHUNK_BYTES,
    ]
    .iter()
    .enumerate()
    .map(|(i, &n)| (0..n).map(|j| (j * 31 + i) as u8).collect())
    .collect();
    let mut wire = Vec::new();
    for b in &bodies {
        encode_into(&mut wire, &Message::Chunk {}, b);
    }
    let writer = std::thread::spawn(move || {
        // Pieces of many sizes, so headers and bodies are split at every kind of place.
        let mut pos = 0;
        for cut in [1usize, 40, 65_537, 3, 300_000, 17].iter().cycle() {
            if pos >= wire.len() {
                break;
            }
            let end = (pos + cut).min(wire.len());
            peer.write_all(&wire[pos..end]).unwrap();
            pos = end;
        }
        peer
    });
    for (i, b) in bodies.iter().enumerate() {
        // Both ways of reading: to the body's end, and one read at a time by a deadline.
        let f = if i % 2 == 0 {
            conn.recv_some().unwrap()
        } else {
            conn.recv_by(Instant::now() + Duration::from_secs(30))
                .unwrap()
                .unwrap()
        };
        assert_eq!(f.msg, Message::Chunk {});
        assert!(f.body == *b, "body {i} of {} bytes differs", b.len());
        let crc = if b.is_empty() { 0 } else { crc32c::crc32c(b) };
        assert_eq!(conn.body_crc(), crc);
    }
    drop(writer.join().unwrap());
    assert!(conn.recv().unwrap().is_none(), "a clean end between frames");
}

#[test]
fn a_large_body_is_checked_and_a_cut_one_is_an_error() {
    let body = vec![7u8; 2 * LARGE_BODY_BYTES];
    let mut bad = encode(&Message::Chunk {}, &body);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (mut conn, mut peer) = socket_pair();
    peer.write_all(&bad).unwrap();
    assert!(matches!(
        conn.recv_some(),
        Err(ConnError::Frame(FrameError::BadChecksum))
    ));

    let whole = encode(&Message::Chunk {}, &body);
    for deadline in [None, Some(Instant::now() + Duration::from_secs(30))] {
        let (mut conn, mut peer) = socket_pair();
        peer.write_all(&whole[..whole.len() / 2]).unwrap();
        drop(peer);
        let got = match deadline {
            None => conn.recv(),
            Some(d) => conn.recv_by(d),
        };
        assert!(matches!(got, Err(ConnError::Closed)), "{got:?}");
    }
}

#[test]
fn a_plain_receive_after_a_frame_deadline_waits_as_long_as_asked() {
    let (mut conn, mut peer) = socket_pair();
    let (before, deadline) = (Duration::from_secs(7), Duration::from_millis(300));
    conn.set_timeout(Some(before)).unwrap();
    peer.write_all(&encode(&Message::End {}, &[])).unwrap();
    let f = conn.recv_by(Instant::now() + deadline).unwrap().unwrap();
    assert_eq!(f.msg, Message::End {});
    assert!(conn.recv_by(Instant::now() + deadline).is_err());
    // The deadline shortened the read timeout; the next plain receive has the 7 s again.
    let late = std::thread::spawn(move || {
        std::thread::sleep(deadline * 2);
        peer.write_all(&encode(&Message::End {}, &[])).unwrap();
        peer
    });
    let f = conn.recv_some().unwrap();
    assert_eq!(f.msg, Message::End {});
    assert_eq!(conn.stream().read_timeout().unwrap(), Some(before));
    drop(late.join().unwrap());

    // Without a timeout ever set, the socket's own is learnt and put back.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(before)).unwrap();
    let mut conn = Connection::new(stream);
    assert!(conn.recv_by(Instant::now() + deadline).is_err());
    peer.write_all(&encode(&Message::End {}, &[])).unwrap();
    assert_eq!(conn.recv_some().unwrap().msg, Message::End {});
    assert_eq!(conn.stream().read_timeout().unwrap(), Some(before));
}

#[test]
fn a_timeout_the_socket_has_is_not_set_again() {
    let (conn, _peer) = socket_pair();
    let t = Some(Duration::from_secs(5));
    conn.set_timeout(t).unwrap();
    // Changed behind the connection's back (which its docs forbid), to see no call is made.
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(9)))
        .unwrap();
    conn.set_timeout(t).unwrap();
    assert_eq!(
        conn.stream().read_timeout().unwrap(),
        Some(Duration::from_secs(9))
    );
    conn.set_timeout(Some(Duration::from_secs(6))).unwrap();
    assert_eq!(
        conn.stream().read_timeout().unwrap(),
        Some(Duration::from_secs(6))
    );
    assert_eq!(
        conn.stream().write_timeout().unwrap(),
        Some(Duration::from_secs(6))
    );
}

#[test]
fn a_frame_deadline_keeps_a_read_timeout_close_to_it_and_replaces_others() {
    let (mut conn, mut peer) = socket_pair();
    let end = encode(&Message::End {}, &[]);
    let read_timeout = |c: &Connection| c.stream().read_timeout().unwrap().unwrap();
    // As long as the deadline (a little longer is allowed): kept.
    conn.set_timeout(Some(Duration::from_secs(10))).unwrap();
    peer.write_all(&end).unwrap();
    conn.recv_by(Instant::now() + Duration::from_secs(10))
        .unwrap();
    assert_eq!(read_timeout(&conn), Duration::from_secs(10));
    // Far longer than the deadline: shortened to it.
    peer.write_all(&end).unwrap();
    conn.recv_by(Instant::now() + Duration::from_secs(2))
        .unwrap();
    let t = read_timeout(&conn);
    assert!(
        t <= Duration::from_secs(2) && t > Duration::from_secs(1),
        "{t:?}"
    );
    // Far shorter than the deadline (it would wake the read for nothing): lengthened.
    conn.set_timeout(Some(Duration::from_millis(10))).unwrap();
    peer.write_all(&end).unwrap();
    conn.recv_by(Instant::now() + Duration::from_secs(5))
        .unwrap();
    let t = read_timeout(&conn);
    assert!(t > Duration::from_secs(4), "{t:?}");
}

#[test]
fn a_trickled_large_body_cannot_hold_a_connection_past_the_frame_deadline() {
    let (mut conn, mut peer) = socket_pair();
    let whole = encode(&Message::Chunk {}, &vec![1u8; 2 * LARGE_BODY_BYTES]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let trickle = std::thread::spawn(move || {
        // The header and part of the body at once, then a byte every 50 ms.
        let _ = peer.write_all(&whole[..LARGE_BODY_BYTES]);
        for b in &whole[LARGE_BODY_BYTES..] {
            if stop2.load(std::sync::atomic::Ordering::SeqCst)
                || peer.write_all(std::slice::from_ref(b)).is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let start = Instant::now();
    let got = conn.recv_by(start + Duration::from_millis(300));
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickle.join().unwrap();
    assert!(
        matches!(got, Err(ConnError::Io(ref e)) if e.kind() == io::ErrorKind::TimedOut),
        "{got:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
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

/// A cluster TLS directory and its loaded settings.
fn tls_dir() -> (tempfile::TempDir, crate::tls::Tls) {
    let d = tempfile::tempdir().unwrap();
    crate::tls::init_dir(d.path(), &[]).unwrap();
    let t = crate::tls::Tls::load_server(d.path()).unwrap();
    (d, t)
}

/// A TLS server on loopback echoing every frame back; its port.
fn tls_echo(server: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let cfg = server.clone();
            std::thread::spawn(move || {
                let Ok(mut c) = Connection::accept_tls(s, Duration::from_secs(5), cfg, "test")
                else {
                    return;
                };
                while let Ok(Some(f)) = c.recv() {
                    if c.send(&f.msg, &f.body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn tls_carries_small_and_large_frames_both_ways() {
    let (d, t) = tls_dir();
    let addr = tls_echo(t.server_config().unwrap());
    let mut c = Connection::connect_tls(
        &addr.to_string(),
        Duration::from_secs(5),
        t.client_config(),
        &t.ca_path(),
    )
    .unwrap();
    assert!(c.is_tls());
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    c.send(&sample(0), b"hi").unwrap();
    let f = c.recv_some().unwrap();
    assert_eq!((f.msg, f.body.as_slice()), (sample(0), &b"hi"[..]));
    let big: Vec<u8> = (0..MAX_BODY_BYTES)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    for _ in 0..2 {
        c.send(&Message::Chunk {}, &big).unwrap();
        let f = c.recv_some().unwrap();
        assert_eq!(f.msg, Message::Chunk {});
        assert!(f.body == big, "large body changed on the way");
        assert_eq!(c.body_crc(), crc32c::crc32c(&big));
    }
    drop(d);
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_naming_the_ca_file() {
    let (_d, theirs) = tls_dir();
    let (_e, ours) = tls_dir();
    let addr = tls_echo(theirs.server_config().unwrap());
    let e = Connection::connect_tls(
        &addr.to_string(),
        Duration::from_secs(5),
        ours.client_config(),
        &ours.ca_path(),
    )
    .err()
    .expect("a certificate of another CA must be refused");
    let text = e.to_string();
    assert!(text.starts_with("TLS:"), "{text}");
    assert!(
        text.contains(&ours.ca_path().display().to_string()),
        "{text}"
    );
    assert!(text.contains("not accepted"), "{text}");
}

#[test]
fn a_plain_client_of_a_tls_server_is_told_quickly() {
    let (_d, t) = tls_dir();
    let addr = tls_echo(t.server_config().unwrap());
    let t0 = Instant::now();
    let mut c = Connection::new(TcpStream::connect(addr).unwrap());
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let e = c.call(&sample(0), &[]).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(
        e.msg.starts_with("TLS:") && e.msg.contains("--tls-dir"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn a_tls_client_of_a_plain_server_is_told_quickly() {
    let (_d, t) = tls_dir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut c = Connection::new(s);
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        // What a plain server does with bytes that are no frame: answer ERR, close.
        match c.recv() {
            Err(ConnError::Frame(fe)) => {
                assert_eq!(fe, FrameError::TlsHello);
                let _ = c.send(&Message::err(fe.into()), &[]);
            }
            other => panic!("a TLS hello must be refused at once, got {other:?}"),
        }
    });
    let t0 = Instant::now();
    let e = Connection::connect_tls(
        &addr.to_string(),
        Duration::from_secs(10),
        t.client_config(),
        &t.ca_path(),
    )
    .err()
    .expect("a plain server cannot finish a TLS handshake");
    let text = e.to_string();
    assert!(text.contains("without --tls-dir"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}
