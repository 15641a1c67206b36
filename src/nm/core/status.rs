//! STATUS and `GET /status`: what the name server shows about servers, pairs and jobs.
//!
//! Reads the core's state only. Ages (`last_heartbeat_age_ms`) are monotonic; times shown as
//! instants (`last_heartbeat_ms`) and a pair's replication lag (from each job's `since_ms`)
//! are wall-clock Unix ms.
//!
//! The snapshot also carries the most recent events ([`Events`]: failovers, handbacks and
//! recoveries, servers going down, copies set aside in quarantine), kept in a small ring so
//! an operator's page can list them. A quarantine is noted when the core decides a member's
//! copy must be set aside ([`SetAside`] says why), once per copy however often the job owing
//! it is rewritten; a burst of them (a server registering with many diverged copies) is one
//! event naming the first few files and counting the rest, so it cannot push the failovers
//! out of the ring.

use super::*;

/// Most recent events the snapshot keeps.
pub const EVENTS_KEPT: usize = 50;
/// Quarantines of one server for one reason noted within this long of the first are one
/// event (while no other event came between them).
pub const QUARANTINE_BURST_MS: u64 = 5_000;
/// Files a quarantine event names; the rest are counted.
pub const QUARANTINE_FILES_NAMED: usize = 3;

/// One event shown on the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusEvent {
    /// Unix ms.
    pub at_ms: u64,
    /// `FAILOVER_START`, `FAILOVER`, `FAILOVER_CANCELLED`, `HANDBACK`, `HANDBACK_ABORTED`,
    /// `RECOVERED`, `SERVER_DOWN`, `SERVER_UP` or `QUARANTINE`.
    pub kind: &'static str,
    /// The pair (its primary's name) or server concerned.
    pub subject: String,
    pub text: String,
    /// For `QUARANTINE`: the files whose copies were set aside (at most
    /// [`QUARANTINE_FILES_NAMED`], display spelling) and how many in all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_total: Option<u64>,
}

/// Why a member's copy of a file is set aside in its `quarantine/` before the current copy
/// (or the removal) is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAside {
    /// It registered holding the file with changes the cluster never acknowledged.
    Diverged { held: Version, current: Version },
    /// It registered holding a file the index does not know, and is not its pair's writer.
    Unrecorded,
    /// It reported a change while not its pair's writer (a hand edit on a backup, or a
    /// writer deposed while the change ran).
    NotWriter,
    /// It answered a change made in an epoch that has since ended.
    EndedEpoch,
    /// A new file of that name replaces an older one whose removal it is still owed.
    ReplacesRemoval,
}

impl SetAside {
    /// The reason without per-file detail (shared by a burst).
    fn reason(self) -> &'static str {
        match self {
            SetAside::Diverged { .. } => {
                "it registered with changes the cluster never acknowledged"
            }
            SetAside::Unrecorded => "it registered with a file the index does not know",
            SetAside::NotWriter => "it reported a change while not its pair's writer",
            SetAside::EndedEpoch => "it answered a change made in an epoch that has ended",
            SetAside::ReplacesRemoval => {
                "a new file of that name replaces one whose removal it was still owed"
            }
        }
    }

    /// The reason with the detail of one copy.
    fn detail(self) -> String {
        match self {
            SetAside::Diverged { held, current } => {
                format!("{} (it holds {held}, current {current})", self.reason())
            }
            _ => self.reason().to_string(),
        }
    }

    fn same_reason(self, other: SetAside) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// The quarantine burst the newest event stands for.
#[derive(Debug)]
struct Burst {
    why: SetAside,
    first_ms: u64,
}

/// The last [`EVENTS_KEPT`] events, oldest first.
#[derive(Debug, Default)]
pub struct Events {
    ring: VecDeque<StatusEvent>,
    /// Set while the newest event is a quarantine that later ones may join.
    burst: Option<Burst>,
}

impl Events {
    /// Records an event at wall-clock `at_ms`, forgetting the oldest beyond [`EVENTS_KEPT`].
    pub fn note(&mut self, at_ms: u64, kind: &'static str, subject: &str, text: String) {
        self.push(StatusEvent {
            at_ms,
            kind,
            subject: subject.to_string(),
            text,
            files: Vec::new(),
            files_total: None,
        });
    }

    fn push(&mut self, e: StatusEvent) {
        self.burst = None;
        if self.ring.len() >= EVENTS_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
    }

    /// Records that `ss`'s copy of `file` (canonical) is set aside, joining the newest event
    /// when it is a quarantine of `ss` for the same reason begun within
    /// [`QUARANTINE_BURST_MS`].
    pub fn quarantine(&mut self, at_ms: u64, ss: &str, file: &str, why: SetAside) {
        let shown = names::display(file);
        if let (Some(b), Some(last)) = (&self.burst, self.ring.back_mut()) {
            if last.subject == ss
                && b.why.same_reason(why)
                && at_ms.saturating_sub(b.first_ms) <= QUARANTINE_BURST_MS
            {
                let total = last.files_total.unwrap_or(1) + 1;
                if last.files.len() < QUARANTINE_FILES_NAMED {
                    last.files.push(shown);
                }
                last.files_total = Some(total);
                let more = total - last.files.len() as u64;
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                last.text = format!(
                    "{} copies set aside in quarantine ({}{more}): {}",
                    total,
                    last.files.join(", "),
                    why.reason()
                );
                return;
            }
        }
        self.push(StatusEvent {
            at_ms,
            kind: "QUARANTINE",
            subject: ss.to_string(),
            text: format!(
                "its copy of {shown} is set aside in quarantine: {}",
                why.detail()
            ),
            files: vec![shown],
            files_total: Some(1),
        });
        self.burst = Some(Burst {
            why,
            first_ms: at_ms,
        });
    }

    /// The events, oldest first.
    pub fn list(&self) -> &VecDeque<StatusEvent> {
        &self.ring
    }
}

impl Core {
    /// A JSON snapshot for `GET /status`: servers (with the bytes of the files the name
    /// server records on each), pairs, the replication queue, recent events and totals.
    pub fn status_json(&self, now_ms: u64) -> serde_json::Value {
        let mut bytes_of: HashMap<&str, u64> = HashMap::new();
        for r in self.ns.files.values() {
            *bytes_of.entry(r.ss.as_str()).or_default() += r.size;
        }
        // A backup holds what its primary holds.
        let bytes_on = |n: &str| {
            let p = self.reg.primary_of(n).unwrap_or(n);
            bytes_of.get(p).copied().unwrap_or(0)
        };
        let servers: Vec<serde_json::Value> = self
            .reg
            .servers()
            .map(|(n, s)| {
                serde_json::json!({
                    "name": n,
                    "addr": s.rec.addr(),
                    "backup_of": s.rec.backup_of,
                    "state": if s.up { "UP" } else { "DOWN" },
                    "files": s.files,
                    "bytes": bytes_on(n),
                    "disk_free": s.disk.map(|d| d.free),
                    "disk_used": s.disk.map(|d| d.used),
                    "last_heartbeat_ms": s.last_heartbeat_ms.map(|t| self.wall_at(now_ms, t)),
                    "last_heartbeat_age_ms": s.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
                })
            })
            .collect();
        let (pairs, queue_depth, failed, failed_total, roles) = match self.status_reply(now_ms) {
            Message::StatusReply {
                pairs,
                queue_depth,
                failed,
                failed_total,
                servers,
                ..
            } => (pairs, queue_depth, failed, failed_total, servers),
            _ => (Vec::new(), 0, Vec::new(), 0, Vec::new()),
        };
        serde_json::json!({
            "replication": self.cfg.replication,
            "servers": servers,
            "roles": roles,
            "pairs": pairs,
            "queue_depth": queue_depth,
            "replication_in_flight": self.q.in_flight(),
            "failed": failed,
            "failed_total": failed_total,
            "events": self.events.list(),
            "now_ms": self.env.wall_ms(now_ms),
            "totals": {
                "files": self.ns.files.len(),
                "users": self.ns.users.len(),
                "servers_up": self.reg.servers().filter(|(_, s)| s.up).count(),
                "servers": self.reg.servers().count(),
                "jobs_in_flight": self.ops.len(),
            }
        })
    }

    /// The state STATUS shows for a pair: its phase combined with which members are up.
    ///
    /// | phase | members | shown |
    /// |---|---|---|
    /// | SERVING, primary writes | both up, nothing owed | `ACTIVE` (`SYNCING` while owed) |
    /// | SERVING, primary writes | backup down | `BACKUP_DOWN` |
    /// | SERVING, promoted backup writes | primary down | `PRIMARY_DOWN` |
    /// | SERVING, promoted backup writes | primary up (being caught up) | `RECOVERING` |
    /// | FAILING_OVER | writer down | `FAILING_OVER` |
    /// | HANDBACK | both up | `HANDBACK` |
    /// | any | both down | `DOWN` |
    pub fn pair_state_name(&self, p: &str, b: &str, st: &PairRecord, owed: bool) -> &'static str {
        let (pu, bu) = (self.reg.is_up(p), self.reg.is_up(b));
        if !pu && !bu {
            return "DOWN";
        }
        match (st.phase, st.writer) {
            (Phase::FailingOver, _) => "FAILING_OVER",
            (Phase::Handback, _) => "HANDBACK",
            (Phase::Serving, Member::Primary) if !bu => "BACKUP_DOWN",
            (Phase::Serving, Member::Primary) if owed => "SYNCING",
            (Phase::Serving, Member::Primary) => "ACTIVE",
            (Phase::Serving, Member::Backup) if !pu => "PRIMARY_DOWN",
            (Phase::Serving, Member::Backup) => "RECOVERING",
        }
    }

    pub(super) fn status_reply(&self, now_ms: u64) -> Message {
        // One pass over the files and one over the owed jobs, whatever the number of servers.
        let mut files_of: HashMap<&str, u64> = HashMap::new();
        for r in self.ns.files.values() {
            *files_of.entry(r.ss.as_str()).or_default() += 1;
        }
        let mut owed_to: HashMap<&str, Owed> = HashMap::new();
        let (mut queue_depth, mut failed_total, mut failed) = (0u64, 0u64, Vec::new());
        for j in self.q.rows() {
            let o = owed_to.entry(j.target.as_str()).or_default();
            o.jobs += 1;
            if matches!(j.want, Want::Content { .. }) {
                o.bytes += self.ns.files.get(&j.file).map_or(0, |r| r.size);
            }
            o.oldest_ms = Some(o.oldest_ms.map_or(j.since_ms, |t| t.min(j.since_ms)));
            match j.state {
                JobState::Pending => queue_depth += 1,
                JobState::Failed => {
                    failed_total += 1;
                    if failed.len() < STATUS_FAILED_SHOWN {
                        failed.push(FailedJob {
                            file: j.file.clone(),
                            target: j.target.clone(),
                            attempts: j.attempts,
                            error: clip(j.last_error.as_deref().unwrap_or_default()),
                        });
                    }
                }
            }
        }
        let files_of = |primary: &str| files_of.get(primary).copied().unwrap_or(0);
        let servers = self
            .reg
            .servers()
            .map(|(n, s)| {
                let primary = self.reg.primary_of(n);
                let (role, files) = match primary {
                    Some(p) if self.writer_member(p) == Member::Backup => {
                        ("backup (promoted)", files_of(p))
                    }
                    Some(p) => ("backup", files_of(p)),
                    None if self.reg.is_backup(n) => ("backup", 0),
                    None if self.reg.is_paired(n) => ("primary", s.files),
                    None => ("unpaired", s.files),
                };
                ServerStatus {
                    name: n.clone(),
                    addr: s.rec.addr(),
                    up: s.up,
                    role: role.to_string(),
                    files,
                    last_heartbeat_ms: s.last_heartbeat_ms.map(|t| self.wall_at(now_ms, t)),
                }
            })
            .collect();
        let pairs = self
            .reg
            .servers()
            .map(|(n, _)| n)
            .filter(|n| !self.reg.is_backup(n) || self.reg.is_paired(n))
            .map(|p| {
                let backup = self.reg.backup_for(p);
                // Jobs owed to either member.
                let owed = match &backup {
                    Some(b) => [p.as_str(), b.as_str()]
                        .iter()
                        .filter_map(|m| owed_to.get(m))
                        .fold(Owed::default(), |a, o| a.plus(o)),
                    None => Owed::default(),
                };
                let st = self.pairs.get(p).cloned().unwrap_or_else(PairRecord::new);
                let state = match &backup {
                    None => "UNPAIRED",
                    Some(b) => self.pair_state_name(p, b, &st, owed.jobs > 0),
                };
                let writer = backup
                    .as_ref()
                    .and_then(|_| self.reg.member_name(p, st.writer));
                PairStatus {
                    primary: p.clone(),
                    backup,
                    state: state.to_string(),
                    epoch: st.epoch,
                    lag_jobs: owed.jobs,
                    lag_bytes: owed.bytes,
                    lag_ms: owed
                        .oldest_ms
                        .map_or(0, |t| self.env.wall_ms(now_ms).saturating_sub(t)),
                    writer,
                    sync_done: st.sync_done,
                    sync_total: st.sync_total,
                }
            })
            .collect();
        Message::StatusReply {
            servers,
            pairs,
            queue_depth,
            failed,
            failed_total,
            replication: self.cfg.replication.to_string(),
        }
    }
}

/// Most FAILED jobs one STATUS lists (it counts them all), so its reply stays one frame.
pub const STATUS_FAILED_SHOWN: usize = 20;
/// Most bytes of a FAILED job's error that STATUS shows.
pub(super) const STATUS_ERROR_BYTES: usize = 200;

/// The replication jobs owed to one server, as STATUS sums them.
#[derive(Default)]
struct Owed {
    jobs: u64,
    /// Bytes of the content they carry.
    bytes: u64,
    /// When the oldest change among them was made.
    oldest_ms: Option<u64>,
}

impl Owed {
    fn plus(self, o: &Owed) -> Owed {
        Owed {
            jobs: self.jobs + o.jobs,
            bytes: self.bytes + o.bytes,
            oldest_ms: match (self.oldest_ms, o.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// `error` cut to at most [`STATUS_ERROR_BYTES`] (at a character boundary), marked with `…`
/// when cut.
fn clip(error: &str) -> String {
    if error.len() <= STATUS_ERROR_BYTES {
        return error.to_string();
    }
    let mut end = STATUS_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}
