//! The EXEC sandbox: runs a file's bytes as a `sh` script on the name server's host (SPEC §8).
//!
//! The script runs as `/bin/sh <script>` in a fresh, empty temporary directory (the script
//! file itself sits in a second private directory) that is removed afterwards, with a cleared environment (only `PATH=/usr/bin:/bin` and `HOME` = that
//! directory), standard input from `/dev/null`, and standard output and standard error combined
//! into one pipe. The child starts its own session (`setsid`), so it and everything it forks
//! form one process group that can be killed as a whole, and it carries resource limits:
//!
//! * `RLIMIT_CPU` = [`ExecLimits::cpu_seconds`] (the kernel kills a CPU-bound loop);
//! * `RLIMIT_NPROC` = [`ExecLimits::max_processes`] (a fork bomb fails to fork). This limit
//!   counts every process of the real user the name server runs as, not only the script's, and
//!   it does not bind root at all (the kernel exempts processes with `CAP_SYS_RESOURCE` /
//!   `CAP_SYS_ADMIN`); the wall-clock limit and the group kill still apply to root;
//! * `RLIMIT_FSIZE` = [`MAX_FILE_BYTES`] (a script cannot fill the disk through its temp dir);
//! * `RLIMIT_CORE` = 0 (no core dumps).
//!
//! Output is read up to [`ExecLimits::max_output_bytes`]; anything beyond is drained and
//! discarded, so the child never blocks on a full pipe, and the result says `truncated`. The
//! read waits on the pipe with `poll` and a deadline, so a background process that keeps the
//! pipe open (`sleep 100 &`) cannot hold the caller past the wall-clock limit: on expiry the
//! whole process group gets SIGKILL and the shell is reaped.
//!
//! A process that starts yet another session of its own (`setsid` inside the script) leaves
//! the group and escapes the group kill; the process limit bounds how many such escapes there
//! can be for a non-root name server.

use crate::auth::random_hex;
use crate::logging::ev;
use crate::protocol::{err, WireError};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, setsid, Pid};
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Largest file a script may write (`RLIMIT_FSIZE`), in bytes.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How long to wait for the shell to exit after its output pipe closed, when it closed the
/// pipe early (`exec >&-`) but keeps running; bounded anyway by the wall-clock limit.
const REAP_POLL_INTERVAL_MS: u64 = 5;

/// Bytes read from the pipe per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The limits one EXEC runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Wall-clock limit; on expiry the whole process group is killed.
    pub timeout: Duration,
    /// Most output bytes kept (stdout and stderr combined); the rest is discarded.
    pub max_output_bytes: usize,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Processes (`RLIMIT_NPROC`; counts all of the user's processes; does not bind root).
    pub max_processes: u64,
}

impl Default for ExecLimits {
    /// The name server's defaults: 10 s wall clock (`--exec-timeout-s`), 1 MiB of output,
    /// 10 CPU seconds, 256 processes.
    fn default() -> Self {
        ExecLimits {
            timeout: Duration::from_secs(10),
            max_output_bytes: 1024 * 1024,
            cpu_seconds: 10,
            max_processes: 256,
        }
    }
}

/// What a finished script produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Combined stdout and stderr, at most `max_output_bytes`.
    pub output: Vec<u8>,
    /// The shell's exit code; `None` when a signal ended it (for example the CPU limit).
    pub exit_code: Option<i32>,
    /// True when output beyond the cap was discarded.
    pub truncated: bool,
}

/// Runs `script` with `/bin/sh` in a sandbox (see the module docs). Blocking; the caller runs
/// it on a worker thread.
///
/// On wall-clock expiry returns `Err` with code TIMEOUT and the message
/// `EXEC terminated after N s (timeout)`. Failures to set up the sandbox are INTERNAL.
pub fn run_script(script: &[u8], limits: &ExecLimits) -> Result<ExecResult, WireError> {
    // The script lives in a private directory of its own, so the directory it runs in is
    // truly empty when it starts.
    let dir = TempDir::create()?;
    let holder = TempDir::create()?;
    let script_path = holder.path.join("script");
    write_script(&script_path, script)
        .map_err(|e| err::internal(format!("EXEC: cannot write the script: {e}")))?;
    let (read_end, write_end) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err::internal(format!("EXEC: cannot create a pipe: {e}")))?;
    let child = spawn(&dir.path, &script_path, write_end, limits)
        .map_err(|e| err::internal(format!("EXEC: cannot start /bin/sh: {e}")))?;
    // `spawn` consumed (and so closed) our copy of the write end: the pipe reports end of file
    // once every process of the script has closed it.
    let deadline = Instant::now() + limits.timeout;
    let outcome = collect(child, read_end, deadline, limits.max_output_bytes);
    drop(dir);
    drop(holder);
    outcome.map_err(|e| match e {
        CollectError::TimedOut => err::timeout(format!(
            "EXEC terminated after {} s (timeout)",
            seconds_text(limits.timeout)
        )),
        CollectError::Io(e) => err::internal(format!("EXEC: {e}")),
    })
}

/// Seconds as users read them: `10` for whole seconds, `0.25` otherwise.
fn seconds_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A private temporary directory, removed (with whatever the script left in it) on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/pairfs-exec-<random>` with mode 0700; the random name is never reused,
    /// so `create` (not `create_all`) refuses anything planted there in advance.
    fn create() -> Result<TempDir, WireError> {
        let path = std::env::temp_dir().join(format!("pairfs-exec-{}", random_hex(8)));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| err::internal(format!("EXEC: cannot create a temp dir: {e}")))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::warn!(target: ev::NM_EXEC, dir = self.path.display().to_string();
                "cannot remove the EXEC temp dir: {e}");
        }
    }
}

fn write_script(path: &Path, script: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(script)
}

/// Starts `/bin/sh <script>` in `dir` with stdout and stderr on `out`, in a new session with the
/// limits applied.
fn spawn(dir: &Path, script: &Path, out: OwnedFd, limits: &ExecLimits) -> io::Result<Child> {
    let err_fd = out.try_clone()?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(script)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err_fd));
    let cpu = limits.cpu_seconds;
    let nproc = limits.max_processes;
    // SAFETY: the closure runs in the forked child before exec and calls only setsid(2) and
    // setrlimit(2), which are async-signal-safe system calls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            setsid().map_err(io::Error::from)?;
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu).map_err(io::Error::from)?;
            setrlimit(Resource::RLIMIT_NPROC, nproc, nproc).map_err(io::Error::from)?;
            setrlimit(Resource::RLIMIT_FSIZE, MAX_FILE_BYTES, MAX_FILE_BYTES)
                .map_err(io::Error::from)?;
            setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Why collecting a script's output failed.
enum CollectError {
    /// The wall-clock deadline passed; the group was killed and the shell reaped.
    TimedOut,
    /// Reading the pipe or waiting for the child failed.
    Io(io::Error),
}

/// Reads the output until end of file or the deadline, then reaps the shell. Whatever happens,
/// the process group is killed before the shell is reaped, so nothing of the script outlives
/// this call (except processes that left the group on purpose, see the module docs).
fn collect(
    mut child: Child,
    read_end: OwnedFd,
    deadline: Instant,
    cap: usize,
) -> Result<ExecResult, CollectError> {
    let pgid = Pid::from_raw(child.id() as i32);
    let result = read_until(&read_end, deadline, cap).and_then(|(output, truncated)| {
        wait_exit_nowait(pgid, deadline)?;
        Ok((output, truncated))
    });
    // The shell is not reaped yet, so its pid still names the group: no other process can have
    // taken it over, and killing the group reaches exactly the script's processes.
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = child.wait().map_err(CollectError::Io)?;
    let (output, truncated) = result?;
    Ok(ExecResult {
        output,
        exit_code: status.code(),
        truncated,
    })
}

/// Reads `fd` until every writer closed it, keeping `cap` bytes and discarding the rest.
fn read_until(
    fd: &OwnedFd,
    deadline: Instant,
    cap: usize,
) -> Result<(Vec<u8>, bool), CollectError> {
    let mut file = File::from(fd.try_clone().map_err(CollectError::Io)?);
    let mut output = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(CollectError::TimedOut);
        }
        if !wait_readable(fd, deadline - now).map_err(CollectError::Io)? {
            continue;
        }
        let n = match file.read(&mut chunk) {
            Ok(0) => return Ok((output, truncated)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CollectError::Io(e)),
        };
        let room = cap.saturating_sub(output.len());
        if n > room {
            truncated = true;
        }
        output.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Waits up to `wait` for `fd` to be readable (or at end of file); false on timeout.
fn wait_readable(fd: &OwnedFd, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a sub-millisecond remainder does not spin; cap at i32::MAX ms.
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid, initialised pollfd that lives across the call, and we pass a
    // count of exactly one.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Waits until the shell has exited without reaping it (so its pid keeps naming the group),
/// checking every few milliseconds until the deadline. Normally the shell has already exited
/// when its output pipe closes, so the first check succeeds.
fn wait_exit_nowait(pid: Pid, deadline: Instant) -> Result<(), CollectError> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(CollectError::Io(e.into())),
        }
        if Instant::now() >= deadline {
            return Err(CollectError::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(REAP_POLL_INTERVAL_MS));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn limits(timeout_ms: u64) -> ExecLimits {
        ExecLimits {
            timeout: Duration::from_millis(timeout_ms),
            ..ExecLimits::default()
        }
    }

    fn run(script: &str) -> ExecResult {
        run_script(script.as_bytes(), &limits(10_000)).unwrap()
    }

    #[test]
    fn output_of_stdout_and_stderr_is_combined() {
        let r = run("echo one\necho two >&2\nprintf three\n");
        assert_eq!(r.output, b"one\ntwo\nthree");
        assert_eq!(r.exit_code, Some(0));
        assert!(!r.truncated);
    }

    #[test]
    fn exit_code_is_reported() {
        assert_eq!(run("exit 3").exit_code, Some(3));
        let r = run("echo oops; nosuchcommand_xyz");
        assert_eq!(r.exit_code, Some(127));
        assert!(String::from_utf8_lossy(&r.output).starts_with("oops\n"));
    }

    #[test]
    fn environment_is_cleared_and_cwd_is_an_empty_private_dir() {
        std::env::set_var("PAIRFS_SECRET_FOR_TEST", "leak");
        let r = run("env | sort; echo cwd=$(pwd); ls -A | wc -l; cat /dev/stdin | wc -c");
        let out = String::from_utf8(r.output).unwrap();
        assert!(!out.contains("PAIRFS_SECRET_FOR_TEST"), "{out}");
        assert!(out.contains("PATH=/usr/bin:/bin\n"), "{out}");
        let cwd = out
            .lines()
            .find_map(|l| l.strip_prefix("cwd="))
            .unwrap()
            .to_string();
        assert!(out.contains(&format!("HOME={cwd}\n")), "{out}");
        // The directory is empty (the script lives elsewhere), and stdin is empty.
        let nums: Vec<&str> = out.lines().rev().take(2).collect();
        assert_eq!(nums, vec!["0", "0"], "{out}");
        assert!(!Path::new(&cwd).exists(), "temp dir removed afterwards");
    }

    #[test]
    fn output_is_capped_and_the_child_still_finishes() {
        let l = ExecLimits {
            max_output_bytes: 1000,
            ..limits(10_000)
        };
        // 2 MB through a 64 KiB pipe: the reader must keep draining past the cap.
        let r = run_script(b"head -c 2000000 /dev/zero; echo done >&2; exit 4", &l).unwrap();
        assert_eq!(r.output.len(), 1000);
        assert!(r.truncated);
        assert_eq!(r.exit_code, Some(4));
    }

    /// Waits (with a deadline) until `pid` is gone or a zombie, i.e. no longer running.
    fn wait_dead(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            if matches!(state, None | Some("Z") | Some("X")) {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    fn pids_in(path: &Path) -> Vec<i32> {
        fs::read_to_string(path)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    #[test]
    fn timeout_kills_the_whole_group_promptly() {
        let pids = std::env::temp_dir().join(format!("pairfs-exec-test-{}", random_hex(6)));
        let script = format!(
            "sleep 100 &\necho $! >> {p}\n(sleep 100; echo never) &\necho $! >> {p}\n\
             echo $$ >> {p}\nsleep 100\n",
            p = pids.display()
        );
        let start = Instant::now();
        let e = run_script(script.as_bytes(), &limits(500)).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code, ErrorCode::Timeout);
        assert_eq!(e.msg, "EXEC terminated after 0.5 s (timeout)");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let pids_seen = pids_in(&pids);
        let _ = fs::remove_file(&pids);
        assert_eq!(pids_seen.len(), 3);
        for pid in pids_seen {
            assert!(wait_dead(pid), "process {pid} survived the timeout");
        }
    }

    #[test]
    fn background_child_holding_the_pipe_does_not_outlive_the_timeout() {
        // The shell exits at once, but its background child keeps the pipe open.
        let start = Instant::now();
        let e = run_script(b"echo hi; sleep 100 &", &limits(400)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn detached_background_child_is_killed_after_a_normal_exit() {
        let r = run("sleep 100 >/dev/null 2>&1 &\necho $!\n");
        assert_eq!(r.exit_code, Some(0));
        let pid: i32 = String::from_utf8(r.output).unwrap().trim().parse().unwrap();
        assert!(
            wait_dead(pid),
            "background process {pid} outlived the script"
        );
    }

    #[test]
    fn seconds_render_like_users_read_them() {
        assert_eq!(seconds_text(Duration::from_secs(10)), "10");
        assert_eq!(seconds_text(Duration::from_millis(500)), "0.5");
        assert_eq!(seconds_text(Duration::from_millis(1250)), "1.25");
    }
}
