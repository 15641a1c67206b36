//! FSCK: every copy of every file checked against the name server's record.
//!
//! The client pages through the index: each FSCK request carries the cursor `after` of the
//! page before. The core takes the next page of files (bounded by count, by the bytes the
//! copies must read, and by the size of the request and answer headers), sends one
//! CHECK_FILES job per server holding a copy of one of them to the worker pool (so the event
//! loop never waits on a storage server), and once every server has answered or failed,
//! judges each copy here with [`judge_copy`] and replies with FSCK_PAGE frames. The storage
//! server recomputes each checksum from the bytes on disk. The last page also asks every live
//! server for its quarantined copies of files it does not hold.
//!
//! A page holds at most one request's worth of state per client connection, so a check of
//! 10,000 files needs no more memory than a check of 100.
//!
//! A page holds at most 100 files, 256 MiB of content to read, and names within the header
//! budget. The core sends one CHECK_FILES job per server holding a copy (the file's primary
//! and its pair's backup) to the client-call worker pool, with a ticket (op `check`, user
//! `@nm`) whose `file` is a digest of the page's names (`auth::check_scope`), so it covers
//! exactly that list. Each storage server, under the file lock, adopts a hand edit as any
//! access does, then reads the bytes and recomputes the CRC32C, and lists the file's versions
//! under `quarantine/`. When every server answered or failed, [`judge_copy`] judges each copy
//! against the record: ok, stale, missing, corrupt, diverged, down, quarantined. A copy at
//! least at the version recorded when the page was built is not stale (a write may land
//! during the check).
//!
//! # FSCK agrees with recovery
//!
//! [`judge_copy`] classifies a copy as reconciliation would: a copy above the record is `ok`
//! only where recovery adopts it (the writer, or the only member still holding the record's
//! changes); elsewhere, and for the recorded version with other bytes or a fork from an
//! earlier epoch past `epoch_base`, it is `diverged` (exit 1).
//!
//! FSCK changes nothing: it never deletes a record, repairs a copy or touches `quarantine/`;
//! the only write it can cause is the adoption of a hand edit, which any access makes.
//!
//! Choice: the name server fans out on its worker threads rather than giving the client
//! tickets to drive the checks itself, so the verdicts are made in the IO-free core against
//! the live record and a client cannot learn anything a storage server says beyond the
//! report. FSCK is for anyone and lists every file name, as `VIEW -a` does.

use super::*;
use crate::protocol::{CopyCheck, CopyReport, CopyState, FsckFile, HeldCopy, QuarantineEntry};
use std::ops::Bound;

/// Most files in one FSCK page.
pub const FSCK_PAGE_FILES: usize = 100;
/// Most content bytes one page asks the copies to read (at least one file is always taken),
/// so each server's check answers well within the worker's call timeout.
pub const FSCK_PAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Header bytes a page's file names may fill in CHECK_FILES and its answer: each answered
/// file carries its name (JSON escaping at most doubles it) plus about 450 bytes for its
/// version, checksums and up to 8 quarantined versions.
const FSCK_PAGE_HEADER_BYTES: usize = frame::PAGE_BUDGET_BYTES;
/// Longest cursor accepted (a canonical name is at most 1024 bytes).
const MAX_CURSOR_BYTES: usize = 4096;

/// A page of the index: its files with their recorded versions, the cursor of the page
/// after it, and whether it is the last.
type Page = (Vec<(String, Version)>, Option<String>, bool);

/// FSCK pages waiting for their servers' answers.
#[derive(Debug, Default)]
pub(super) struct Runs {
    by_id: HashMap<u64, Run>,
    next: u64,
}

impl Runs {
    /// Drops the pages of a closed connection; their late answers are ignored.
    pub(super) fn forget(&mut self, conn: ConnId) {
        self.by_id.retain(|_, r| r.conn != conn);
    }

    /// Opens a page for `conn` over `rows` (with the cursor of the page after it), waiting
    /// for `asked` servers; the servers in `down` count as answered, down. Returns its id.
    fn open(
        &mut self,
        conn: ConnId,
        rows: Vec<(String, Version)>,
        next: Option<String>,
        down: Vec<String>,
        asked: usize,
    ) -> u64 {
        let id = self.next;
        self.next += 1;
        let run = Run {
            conn,
            rows,
            next,
            waiting: asked,
            answers: down.into_iter().map(|ss| (ss, Err(None))).collect(),
        };
        self.by_id.insert(id, run);
        id
    }

    /// Notes server `ss`'s answer (or failure) for page `run`. Whether the page now has
    /// every answer it waits for (it is not the page of a closed connection).
    fn answer(&mut self, run: u64, ss: String, result: Result<JobOutput, WireError>) -> bool {
        let Some(r) = self.by_id.get_mut(&run) else {
            return false;
        };
        let answer = match result {
            Ok(JobOutput::Checked {
                copies,
                orphans,
                more_orphans,
            }) => Ok(Answer {
                copies: copies.into_iter().map(|c| (c.file.clone(), c)).collect(),
                orphans,
                more_orphans,
            }),
            Ok(other) => Err(Some(format!("unexpected answer from {ss}: {other:?}"))),
            Err(e) => Err(Some(e.msg)),
        };
        r.answers.insert(ss, answer);
        r.waiting = r.waiting.saturating_sub(1);
        r.waiting == 0
    }

    /// Takes a page out to be judged and sent.
    fn close(&mut self, id: u64) -> Option<Run> {
        self.by_id.remove(&id)
    }
}

/// The next page of the index after `after`: its files with their recorded versions, the
/// cursor of the page after it, and whether it is the last (which also lists orphans).
fn page(files: &BTreeMap<String, FileRecord>, after: Option<&str>) -> Result<Page, WireError> {
    if after.is_some_and(|a| a.len() > MAX_CURSOR_BYTES) {
        return Err(err::invalid("FSCK cursor too long"));
    }
    let lower = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    let mut it = files.range::<str, _>((lower, Bound::Unbounded)).peekable();
    let (mut rows, mut bytes, mut header) = (Vec::new(), 0u64, 0usize);
    while let Some((f, rec)) = it.peek() {
        let cost = 2 * f.len() + 450;
        let full = rows.len() >= FSCK_PAGE_FILES
            || bytes.saturating_add(rec.size) > FSCK_PAGE_BYTES
            || header + cost > FSCK_PAGE_HEADER_BYTES;
        if full && !rows.is_empty() {
            break;
        }
        bytes = bytes.saturating_add(rec.size);
        header += cost;
        rows.push(((*f).clone(), rec.version));
        it.next();
    }
    let next = match it.peek() {
        Some(_) => rows.last().map(|(f, _)| f.clone()),
        None => None,
    };
    let last = next.is_none();
    Ok((rows, next, last))
}

/// One server's answer to a page's check: by file, and its orphaned quarantine entries.
#[derive(Debug)]
struct Answer {
    copies: HashMap<String, CopyCheck>,
    orphans: Vec<QuarantineEntry>,
    more_orphans: u64,
}

#[derive(Debug)]
struct Run {
    conn: ConnId,
    /// The page's files with the version recorded when the page was built: a copy that
    /// holds at least that version when it is checked was current then.
    rows: Vec<(String, Version)>,
    /// Cursor of the next page.
    next: Option<String>,
    /// Answers still to come.
    waiting: usize,
    /// By server: its answer, or why it could not be asked (`None`: it is down).
    answers: HashMap<String, Result<Answer, Option<String>>>,
}

/// What FSCK learned of one copy before judging it.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// The server could not be asked; the reason, if there is more to say than "down".
    Down(Option<&'a str>),
    /// The server answered; its copy, if it holds one.
    Held(Option<&'a HeldCopy>),
    /// The server holds a copy it could not read (the I/O error).
    Unreadable(&'a str),
}

/// What recovery would make of a copy that is not at the record: the last version of the
/// epoch before the record's (`FileRecord::epoch_base`), and whether a copy above the record
/// is adopted as current (it is on the writer, or on the only member left holding the
/// record's changes; elsewhere it is set aside). See `Core::reconcile_member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    /// The version the epoch before the record's ended with.
    pub epoch_base: Option<Version>,
    /// A copy above the record is adopted as current, not set aside.
    pub adopts_newer: bool,
}

/// The verdict on one copy. `floor` is the version the name server recorded when the check
/// began, `rec_version`/`rec_checksum` what it records now (a change may have landed while the
/// copy was read, so a copy at least at `floor` is not stale). A copy recovery would set aside
/// (see [`Lineage`]) is `diverged`, whatever its version.
pub fn judge_copy(
    ss: &str,
    seen: Seen<'_>,
    floor: Version,
    rec_version: Version,
    rec_checksum: u32,
    lineage: Lineage,
) -> CopyReport {
    let report = |state, version: Option<Version>, detail: Option<String>| CopyReport {
        ss: ss.to_string(),
        state,
        version,
        expected: Some(rec_version),
        detail,
    };
    match seen {
        Seen::Down(reason) => report(CopyState::Down, None, reason.map(str::to_string)),
        Seen::Held(None) => report(CopyState::Missing, None, None),
        Seen::Unreadable(e) => report(CopyState::Corrupt, None, Some(format!("unreadable: {e}"))),
        // Bit rot: the bytes no longer match what the copy's own bookkeeping recorded for them.
        Seen::Held(Some(h)) if h.actual != h.checksum => report(
            CopyState::Corrupt,
            Some(h.version),
            Some(format!(
                "checksum {:08x} on disk, {:08x} recorded",
                h.actual, h.checksum
            )),
        ),
        // From an earlier epoch, past the version that epoch ended with: a fork.
        Seen::Held(Some(h))
            if h.version.epoch < rec_version.epoch
                && lineage.epoch_base.is_some_and(|b| h.version > b) =>
        {
            report(
                CopyState::Diverged,
                Some(h.version),
                Some(format!(
                    "epoch {} ended at {}: changes never acknowledged",
                    h.version.epoch,
                    lineage.epoch_base.unwrap_or_default()
                )),
            )
        }
        Seen::Held(Some(h)) if h.version < floor => report(CopyState::Stale, Some(h.version), None),
        // The recorded version with other content: the copies diverged.
        Seen::Held(Some(h)) if h.version == rec_version && h.checksum != rec_checksum => report(
            CopyState::Diverged,
            Some(h.version),
            Some(format!(
                "checksum {:08x}, the name server records {:08x}",
                h.checksum, rec_checksum
            )),
        ),
        // Above the record where recovery would not adopt it: changes never acknowledged.
        Seen::Held(Some(h)) if h.version > rec_version && !lineage.adopts_newer => report(
            CopyState::Diverged,
            Some(h.version),
            Some(format!(
                "newer than the recorded {rec_version}: changes never acknowledged"
            )),
        ),
        Seen::Held(Some(h)) => report(CopyState::Ok, Some(h.version), None),
    }
}

impl Core {
    /// What recovery would make of `ss`'s copy of `rec` (see [`Lineage`]).
    fn lineage(&self, rec: &FileRecord, ss: &str) -> Lineage {
        let m = if ss == rec.ss {
            Member::Primary
        } else {
            Member::Backup
        };
        let paired = self.reg.is_paired(&rec.ss);
        Lineage {
            epoch_base: rec.epoch_base,
            adopts_newer: !paired || self.writer_member(&rec.ss) == m || !rec.holds(m.other()),
        }
    }

    /// The servers that should hold a copy of `rec`: its primary, then the pair's backup.
    fn copy_holders(&self, rec: &FileRecord) -> Vec<String> {
        let mut v = vec![rec.ss.clone()];
        v.extend(self.reg.backup_for(&rec.ss));
        v
    }

    /// FSCK [f]: starts the checks of one file, or of the page after `after`. Anyone may run
    /// it, over every file, as `VIEW -a` lists every name.
    pub(super) fn fsck(
        &mut self,
        conn: ConnId,
        file: Option<String>,
        after: Option<String>,
    ) -> Result<(), WireError> {
        let (rows, next, orphans) = match file {
            Some(f) => {
                let (canon, rec) = self.lookup(&f)?;
                (vec![(canon, rec.version)], None, false)
            }
            None => page(&self.ns.files, after.as_deref())?,
        };
        let mut ask: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (f, _) in &rows {
            if let Some(rec) = self.ns.files.get(f) {
                for ss in self.copy_holders(rec) {
                    ask.entry(ss).or_default().push(f.clone());
                }
            }
        }
        if orphans {
            for (name, s) in self.reg.servers() {
                if s.up {
                    ask.entry(name.clone()).or_default();
                }
            }
        }
        let mut calls = Vec::new();
        let mut down = Vec::new();
        for (ss, files) in ask {
            match self.reg.server(&ss) {
                Some(s) if s.up => {
                    let scope = crate::auth::check_scope(&files, orphans);
                    let ticket = self.mint(NM_USER, &scope, TicketOp::Check, &ss, None);
                    let msg = Message::CheckFiles {
                        files,
                        orphans,
                        ticket,
                    };
                    calls.push((ss, s.rec.addr(), msg));
                }
                _ => down.push(ss),
            }
        }
        let id = self.fsck.open(conn, rows, next, down, calls.len());
        if calls.is_empty() {
            self.fsck_finish(id);
            return Ok(());
        }
        self.set_busy(conn, true);
        for (ss, addr, msg) in calls {
            self.new_job(
                JobKind::SsCall { addr, msg },
                InFlight {
                    conn,
                    file: String::new(),
                    purpose: Purpose::Fsck { run: id, ss },
                    serialised: false,
                    fence: None,
                },
            );
        }
        Ok(())
    }

    /// One server's answer (or failure) for an FSCK page.
    pub(super) fn fsck_result(
        &mut self,
        run: u64,
        ss: String,
        result: Result<JobOutput, WireError>,
    ) {
        if self.fsck.answer(run, ss, result) {
            self.fsck_finish(run);
        }
    }

    /// Judges every copy of a page whose answers are all in and sends the page.
    fn fsck_finish(&mut self, id: u64) {
        let Some(run) = self.fsck.close(id) else {
            return;
        };
        self.set_busy(run.conn, false);
        let mut files = Vec::with_capacity(run.rows.len());
        for (f, floor) in &run.rows {
            // A file deleted while its copies were checked is no longer part of the report.
            let Some(rec) = self.ns.files.get(f) else {
                continue;
            };
            let mut copies = Vec::new();
            let mut set_aside = Vec::new();
            for ss in self.copy_holders(rec) {
                let seen = match run.answers.get(&ss) {
                    Some(Ok(a)) => {
                        let check = a.copies.get(f);
                        for v in check.map(|c| c.quarantined.as_slice()).unwrap_or(&[]) {
                            set_aside.push(quarantined(&ss, *v));
                        }
                        match check.and_then(|c| c.unreadable.as_deref()) {
                            Some(e) => Seen::Unreadable(e),
                            None => Seen::Held(check.and_then(|c| c.held.as_ref())),
                        }
                    }
                    Some(Err(reason)) => Seen::Down(reason.as_deref()),
                    None => Seen::Down(None),
                };
                let lineage = self.lineage(rec, &ss);
                copies.push(judge_copy(
                    &ss,
                    seen,
                    *floor,
                    rec.version,
                    rec.checksum,
                    lineage,
                ));
            }
            copies.extend(set_aside);
            files.push(FsckFile {
                file: names::display(f),
                recorded: true,
                copies,
            });
        }
        // Quarantined copies not already shown on their file's line: of files with no record,
        // or held by a server outside the file's pair.
        let mut orphans: BTreeMap<String, Vec<CopyReport>> = BTreeMap::new();
        let mut unlisted = 0u64;
        let mut servers: Vec<&String> = run.answers.keys().collect();
        servers.sort();
        for ss in servers {
            let Some(Ok(a)) = run.answers.get(ss) else {
                continue;
            };
            unlisted += a.more_orphans;
            for q in &a.orphans {
                let shown = self
                    .ns
                    .files
                    .get(&q.file)
                    .is_some_and(|rec| self.copy_holders(rec).contains(ss));
                if !shown {
                    orphans
                        .entry(q.file.clone())
                        .or_default()
                        .push(quarantined(ss, q.version));
                }
            }
        }
        for (f, copies) in orphans {
            files.push(FsckFile {
                file: names::display(&f),
                recorded: self.ns.files.contains_key(&f),
                copies,
            });
        }
        let pages = frame::paginate(files, |f| {
            2 * f.file.len()
                + 40
                + f.copies
                    .iter()
                    .map(|c| 2 * (c.ss.len() + c.detail.as_ref().map_or(0, String::len)) + 160)
                    .sum::<usize>()
        });
        let last = pages.len() - 1;
        for (i, files) in pages.into_iter().enumerate() {
            let end = i == last;
            self.reply(
                run.conn,
                Message::FsckPage {
                    files,
                    more: !end,
                    unlisted_quarantined: if end { unlisted } else { 0 },
                    next: if end { run.next.clone() } else { None },
                },
            );
        }
    }
}

fn quarantined(ss: &str, version: Version) -> CopyReport {
    CopyReport {
        ss: ss.to_string(),
        state: CopyState::Quarantined,
        version: Some(version),
        expected: None,
        detail: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::{core, hello, register};
    use super::*;

    fn v(counter: u64) -> Version {
        Version { epoch: 1, counter }
    }

    fn held(counter: u64, checksum: u32, actual: u32) -> HeldCopy {
        HeldCopy {
            version: v(counter),
            checksum,
            actual,
            size: 1,
        }
    }

    #[test]
    fn judging_one_copy() {
        const W: Lineage = Lineage {
            epoch_base: None,
            adopts_newer: true,
        };
        fn judge(h: Option<HeldCopy>) -> CopyState {
            judge_copy("ss1", Seen::Held(h.as_ref()), v(4), v(4), 40, W).state
        }
        assert_eq!(judge(Some(held(4, 40, 40))), CopyState::Ok);
        assert_eq!(judge(Some(held(3, 30, 30))), CopyState::Stale);
        assert_eq!(judge(None), CopyState::Missing);
        let down = judge_copy("ss1", Seen::Down(None), v(4), v(4), 40, W);
        assert_eq!(down.state, CopyState::Down);
        // Bit rot: bookkeeping right, bytes wrong; at any version.
        assert_eq!(judge(Some(held(4, 40, 41))), CopyState::Corrupt);
        assert_eq!(judge(Some(held(3, 30, 31))), CopyState::Corrupt);
        // Same version, other content than recorded: diverged.
        assert_eq!(judge(Some(held(4, 44, 44))), CopyState::Diverged);
        // Newer than the record on the writer (a change the name server is hearing about
        // now, adopted by recovery): current.
        assert_eq!(judge(Some(held(5, 50, 50))), CopyState::Ok);
        // Newer than the record where recovery sets it aside: diverged.
        let b = Lineage {
            epoch_base: None,
            adopts_newer: false,
        };
        let r = judge_copy("b", Seen::Held(Some(&held(5, 50, 50))), v(4), v(4), 40, b);
        assert_eq!((r.state, r.version), (CopyState::Diverged, Some(v(5))));
        assert_eq!(
            judge_copy("b", Seen::Held(Some(&held(4, 40, 40))), v(4), v(4), 40, b).state,
            CopyState::Ok
        );
        // A fork from an earlier epoch past the version it ended with: diverged, not stale.
        let base = Lineage {
            epoch_base: Some(v(3)),
            adopts_newer: false,
        };
        let e2 = Version {
            epoch: 2,
            counter: 1,
        };
        let r = judge_copy("b", Seen::Held(Some(&held(4, 40, 40))), e2, e2, 20, base);
        assert_eq!(r.state, CopyState::Diverged);
        let r = judge_copy("b", Seen::Held(Some(&held(3, 30, 30))), e2, e2, 20, base);
        assert_eq!(r.state, CopyState::Stale);
        assert!(CopyState::Diverged.fails());
        // A change landed while the copy was read: at the floor is not stale.
        let r = judge_copy("ss1", Seen::Held(Some(&held(4, 40, 40))), v(4), v(5), 50, W);
        assert_eq!(r.state, CopyState::Ok);
        let r = judge_copy("b", Seen::Held(Some(&held(2, 20, 20))), v(4), v(5), 50, W);
        assert_eq!(
            (r.state, r.version, r.expected),
            (CopyState::Stale, Some(v(2)), Some(v(5)))
        );
        let r = judge_copy("ss1", Seen::Down(Some("refused")), v(4), v(4), 40, W);
        assert_eq!(r.detail.as_deref(), Some("refused"));
        let r = judge_copy("ss1", Seen::Unreadable("EIO"), v(4), v(4), 40, W);
        assert_eq!(
            (r.state, r.detail.as_deref()),
            (CopyState::Corrupt, Some("unreadable: EIO"))
        );
        assert!(CopyState::Stale.fails() && CopyState::Quarantined.fails());
        assert!(!CopyState::Ok.fails() && !CopyState::Down.fails());
    }

    fn send(c: &mut Core, conn: ConnId, msg: Message) -> Vec<Effect> {
        super::super::tests::send(c, conn, msg, 10)
    }

    fn st(file: &str, counter: u64) -> FileState {
        super::super::tests::st(file, counter, Some("alice"))
    }

    fn client(c: &mut Core, conn: ConnId) {
        hello(c, conn, "bob");
    }

    /// The CHECK_FILES jobs among effects: (job, server address, files, orphans).
    fn checks(e: &[Effect]) -> Vec<(JobId, String, Vec<String>, bool)> {
        e.iter()
            .filter_map(|x| match x {
                Effect::Job(Job {
                    id,
                    kind:
                        JobKind::SsCall {
                            addr,
                            msg:
                                Message::CheckFiles {
                                    files,
                                    orphans,
                                    ticket,
                                },
                        },
                }) => {
                    assert_eq!(ticket.file, crate::auth::check_scope(files, *orphans));
                    assert_eq!(
                        (ticket.op, ticket.user.as_str()),
                        (TicketOp::Check, NM_USER)
                    );
                    Some((*id, addr.clone(), files.clone(), *orphans))
                }
                _ => None,
            })
            .collect()
    }

    fn pages(e: &[Effect]) -> Vec<(Vec<FsckFile>, bool, u64, Option<String>)> {
        e.iter()
            .filter_map(|x| match x {
                Effect::Reply {
                    msg:
                        Message::FsckPage {
                            files,
                            more,
                            unlisted_quarantined,
                            next,
                        },
                    ..
                } => Some((files.clone(), *more, *unlisted_quarantined, next.clone())),
                _ => None,
            })
            .collect()
    }

    fn answer(
        copies: Vec<CopyCheck>,
        orphans: Vec<QuarantineEntry>,
    ) -> Result<JobOutput, WireError> {
        Ok(JobOutput::Checked {
            copies,
            orphans,
            more_orphans: 0,
        })
    }

    fn check(file: &str, h: Option<HeldCopy>, quarantined: Vec<Version>) -> CopyCheck {
        CopyCheck {
            file: file.into(),
            held: h,
            unreadable: None,
            quarantined,
        }
    }

    #[test]
    fn a_pair_is_checked_through_one_job_per_server_and_judged_here() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 4), st("b.txt", 2)]);
        register(&mut c, 2, "ss1_backup", vec![st("a.txt", 3)]);
        client(&mut c, 9);
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: None,
                after: None,
            },
        );
        let jobs = checks(&e);
        assert_eq!(jobs.len(), 2, "{e:?}");
        assert!(c.is_busy(9));
        let files = vec!["a.txt".to_string(), "b.txt".to_string()];
        assert_eq!(jobs[0].1, "127.0.0.1:7001");
        assert_eq!((&jobs[0].2, jobs[0].3), (&files, true));
        assert_eq!((&jobs[1].2, jobs[1].3), (&files, true));
        c.on_job_result(
            jobs[0].0,
            answer(
                vec![
                    check("a.txt", Some(held(4, 4, 4)), vec![]),
                    check("b.txt", Some(held(2, 2, 7)), vec![]),
                ],
                vec![QuarantineEntry {
                    file: "gone.txt".into(),
                    version: v(9),
                }],
            ),
            20,
        );
        assert!(
            pages(&c.take_effects()).is_empty(),
            "waits for every server"
        );
        c.on_job_result(
            jobs[1].0,
            answer(
                vec![
                    check("a.txt", Some(held(3, 3, 3)), vec![v(2)]),
                    check("b.txt", None, vec![]),
                ],
                vec![],
            ),
            20,
        );
        let p = pages(&c.take_effects());
        assert!(!c.is_busy(9));
        assert_eq!(p.len(), 1);
        let (files, more, unlisted, next) = &p[0];
        assert_eq!((*more, *unlisted, next.clone()), (false, 0, None));
        let states = |f: &FsckFile| -> Vec<(String, CopyState)> {
            f.copies.iter().map(|c| (c.ss.clone(), c.state)).collect()
        };
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].file, "a.txt");
        assert_eq!(
            states(&files[0]),
            vec![
                ("ss1".into(), CopyState::Ok),
                ("ss1_backup".into(), CopyState::Stale),
                ("ss1_backup".into(), CopyState::Quarantined),
            ]
        );
        assert_eq!(
            states(&files[1]),
            vec![
                ("ss1".into(), CopyState::Corrupt),
                ("ss1_backup".into(), CopyState::Missing),
            ]
        );
        assert_eq!(
            (files[2].file.as_str(), files[2].recorded),
            ("gone.txt", false)
        );
        assert_eq!(
            states(&files[2]),
            vec![("ss1".into(), CopyState::Quarantined)]
        );
    }

    #[test]
    fn a_down_server_is_reported_without_a_job_and_a_failed_call_as_down() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1)]);
        register(&mut c, 2, "ss1_backup", vec![st("a.txt", 1)]);
        c.on_close(2, 30);
        client(&mut c, 9);
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: Some("a.txt".into()),
                after: None,
            },
        );
        let jobs = checks(&e);
        assert_eq!(jobs.len(), 1);
        assert!(!jobs[0].3, "one file's check lists no orphans");
        c.on_job_result(jobs[0].0, Err(err::unavailable("cannot reach ss1")), 40);
        let p = pages(&c.take_effects());
        let copies = &p[0].0[0].copies;
        assert_eq!(copies[0].state, CopyState::Down);
        assert_eq!(copies[0].detail.as_deref(), Some("cannot reach ss1"));
        assert_eq!(
            (copies[1].state, copies[1].detail.clone()),
            (CopyState::Down, None)
        );
        // Both down: answered at once, no job.
        c.on_close(1, 50);
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: None,
                after: None,
            },
        );
        assert!(checks(&e).is_empty());
        let p = pages(&e);
        assert!(p[0].0[0].copies.iter().all(|c| c.state == CopyState::Down));
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: Some("nope".into()),
                after: None,
            },
        );
        assert!(matches!(
            &e[..],
            [Effect::Reply {
                msg: Message::Err {
                    code: crate::protocol::ErrorCode::NotFound,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn many_files_come_in_bounded_pages_with_a_cursor() {
        let mut c = core();
        let files: Vec<FileState> = (0..250).map(|i| st(&format!("f{i:04}"), 1)).collect();
        register(&mut c, 1, "ss1", files);
        client(&mut c, 9);
        let mut after = None;
        let mut seen = Vec::new();
        for round in 0..10 {
            let e = send(
                &mut c,
                9,
                Message::Fsck {
                    file: None,
                    after: after.clone(),
                },
            );
            let jobs = checks(&e);
            assert_eq!(jobs.len(), 1);
            let (id, _, names, orphans) = &jobs[0];
            assert!(names.len() <= FSCK_PAGE_FILES);
            let copies = names
                .iter()
                .map(|f| check(f, Some(held(1, 1, 1)), vec![]))
                .collect();
            c.on_job_result(*id, answer(copies, vec![]), 20);
            let p = pages(&c.take_effects());
            let (files, _, _, next) = p.last().unwrap().clone();
            assert_eq!(*orphans, next.is_none(), "only the last page lists orphans");
            seen.extend(p.into_iter().flat_map(|x| x.0).map(|f| f.file));
            after = next;
            if after.is_none() {
                assert!(round >= 2);
                assert!(!files.is_empty());
                break;
            }
        }
        assert_eq!(seen.len(), 250);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_overlong_cursor_is_refused() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1)]);
        client(&mut c, 9);
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: None,
                after: Some("x".repeat(MAX_CURSOR_BYTES + 1)),
            },
        );
        assert!(checks(&e).is_empty());
        assert!(matches!(
            &e[..],
            [Effect::Reply {
                msg: Message::Err {
                    code: crate::protocol::ErrorCode::Invalid,
                    ..
                },
                ..
            }]
        ));
        // A cursor past the last name is an empty last page, still answered.
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: None,
                after: Some("zzz".into()),
            },
        );
        let jobs = checks(&e);
        assert_eq!(jobs.len(), 1, "the last page asks for orphans");
        assert!(jobs[0].2.is_empty() && jobs[0].3);
        c.on_job_result(jobs[0].0, answer(vec![], vec![]), 20);
        let p = pages(&c.take_effects());
        assert_eq!(p.len(), 1);
        assert!(p[0].0.is_empty() && p[0].3.is_none());
    }

    #[test]
    fn a_closed_client_drops_its_page() {
        let mut c = core();
        register(&mut c, 1, "ss1", vec![st("a.txt", 1)]);
        client(&mut c, 9);
        let e = send(
            &mut c,
            9,
            Message::Fsck {
                file: None,
                after: None,
            },
        );
        let jobs = checks(&e);
        c.on_close(9, 20);
        c.on_job_result(jobs[0].0, answer(vec![], vec![]), 30);
        assert!(pages(&c.take_effects()).is_empty());
        assert!(c.fsck.by_id.is_empty());
    }
}
