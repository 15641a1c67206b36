//! The chaos program's workload: one thread per pair writing numbered payloads through
//! `client::session`, and what it records of each operation (see the program's docs).

use super::*;

/// One file the workload writes.
pub(crate) struct Slot {
    pub(crate) name: String,
    /// Highest sequence number sent (acknowledged or not).
    pub(crate) attempted: AtomicU64,
    /// Highest sequence number acknowledged.
    pub(crate) acked: AtomicU64,
    /// Sequence numbers sent but not acknowledged (few: only during faults). Writes to one
    /// file are sequential, so the acknowledged ones are all others up to `acked`.
    pub(crate) failed: Mutex<Vec<u64>>,
    /// Acknowledged writes already reported lost by an earlier round-end check.
    pub(crate) reported_lost: AtomicU64,
}

impl Slot {
    /// Acknowledged writes newer than `seq`.
    pub(crate) fn acked_after(&self, seq: u64) -> u64 {
        let acked = self.acked.load(Ordering::SeqCst);
        if acked <= seq {
            return 0;
        }
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let unacked = failed.iter().filter(|f| **f > seq && **f <= acked).count() as u64;
        (acked - seq).saturating_sub(unacked)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// One finished operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpRec {
    pub(crate) at: Instant,
    pub(crate) pair: usize,
    pub(crate) op: Op,
    pub(crate) ok: bool,
}

/// What the workload threads share with the coordinator.
pub(crate) struct Workload {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) op_interval_ms: u64,
    pub(crate) slots: Vec<Vec<Slot>>,
    pub(crate) stop: AtomicBool,
    pub(crate) pause: AtomicBool,
    pub(crate) idle: Vec<AtomicBool>,
    pub(crate) ops: Mutex<Vec<OpRec>>,
    /// Acknowledged writes this round.
    pub(crate) acked_round: AtomicU64,
    /// Reads that returned an older sequence than was acknowledged before they began.
    pub(crate) stale_reads: AtomicU64,
    /// Payloads that read back wrong, with what was wrong.
    pub(crate) bad: Mutex<Vec<String>>,
    /// The file each WRITE-session thread writes, by thread.
    pub(crate) session_files: Vec<String>,
    /// Tokens of the WRITE sessions, by thread, with whether the session committed.
    pub(crate) sessions: Vec<Mutex<Vec<(String, bool)>>>,
}

/// A payload: a header naming file, sequence and the CRC32C of the body, then the body (of
/// over a MiB for every [`LARGE_EVERY`]-th sequence).
pub(crate) fn payload(file: &str, seq: u64, salt: u64) -> Vec<u8> {
    let mut rng = Rng(salt ^ seq.wrapping_mul(0x9E37_79B9));
    let words = if seq.is_multiple_of(LARGE_EVERY) {
        LARGE_WORDS
    } else {
        20 + rng.below(200)
    };
    let mut body = String::new();
    for _ in 0..words {
        body.push_str(&format!("w{:x} ", rng.next() % 0xffff));
    }
    body.push('.');
    let crc = crc32c::crc32c(body.as_bytes());
    format!("pairfs-chaos file={file} seq={seq} crc={crc:08x}\n{body}").into_bytes()
}

/// Checks a payload read back for `file`: its header, its file and its own checksum. Returns
/// its sequence number (0 for the empty file CREATE made), or what is wrong.
pub(crate) fn check_payload(bytes: &[u8], file: &str) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{file}: not UTF-8"))?;
    if text.is_empty() {
        return Ok(0);
    }
    let (head, body) = text
        .split_once('\n')
        .ok_or_else(|| format!("{file}: no payload header in {:?}", short(text)))?;
    let mut f = None;
    let mut seq = None;
    let mut crc = None;
    for part in head.split(' ').skip(1) {
        match part.split_once('=') {
            Some(("file", v)) => f = Some(v),
            Some(("seq", v)) => seq = v.parse::<u64>().ok(),
            Some(("crc", v)) => crc = u32::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    let (Some(f), Some(seq), Some(crc)) = (f, seq, crc) else {
        return Err(format!("{file}: bad payload header {head:?}"));
    };
    if f != file {
        return Err(format!("{file}: holds the payload of {f} (seq {seq})"));
    }
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err(format!("{file}: payload seq {seq} fails its own checksum"));
    }
    Ok(seq)
}

pub(crate) fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

impl Workload {
    pub(crate) fn record(&self, pair: usize, op: Op, ok: bool) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        if ops.len() < MAX_OPS_PER_ROUND {
            ops.push(OpRec {
                at: Instant::now(),
                pair,
                op,
                ok,
            });
        }
    }

    pub(crate) fn bad(&self, what: String) {
        eprintln!("BAD READ: {what}");
        self.bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    /// One pair's workload thread: alternately an UPLOAD to the next file and a READ of a
    /// seeded file of the pair, until stopped; parked while paused.
    pub(crate) fn run(&self, pair: usize, seed: u64) {
        let mut rng = Rng(seed ^ (pair as u64 + 1));
        let mut session: Option<Session> = None;
        let local = self.dir.join(format!("workload-{pair}.tmp"));
        let slots = &self.slots[pair];
        let mut next = 0usize;
        while !self.stop.load(Ordering::SeqCst) {
            if self.pause.load(Ordering::SeqCst) {
                self.idle[pair].store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            self.idle[pair].store(false, Ordering::SeqCst);
            if self.pause.load(Ordering::SeqCst) {
                continue;
            }
            if session.is_none() {
                match Session::connect(&self.host, self.port, USER) {
                    Ok(s) => session = Some(s),
                    Err(_) => {
                        // The name server is away (restarting): try again shortly.
                        self.record(pair, Op::Write, false);
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let Some(s) = session.as_mut() else { continue };
            // A write.
            let slot = &slots[next % slots.len()];
            next += 1;
            let seq = slot.attempted.fetch_add(1, Ordering::SeqCst) + 1;
            let ok = fs::write(&local, payload(&slot.name, seq, seed)).is_ok() && {
                let cmd = Cmd::Upload {
                    local: local.to_string_lossy().into_owned(),
                    file: slot.name.clone(),
                };
                match s.execute(&cmd, &mut std::io::sink()) {
                    Ok(()) => true,
                    Err(e) => {
                        if e.connection {
                            session = None;
                        }
                        false
                    }
                }
            };
            if ok {
                slot.acked.fetch_max(seq, Ordering::SeqCst);
                self.acked_round.fetch_add(1, Ordering::SeqCst);
            } else {
                slot.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(seq);
            }
            self.record(pair, Op::Write, ok);
            // A read.
            let Some(s) = session.as_mut() else { continue };
            let slot = &slots[rng.below(slots.len() as u64) as usize];
            let lower = slot.acked.load(Ordering::SeqCst);
            let mut out = Vec::new();
            let read = s.execute(
                &Cmd::Read {
                    file: slot.name.clone(),
                },
                &mut out,
            );
            let upper = slot.attempted.load(Ordering::SeqCst);
            match read {
                Ok(()) => {
                    out.pop(); // READ prints the bytes, then a newline.
                    match check_payload(&out, &slot.name) {
                        Ok(got) if got > upper => {
                            self.bad(format!("{}: seq {got} was never written", slot.name))
                        }
                        Ok(got) if got < lower => {
                            self.stale_reads.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => self.bad(e),
                    }
                    self.record(pair, Op::Read, true);
                }
                Err(e) => {
                    if e.connection {
                        session = None;
                    }
                    self.record(pair, Op::Read, false);
                }
            }
            if self.op_interval_ms > 0 {
                thread::sleep(ms(self.op_interval_ms));
            }
        }
        self.idle[pair].store(true, Ordering::SeqCst);
    }

    /// One WRITE-session thread (idle flag `PAIRS.len() + t`): sessions on sentence 0 of its
    /// file, each inserting the token `c{t}s{n}`, held open for [`SESSION_HOLD_MS`], then
    /// `done.` after the token and ETIRW; the outcome of each is recorded.
    pub(crate) fn run_sessions(&self, t: usize) {
        let idle = &self.idle[PAIRS.len() + t];
        let file = &self.session_files[t];
        let mut session: Option<Session> = None;
        let mut n = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            if self.pause.load(Ordering::SeqCst) {
                idle.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            idle.store(false, Ordering::SeqCst);
            if self.pause.load(Ordering::SeqCst) {
                continue;
            }
            let s = match session.as_mut() {
                Some(s) => s,
                None => match Session::connect(&self.host, self.port, USER) {
                    Ok(s) => session.insert(s),
                    Err(_) => {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            n += 1;
            let token = format!("c{t}s{n}");
            let outcome = s.begin_write(file, 0).and_then(|mut ws| {
                let edit = |ws: &mut WriteSession, s: &mut Session, k: u64, text: &str| {
                    ws.edit(s, k, text).map(|_| ()).map_err(|e| match e {
                        EditError::Refused(e) | EditError::Broken(e) => e,
                    })
                };
                edit(&mut ws, s, 0, &token)?;
                thread::sleep(ms(SESSION_HOLD_MS));
                edit(&mut ws, s, 1, "done.")?;
                ws.commit(s).map(|_| ())
            });
            if let Err(e) = &outcome {
                if e.connection {
                    session = None;
                }
            }
            self.sessions[t]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((token, outcome.is_ok()));
            if self.op_interval_ms > 0 {
                thread::sleep(ms(self.op_interval_ms));
            }
        }
        idle.store(true, Ordering::SeqCst);
    }

    /// Counts the WRITE sessions' tokens in their files (cluster settled, workload stopped):
    /// (committed, failed clearly, applied twice, committed but missing).
    pub(crate) fn count_sessions(&self) -> Result<(u64, u64, u64, u64)> {
        let mut session =
            Session::connect(&self.host, self.port, USER).map_err(|e| anyhow!("sessions: {e}"))?;
        let (mut committed, mut failed, mut twice, mut missing) = (0, 0, 0, 0);
        for (t, file) in self.session_files.iter().enumerate() {
            let mut out = Vec::new();
            session
                .execute(&Cmd::Read { file: file.clone() }, &mut out)
                .map_err(|e| anyhow!("READ {file}: {e}"))?;
            let text = String::from_utf8_lossy(&out);
            let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
            for w in text.split_whitespace() {
                *seen.entry(w).or_default() += 1;
            }
            let tokens = self.sessions[t].lock().unwrap_or_else(|p| p.into_inner());
            for (token, ok) in tokens.iter() {
                let found = seen.get(token.as_str()).copied().unwrap_or(0);
                if found > 1 {
                    eprintln!("TWICE: {file} holds {token} {found} times");
                    twice += 1;
                }
                if *ok {
                    committed += 1;
                    if found == 0 {
                        missing += 1;
                    }
                } else {
                    failed += 1;
                }
            }
        }
        Ok((committed, failed, twice, missing))
    }

    /// Pauses the workload and waits until no operation is in flight.
    pub(crate) fn pause(&self) -> Result<()> {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + ms(PAUSE_TIMEOUT_MS);
        while !self.idle.iter().all(|i| i.load(Ordering::SeqCst)) {
            if Instant::now() >= deadline {
                bail!("the workload did not pause within {PAUSE_TIMEOUT_MS} ms");
            }
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    pub(crate) fn resume(&self) {
        for i in &self.idle {
            i.store(false, Ordering::SeqCst);
        }
        self.pause.store(false, Ordering::SeqCst);
    }

    /// FSCK of the settled cluster: every copy of every file, the backups' included, must be
    /// current and intact (`Some(report)` when one is not). Copies set aside in `quarantine/`
    /// are expected after a writer dies between its own commit and the answer (that change was
    /// never acknowledged, and the acknowledged-write check covers what was); they are counted,
    /// not failed. Returns the report and the quarantined count.
    pub(crate) fn fsck(&self) -> Result<(Option<String>, u64)> {
        let mut session =
            Session::connect(&self.host, self.port, USER).map_err(|e| anyhow!("fsck: {e}"))?;
        let mut out = Vec::new();
        let outcome = session.execute(&Cmd::Fsck { file: None }, &mut out);
        let mut report = String::from_utf8_lossy(&out).into_owned();
        if let Err(e) = &outcome {
            report.push_str(&e.text);
        }
        let summary = report
            .lines()
            .rev()
            .find(|l| l.contains("FSCK:"))
            .ok_or_else(|| anyhow!("fsck printed no summary: {report}"))?;
        let count = |state: &str| fsck_count(summary, state);
        let quarantined = count("quarantined");
        let bad = count("stale")
            + count("missing")
            + count("corrupt")
            + count("diverged")
            + count("down");
        let fails_otherwise = outcome.is_err() && quarantined == 0;
        Ok(((bad > 0 || fails_otherwise).then_some(report), quarantined))
    }

    /// The round-end check (workload paused): every file reads back a correct payload at
    /// least as new as its last acknowledged write. Returns acknowledged writes lost.
    pub(crate) fn verify(&self) -> Result<u64> {
        let mut session =
            Session::connect(&self.host, self.port, USER).map_err(|e| anyhow!("verify: {e}"))?;
        let mut lost = 0;
        for slot in self.slots.iter().flatten() {
            let deadline = Instant::now() + ms(VERIFY_READ_TIMEOUT_MS);
            let bytes = loop {
                let mut out = Vec::new();
                match session.execute(
                    &Cmd::Read {
                        file: slot.name.clone(),
                    },
                    &mut out,
                ) {
                    Ok(()) => {
                        out.pop();
                        break out;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{} unreadable after the cluster settled: {e}", slot.name)
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            };
            let got = match check_payload(&bytes, &slot.name) {
                Ok(g) => g,
                Err(e) => {
                    self.bad(e);
                    continue;
                }
            };
            if got > slot.attempted.load(Ordering::SeqCst) {
                self.bad(format!("{}: seq {got} was never written", slot.name));
            }
            let missing = slot.acked_after(got);
            let before = slot.reported_lost.swap(missing, Ordering::SeqCst);
            if missing > before {
                eprintln!(
                    "LOST: {} reads seq {got}, {missing} acknowledged write(s) after it",
                    slot.name
                );
                lost += missing - before;
            }
        }
        Ok(lost)
    }
}
