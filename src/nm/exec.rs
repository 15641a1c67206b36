//! The EXEC sandbox: runs a file's bytes as a `sh` script on the name server's host (SPEC §8).
//!
//! # What a script gets
//!
//! The script runs as `/bin/sh <script>` with a cleared environment (only `PATH=/usr/bin:/bin`
//! and `HOME` = its working directory), standard input from `/dev/null`, and standard output
//! and standard error combined into one pipe. Its working directory is a private, empty,
//! writable temporary directory; the script file itself sits elsewhere.
//!
//! # Isolation
//!
//! The name server decides once, at startup ([`Sandbox::probe`]), how far it can isolate
//! scripts, and logs it as `nm_exec_isolation` (at WARN, naming what is missing and why, when
//! it cannot isolate fully):
//!
//! * **Namespaces** (the server runs as root): each script gets fresh mount, PID, network, IPC
//!   and UTS namespaces and runs as the unprivileged `--exec-user` (default `nobody`), with no
//!   supplementary groups and `PR_SET_NO_NEW_PRIVS`.
//! * **User namespace** (not root, but the kernel allows unprivileged user namespaces): the
//!   same namespaces inside a new user namespace that maps only the server's own user; the
//!   shell starts without capabilities. It runs as the server's user, but nothing of that
//!   user's files is within reach.
//! * **Limits only** (neither is possible): the script runs as the server's user (root drops
//!   to `--exec-user`) with the resource limits below but can see what that user sees.
//!
//! Inside the namespaces the file system is a new root on a small tmpfs ([`pivot_root(2)`]):
//! read-only bind mounts of `/usr`, `/bin`, `/sbin`, `/lib*` (symlinks, as on merged-`/usr`
//! systems, are kept as symlinks), an `/etc` holding only the few files programs need (users,
//! groups, the loader cache, name-service and time-zone settings; never `shadow`), a fresh
//! `/proc` showing only the script's processes, a `/dev` with `null`, `zero`, `random` and
//! `urandom`, and a writable `/tmp` (its working directory: a tmpfs of
//! [`TMP_BYTES`]). Key files, storage directories and the name server's data are simply not
//! there. The network namespace has only a loopback interface, which is down.
//!
//! The process the name server starts is the PID namespace's init: it sets the namespaces up,
//! starts the shell and waits for it. When it ends (the shell exited, or the name server
//! killed it on timeout, or the name server died: `PR_SET_PDEATHSIG`), the kernel kills every
//! other process of the namespace, including those that started sessions of their own
//! (`setsid`). Without namespaces the shell leads its own session and the whole process group
//! is killed instead; a process that calls `setsid` escapes that kill.
//!
//! # Limits
//!
//! * `RLIMIT_CPU` = [`ExecLimits::cpu_seconds`] (the kernel kills a CPU-bound loop);
//! * `RLIMIT_NPROC` = [`ExecLimits::max_processes`] (a fork bomb fails to fork; it counts every
//!   process of the user the script runs as, and does not bind a script running as root);
//! * `RLIMIT_AS` = [`ExecLimits::max_memory_bytes`];
//! * `RLIMIT_NOFILE` = [`ExecLimits::max_open_files`];
//! * `RLIMIT_FSIZE` = [`MAX_FILE_BYTES`] (a script cannot fill the disk through one file);
//! * `RLIMIT_CORE` = 0 (no core dumps).
//!
//! Output is read up to [`ExecLimits::max_output_bytes`]; anything beyond is drained and
//! discarded, so the child never blocks on a full pipe, and the result says `truncated`. The
//! read waits on the pipe with `poll` and a deadline, so a background process that keeps the
//! pipe open (`sleep 100 &`) cannot hold the caller past the wall-clock limit.
//!
//! # Between fork and exec
//!
//! The child is a copy of a multi-threaded process, so it may only make async-signal-safe
//! calls: every path, option string and argument is prepared before the fork, and the child
//! makes raw system calls only (it forks its own child with the `clone` system call rather
//! than `fork(3)`, whose handlers take locks another thread may have held).
//!
//! [`pivot_root(2)`]: https://man7.org/linux/man-pages/man2/pivot_root.2.html

use crate::auth::random_hex;
use crate::logging::ev;
use crate::protocol::{err, WireError};
use std::ffi::{CStr, CString};
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest file a script may write (`RLIMIT_FSIZE`), in bytes.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Size of a sandboxed script's `/tmp` (a tmpfs), in bytes.
pub const TMP_BYTES: u64 = 64 * 1024 * 1024;

/// The account scripts run as when the name server runs as root and no `--exec-user` is given.
pub const DEFAULT_EXEC_USER: &str = "nobody";

/// The uid and gid scripts run as when the server is root and `nobody` is not in the user
/// database: the kernel's overflow ids, which own nothing.
const OVERFLOW_ID: u32 = 65534;

/// How long to wait for the shell to exit after its output pipe closed, when it closed the
/// pipe early (`exec >&-`) but keeps running; bounded anyway by the wall-clock limit.
const REAP_POLL_INTERVAL_MS: u64 = 5;

/// Bytes read from the pipe per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Where the script file sits inside the sandbox (outside its working directory).
const SANDBOX_SCRIPT: &str = "/script.sh";
/// The script's working directory and `HOME` inside the sandbox.
const SANDBOX_TMP: &str = "/tmp";
/// Size of the sandbox's root tmpfs: it holds only mount points and the script (at most
/// 1 MiB, see `worker::MAX_SCRIPT_BYTES`).
const ROOT_TMPFS_BYTES: u64 = 4 * 1024 * 1024;
/// Inodes of the script's `/tmp`.
const TMP_INODES: u64 = 16 * 1024;

/// The limits one EXEC runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Wall-clock limit; on expiry every process of the script is killed.
    pub timeout: Duration,
    /// Most output bytes kept (stdout and stderr combined); the rest is discarded.
    pub max_output_bytes: usize,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Processes (`RLIMIT_NPROC`; counts all of the script user's processes).
    pub max_processes: u64,
    /// Address space of each process (`RLIMIT_AS`), in bytes.
    pub max_memory_bytes: u64,
    /// Open files of each process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
}

impl Default for ExecLimits {
    /// The name server's defaults: 10 s wall clock (`--exec-timeout-s`), 1 MiB of output,
    /// 10 CPU seconds, 256 processes, 1 GiB of address space, 256 open files.
    fn default() -> Self {
        ExecLimits {
            timeout: Duration::from_secs(10),
            max_output_bytes: 1024 * 1024,
            cpu_seconds: 10,
            max_processes: 256,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_open_files: 256,
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

/// How far scripts are isolated (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Fresh namespaces, entered as root; the script runs as the exec user.
    Namespaces,
    /// Fresh namespaces inside an unprivileged user namespace.
    UserNamespace,
    /// Resource limits only.
    LimitsOnly,
}

impl Isolation {
    /// The name logged in `nm_exec_isolation`'s `mode` field.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Namespaces => "namespaces",
            Isolation::UserNamespace => "user_namespace",
            Isolation::LimitsOnly => "limits_only",
        }
    }
}

/// Why the sandbox could not be prepared at startup.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `--exec-user` names no account.
    #[error("--exec-user {0}: no such user")]
    NoSuchUser(String),
    /// `--exec-user` names root.
    #[error("--exec-user {0}: scripts must not run as root")]
    RootUser(String),
    /// Looking the account up failed.
    #[error("--exec-user {user}: {source}")]
    Lookup {
        /// The account name.
        user: String,
        /// The failure.
        source: nix::Error,
    },
}

/// How this name server runs scripts, decided once at startup.
#[derive(Debug)]
pub struct Sandbox {
    isolation: Isolation,
    /// The account to switch to (the server runs as root), as (uid, gid).
    drop_to: Option<(u32, u32)>,
    /// The prepared namespace set-up, for the two namespace modes.
    ns: Option<NsPlan>,
}

impl Sandbox {
    /// Finds the strongest isolation this process can get, by trying it: as root, namespaces
    /// and a switch to `exec_user` (default [`DEFAULT_EXEC_USER`]); otherwise an unprivileged
    /// user namespace; failing both, limits only. Logs the outcome once as
    /// `nm_exec_isolation` (WARN with what is missing and why, unless fully isolated).
    pub fn probe(exec_user: Option<&str>) -> Result<Sandbox, SandboxError> {
        let root = nix::unistd::geteuid().is_root();
        let (sandbox, missing) = Self::choose(root, exec_user)?;
        match &missing {
            None => log::info!(target: ev::NM_EXEC_ISOLATION, mode = sandbox.isolation.name();
                "EXEC scripts run isolated ({})", sandbox.isolation.name()),
            Some(why) => log::warn!(target: ev::NM_EXEC_ISOLATION,
                mode = sandbox.isolation.name(), missing = why.as_str();
                "EXEC scripts are not fully isolated: {why}"),
        }
        Ok(sandbox)
    }

    /// The sandbox of a name server that refuses EXEC: never used, never probed.
    pub fn disabled() -> Sandbox {
        Sandbox {
            isolation: Isolation::LimitsOnly,
            drop_to: None,
            ns: None,
        }
    }

    /// The isolation in force.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    fn choose(
        root: bool,
        exec_user: Option<&str>,
    ) -> Result<(Sandbox, Option<String>), SandboxError> {
        let drop_to = if root {
            match (
                exec_user,
                lookup_user(exec_user.unwrap_or(DEFAULT_EXEC_USER)),
            ) {
                (_, Ok(ids)) => Some(ids),
                // A system without a `nobody` entry still has the kernel's overflow ids.
                (None, Err(SandboxError::NoSuchUser(_))) => Some((OVERFLOW_ID, OVERFLOW_ID)),
                (_, Err(e)) => return Err(e),
            }
        } else {
            None
        };
        let ns_why = if root {
            let (uid, gid) = drop_to.unwrap_or((0, 0));
            match Self::try_namespaces(Isolation::Namespaces, drop_to, uid, gid) {
                Ok(s) => return Ok((s, None)),
                Err(why) => why,
            }
        } else {
            let uid = nix::unistd::geteuid().as_raw();
            let gid = nix::unistd::getegid().as_raw();
            match Self::try_namespaces(Isolation::UserNamespace, None, uid, gid) {
                Ok(s) => {
                    let note = exec_user.map(|u| {
                        format!("--exec-user {u} is ignored: the server is not root, so scripts run as its own user inside a user namespace")
                    });
                    return Ok((s, note));
                }
                Err(why) => why,
            }
        };
        let who = if root {
            "scripts run as the exec user"
        } else {
            "scripts run as the server's own user and can read whatever it can, including the cluster key"
        };
        let missing = format!(
            "no network, mount or PID namespaces ({ns_why}); {who}, can reach the network and \
             the host's files, and processes that call setsid escape the timeout kill"
        );
        let s = Sandbox {
            isolation: Isolation::LimitsOnly,
            drop_to,
            ns: None,
        };
        Ok((s, Some(missing)))
    }

    /// Prepares a namespace sandbox and runs a trivial script in it; the error says why it
    /// cannot be used.
    fn try_namespaces(
        isolation: Isolation,
        drop_to: Option<(u32, u32)>,
        uid: u32,
        gid: u32,
    ) -> Result<Sandbox, String> {
        let plan = NsPlan::prepare(isolation == Isolation::UserNamespace, uid, gid)
            .map_err(|e| format!("cannot prepare the sandbox: {e}"))?;
        let s = Sandbox {
            isolation,
            drop_to,
            ns: Some(plan),
        };
        let limits = ExecLimits {
            timeout: Duration::from_secs(5),
            ..ExecLimits::default()
        };
        match run_script(b"exit 7", &limits, &s) {
            Ok(r) if r.exit_code == Some(7) => Ok(s),
            Ok(r) => Err(format!(
                "a trial script ended with {:?}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.output).trim()
            )),
            Err(e) => Err(e.msg),
        }
    }
}

/// The uid and gid of account `name`, which must not be root.
fn lookup_user(name: &str) -> Result<(u32, u32), SandboxError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|source| SandboxError::Lookup {
            user: name.to_string(),
            source,
        })?
        .ok_or_else(|| SandboxError::NoSuchUser(name.to_string()))?;
    if user.uid.is_root() {
        return Err(SandboxError::RootUser(name.to_string()));
    }
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// One step of building the sandbox's root, with every path prepared in advance.
#[derive(Debug)]
enum Op {
    /// `mkdir`.
    Mkdir(CString),
    /// A read-only recursive bind mount of a directory; `flags` are the source's mount flags
    /// that a remount must repeat (inside a user namespace they are locked).
    BindDir {
        src: CString,
        dst: CString,
        flags: libc::c_ulong,
    },
    /// A bind mount of a file, read-only unless it is a device node.
    BindFile {
        src: CString,
        dst: CString,
        /// `None` for device nodes, which stay as they are (writable `/dev/null`).
        flags: Option<libc::c_ulong>,
    },
    /// A symlink `dst -> target`.
    Symlink { target: CString, dst: CString },
}

/// Everything the namespace init needs, prepared once at startup.
#[derive(Debug)]
struct NsPlan {
    /// Whether a user namespace is created (the server is not root).
    user_ns: bool,
    /// `/proc/self/uid_map` and `gid_map` lines for the user namespace.
    uid_map: CString,
    gid_map: CString,
    /// Where the new root is assembled: the host's temp dir, over-mounted by a tmpfs inside
    /// the private mount namespace (the host never sees it).
    root: CString,
    root_opts: CString,
    ops: Vec<Op>,
    proc_dst: CString,
    tmp_dst: CString,
    tmp_opts: CString,
    script_dst: CString,
    /// Inside the sandbox: the shell, the script and the working directory.
    sh: CString,
    script: CString,
    cwd: CString,
    env: Vec<CString>,
}

/// Top-level directories bound read-only into the sandbox when they exist.
const BOUND_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// What the sandbox's `/etc` holds when the host has it (never shadow or gshadow).
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
];
/// Device nodes bound into the sandbox's `/dev`.
const DEV_NODES: &[&str] = &["null", "zero", "random", "urandom"];

impl NsPlan {
    fn prepare(user_ns: bool, uid: u32, gid: u32) -> io::Result<NsPlan> {
        let base = std::env::temp_dir();
        if !base.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                base.display()
            )));
        }
        let root = base.as_os_str().as_bytes().to_vec();
        let at = |rel: &str| -> io::Result<CString> {
            let mut p = root.clone();
            p.push(b'/');
            p.extend_from_slice(rel.as_bytes());
            cstring(p)
        };
        let mut ops = Vec::new();
        for d in BOUND_DIRS {
            let src = Path::new("/").join(d);
            Self::add_entry(&mut ops, &src, at(d)?)?;
        }
        ops.push(Op::Mkdir(at("etc")?));
        for e in ETC_ENTRIES {
            let src = Path::new("/etc").join(e);
            Self::add_entry(&mut ops, &src, at(&format!("etc/{e}"))?)?;
        }
        ops.push(Op::Mkdir(at("dev")?));
        for d in DEV_NODES {
            let src = Path::new("/dev").join(d);
            if src.exists() {
                ops.push(Op::BindFile {
                    src: cstring(src.as_os_str().as_bytes().to_vec())?,
                    dst: at(&format!("dev/{d}"))?,
                    flags: None,
                });
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: cstring(target.as_bytes().to_vec())?,
                dst: at(&format!("dev/{name}"))?,
            });
        }
        ops.push(Op::Mkdir(at("proc")?));
        ops.push(Op::Mkdir(at("tmp")?));
        Ok(NsPlan {
            user_ns,
            uid_map: cstring(format!("{uid} {uid} 1\n").into_bytes())?,
            gid_map: cstring(format!("{gid} {gid} 1\n").into_bytes())?,
            root: cstring(root.clone())?,
            root_opts: cstring(format!("size={ROOT_TMPFS_BYTES},mode=0755").into_bytes())?,
            ops,
            proc_dst: at("proc")?,
            tmp_dst: at("tmp")?,
            tmp_opts: cstring(
                format!("size={TMP_BYTES},nr_inodes={TMP_INODES},mode=0700,uid={uid},gid={gid}")
                    .into_bytes(),
            )?,
            script_dst: at(SANDBOX_SCRIPT.trim_start_matches('/'))?,
            sh: cstring(b"/bin/sh".to_vec())?,
            script: cstring(SANDBOX_SCRIPT.as_bytes().to_vec())?,
            cwd: cstring(SANDBOX_TMP.as_bytes().to_vec())?,
            env: vec![
                cstring(b"PATH=/usr/bin:/bin".to_vec())?,
                cstring(format!("HOME={SANDBOX_TMP}").into_bytes())?,
            ],
        })
    }

    /// Adds what mirrors host path `src` at `dst`: a symlink stays a symlink, a directory or
    /// file is bound read-only; a missing one is left out.
    fn add_entry(ops: &mut Vec<Op>, src: &Path, dst: CString) -> io::Result<()> {
        let md = match fs::symlink_metadata(src) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let src_c = cstring(src.as_os_str().as_bytes().to_vec())?;
        if md.file_type().is_symlink() {
            let target = fs::read_link(src)?;
            ops.push(Op::Symlink {
                target: cstring(target.as_os_str().as_bytes().to_vec())?,
                dst,
            });
        } else if md.is_dir() {
            let flags = mount_flags(&src_c)?;
            ops.push(Op::BindDir {
                src: src_c,
                dst,
                flags,
            });
        } else {
            let flags = mount_flags(&src_c)?;
            ops.push(Op::BindFile {
                src: src_c,
                dst,
                flags: Some(flags),
            });
        }
        Ok(())
    }
}

fn cstring(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("a path holds a NUL byte"))
}

/// The mount flags of the file system holding `path` that a read-only remount of a bind
/// mount of it must keep: inside a user namespace, dropping them is refused.
fn mount_flags(path: &CStr) -> io::Result<libc::c_ulong> {
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let f = st.f_flag;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    for (st_flag, ms_flag) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Runs `script` with `/bin/sh` in `sandbox` (see the module docs). Blocking; the caller runs
/// it on a worker thread.
///
/// On wall-clock expiry returns `Err` with code TIMEOUT and the message
/// `EXEC terminated after N s (timeout)`. Failures to set up the sandbox are INTERNAL.
pub fn run_script(
    script: &[u8],
    limits: &ExecLimits,
    sandbox: &Sandbox,
) -> Result<ExecResult, WireError> {
    let (out_r, out_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let rl = RawLimits::from(limits);
    let start = match &sandbox.ns {
        Some(plan) => start_in_namespaces(plan, sandbox.drop_to, script, &rl, out_w, rep_w)?,
        None => start_limited(sandbox.drop_to, script, &rl, out_w, rep_w)?,
    };
    // Our copies of the write ends are closed: the output pipe reports end of file once every
    // process of the script has closed it.
    let deadline = Instant::now() + limits.timeout;
    let outcome = collect(start.pid, out_r, rep_r, deadline, limits.max_output_bytes);
    drop(start.dirs);
    outcome.map_err(|e| match e {
        CollectError::TimedOut => err::timeout(format!(
            "EXEC terminated after {} s (timeout)",
            seconds_text(limits.timeout)
        )),
        CollectError::Setup(msg) => err::internal(format!("EXEC: cannot start /bin/sh: {msg}")),
        CollectError::Io(e) => err::internal(format!("EXEC: {e}")),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), WireError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err::internal(format!("EXEC: cannot create a pipe: {e}")))
}

/// A started script: the process the name server waits for, and the host directories to
/// remove afterwards (limits-only mode).
struct Started {
    pid: libc::pid_t,
    dirs: Vec<TempDir>,
}

/// The limits as the child applies them.
struct RawLimits {
    list: [(libc::__rlimit_resource_t, u64); 6],
}

impl From<&ExecLimits> for RawLimits {
    fn from(l: &ExecLimits) -> RawLimits {
        RawLimits {
            list: [
                (libc::RLIMIT_CPU, l.cpu_seconds),
                (libc::RLIMIT_NPROC, l.max_processes),
                (libc::RLIMIT_AS, l.max_memory_bytes),
                (libc::RLIMIT_NOFILE, l.max_open_files),
                (libc::RLIMIT_FSIZE, MAX_FILE_BYTES),
                (libc::RLIMIT_CORE, 0),
            ],
        }
    }
}

/// What the shell child needs, prepared before the fork.
struct ShellSpec<'a> {
    sh: &'a CStr,
    argv: [*const libc::c_char; 3],
    envp: [*const libc::c_char; 3],
    cwd: &'a CStr,
    drop_to: Option<(u32, u32)>,
    limits: &'a RawLimits,
}

/// Starts the namespace init (see the module docs).
fn start_in_namespaces(
    plan: &NsPlan,
    drop_to: Option<(u32, u32)>,
    script: &[u8],
    limits: &RawLimits,
    out_w: OwnedFd,
    rep_w: OwnedFd,
) -> Result<Started, WireError> {
    let sh_name = c"sh";
    let spec = ShellSpec {
        sh: &plan.sh,
        argv: [sh_name.as_ptr(), plan.script.as_ptr(), std::ptr::null()],
        envp: [plan.env[0].as_ptr(), plan.env[1].as_ptr(), std::ptr::null()],
        cwd: &plan.cwd,
        drop_to,
        limits,
    };
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if plan.user_ns {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: a fork-like clone; the child runs only `ns_init`, which makes raw system calls
    // on data prepared above and never returns.
    let pid = unsafe { raw_fork(flags) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child (see above).
        unsafe { ns_init(plan, &spec, script, out_w.as_raw_fd(), rep_w.as_raw_fd()) }
    }
    if pid < 0 {
        return Err(err::internal(format!(
            "EXEC: cannot create the sandbox: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(Started { pid, dirs: vec![] })
}

/// Starts the shell directly, with limits (and the switch to the exec user) only.
fn start_limited(
    drop_to: Option<(u32, u32)>,
    script: &[u8],
    limits: &RawLimits,
    out_w: OwnedFd,
    rep_w: OwnedFd,
) -> Result<Started, WireError> {
    // The script lives in a private directory of its own, so the directory it runs in is
    // truly empty when it starts.
    let dir = TempDir::create(drop_to)?;
    let holder = TempDir::create(drop_to)?;
    let script_path = holder.path.join("script");
    write_script(&script_path, script, drop_to)
        .map_err(|e| err::internal(format!("EXEC: cannot write the script: {e}")))?;
    let to_c = |p: &Path| {
        cstring(p.as_os_str().as_bytes().to_vec()).map_err(|e| err::internal(format!("EXEC: {e}")))
    };
    let script_c = to_c(&script_path)?;
    let cwd = to_c(&dir.path)?;
    let home = cstring([b"HOME=", dir.path.as_os_str().as_bytes()].concat())
        .map_err(|e| err::internal(format!("EXEC: {e}")))?;
    let path = c"PATH=/usr/bin:/bin";
    let spec = ShellSpec {
        sh: c"/bin/sh",
        argv: [c"sh".as_ptr(), script_c.as_ptr(), std::ptr::null()],
        envp: [path.as_ptr(), home.as_ptr(), std::ptr::null()],
        cwd: &cwd,
        drop_to,
        limits,
    };
    // SAFETY: a plain fork; the child runs only `shell`, which makes raw system calls on data
    // prepared above and never returns.
    let pid = unsafe { raw_fork(0) };
    if pid == 0 {
        // SAFETY: we are the freshly forked child. It leads its own session so the whole
        // process group can be killed, and dies with the thread that started it.
        unsafe {
            reset_signals();
            libc::setsid();
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            shell(&spec, out_w.as_raw_fd(), rep_w.as_raw_fd())
        }
    }
    if pid < 0 {
        return Err(err::internal(format!(
            "EXEC: cannot fork: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(Started {
        pid,
        dirs: vec![dir, holder],
    })
}

/// The steps the child can fail at, reported to the parent by number.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Stage {
    UserMap = 1,
    MountPrivate,
    MountRoot,
    Layout,
    MountProc,
    MountTmp,
    WriteScript,
    RemountRoot,
    PivotRoot,
    Fork,
    Stdio,
    Chdir,
    Rlimit,
    NoNewPrivs,
    SwitchUser,
    Exec,
}

impl Stage {
    fn describe(n: u8) -> &'static str {
        match n {
            1 => "writing the user namespace's id maps",
            2 => "making mounts private",
            3 => "mounting the sandbox root",
            4 => "building the sandbox file system",
            5 => "mounting /proc",
            6 => "mounting /tmp",
            7 => "writing the script",
            8 => "making the root read-only",
            9 => "pivot_root",
            10 => "forking the shell",
            11 => "setting up stdin/stdout/stderr",
            12 => "entering the working directory",
            13 => "setting resource limits",
            14 => "PR_SET_NO_NEW_PRIVS",
            15 => "switching to the exec user",
            16 => "exec /bin/sh",
            _ => "an unknown step",
        }
    }
}

/// Report tags on the report pipe.
const REPORT_FAILED: u8 = b'E';
const REPORT_STATUS: u8 = b'S';

/// A `fork` as the `clone` system call, with `flags` (namespaces) added. Unlike `fork(3)`, it
/// runs no `pthread_atfork` handlers, which may take locks that another thread of this process
/// held at the time of the call and that the child would then wait on forever.
///
/// # Safety
/// In the child (return value 0) only async-signal-safe work is allowed, and it must end in
/// `execve` or `_exit`.
unsafe fn raw_fork(flags: libc::c_int) -> libc::pid_t {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork: the child gets
    // a copy of the address space and continues on its own copy of this stack.
    unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) as libc::pid_t }
}

/// Reports a failed step to the parent and exits.
///
/// # Safety
/// Async-signal-safe; for the child only.
unsafe fn fail(rep: RawFd, stage: Stage) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let e = errno.to_le_bytes();
    let msg = [REPORT_FAILED, stage as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` lives across the call.
    unsafe {
        libc::write(rep, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Checks a raw system call's result, failing the child on -1.
///
/// # Safety
/// As [`fail`].
unsafe fn check(rc: libc::c_int, rep: RawFd, stage: Stage) {
    if rc < 0 {
        // SAFETY: as this function's contract.
        unsafe { fail(rep, stage) }
    }
}

/// Restores every signal's default disposition and an empty signal mask: the name server's
/// handlers and ignored signals (SIGPIPE) must not reach the script.
///
/// # Safety
/// Async-signal-safe; for the child only.
unsafe fn reset_signals() {
    // SAFETY: sigaction(2) and sigprocmask(2) are async-signal-safe; the structures are local.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        // The standard signals; nothing here installs handlers for real-time ones.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Closes every descriptor from 3 up except `keep`.
///
/// # Safety
/// Async-signal-safe; for the child only.
unsafe fn close_all_but(keep: RawFd) {
    let close_range = |lo: RawFd, hi: libc::c_uint| {
        // SAFETY: close_range(2) only closes descriptors of this (child) process; an old
        // kernel without it leaves them to O_CLOEXEC.
        unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi, 0u32) };
    };
    if keep > 3 {
        close_range(3, (keep - 1) as libc::c_uint);
    }
    close_range(keep + 1, libc::c_uint::MAX);
}

/// Writes all of `bytes` to `fd`; false on failure.
///
/// # Safety
/// Async-signal-safe.
unsafe fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid slice for the duration of the call.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        bytes = bytes.get(n as usize..).unwrap_or(&[]);
    }
    true
}

/// Writes `bytes` to the file `path` (created with `mode`); false on failure.
///
/// # Safety
/// Async-signal-safe.
unsafe fn write_file(path: &CStr, bytes: &[u8], flags: libc::c_int, mode: libc::mode_t) -> bool {
    // SAFETY: open/write/close on a NUL-terminated path.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            flags | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        );
        if fd < 0 {
            return false;
        }
        let ok = write_all(fd, bytes);
        libc::close(fd);
        ok
    }
}

/// A `mount(2)` call with optional source, type and data.
///
/// # Safety
/// Async-signal-safe.
unsafe fn mount(
    src: Option<&CStr>,
    dst: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_int {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or NUL-terminated.
    unsafe { libc::mount(p(src), dst.as_ptr(), p(fstype), flags, p(data).cast()) }
}

/// The namespace init: builds the sandbox's file system, starts the shell, waits for it and
/// reports its status. When it exits, the kernel kills whatever is left in the namespace.
///
/// # Safety
/// For the freshly cloned child only; async-signal-safe throughout; never returns.
unsafe fn ns_init(plan: &NsPlan, spec: &ShellSpec<'_>, script: &[u8], out: RawFd, rep: RawFd) -> ! {
    // SAFETY: every call below is a raw system call (or a thin libc wrapper of one) on
    // NUL-terminated strings and buffers prepared before the clone.
    unsafe {
        reset_signals();
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::setsid();
        // The name server's umask (0077) would make the new root unreadable to the script's
        // user; the modes below are meant as given.
        libc::umask(0);
        if plan.user_ns {
            let ok = write_file(c"/proc/self/setgroups", b"deny", 0, 0)
                && write_file(c"/proc/self/uid_map", plan.uid_map.as_bytes(), 0, 0)
                && write_file(c"/proc/self/gid_map", plan.gid_map.as_bytes(), 0, 0);
            if !ok {
                fail(rep, Stage::UserMap);
            }
        }
        let rec_private = libc::MS_REC | libc::MS_PRIVATE;
        check(
            mount(None, c"/", None, rec_private, None),
            rep,
            Stage::MountPrivate,
        );
        let tmpfs = Some(c"tmpfs");
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        check(
            mount(
                tmpfs,
                &plan.root,
                tmpfs,
                nosuid_nodev,
                Some(&plan.root_opts),
            ),
            rep,
            Stage::MountRoot,
        );
        for op in &plan.ops {
            let rc = match op {
                Op::Mkdir(dst) => libc::mkdir(dst.as_ptr(), 0o755),
                Op::Symlink { target, dst } => libc::symlink(target.as_ptr(), dst.as_ptr()),
                Op::BindDir { src, dst, flags } => {
                    let mut rc = libc::mkdir(dst.as_ptr(), 0o755);
                    if rc == 0 {
                        rc = mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None);
                    }
                    if rc == 0 {
                        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags;
                        rc = mount(None, dst, None, ro, None);
                    }
                    rc
                }
                Op::BindFile { src, dst, flags } => {
                    let fd = libc::open(dst.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o444);
                    let mut rc = if fd < 0 { -1 } else { libc::close(fd) };
                    if rc == 0 {
                        rc = mount(Some(src), dst, None, libc::MS_BIND, None);
                    }
                    if let (0, Some(flags)) = (rc, flags) {
                        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags;
                        rc = mount(None, dst, None, ro, None);
                    }
                    rc
                }
            };
            check(rc, rep, Stage::Layout);
        }
        let proc_flags = nosuid_nodev | libc::MS_NOEXEC;
        check(
            mount(
                Some(c"proc"),
                &plan.proc_dst,
                Some(c"proc"),
                proc_flags,
                None,
            ),
            rep,
            Stage::MountProc,
        );
        check(
            mount(
                tmpfs,
                &plan.tmp_dst,
                tmpfs,
                nosuid_nodev,
                Some(&plan.tmp_opts),
            ),
            rep,
            Stage::MountTmp,
        );
        if !write_file(
            &plan.script_dst,
            script,
            libc::O_CREAT | libc::O_EXCL,
            0o444,
        ) {
            fail(rep, Stage::WriteScript);
        }
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | nosuid_nodev;
        check(
            mount(None, &plan.root, None, ro, None),
            rep,
            Stage::RemountRoot,
        );
        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only
        // the new root (no directory for the old root is needed).
        check(libc::chdir(plan.root.as_ptr()), rep, Stage::PivotRoot);
        let dot = c".";
        let rc = libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int;
        check(rc, rep, Stage::PivotRoot);
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            rep,
            Stage::PivotRoot,
        );
        check(libc::chdir(c"/".as_ptr()), rep, Stage::PivotRoot);

        let shell_pid = raw_fork(0);
        if shell_pid == 0 {
            shell(spec, out, rep);
        }
        if shell_pid < 0 {
            fail(rep, Stage::Fork);
        }
        // Only the shell's processes may hold the output pipe, and nothing of the name
        // server's may stay open here.
        close_all_but(rep);
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == shell_pid {
                let s = status.to_le_bytes();
                let msg = [REPORT_STATUS, s[0], s[1], s[2], s[3]];
                write_all(rep, &msg);
                libc::_exit(0);
            }
            if pid < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                libc::_exit(1);
            }
        }
    }
}

/// The shell child: standard streams, working directory, limits, user switch, exec.
///
/// # Safety
/// For a freshly forked child only; async-signal-safe throughout; never returns.
unsafe fn shell(spec: &ShellSpec<'_>, out: RawFd, rep: RawFd) -> ! {
    // SAFETY: raw system calls on data prepared before the fork.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(out, 1) < 0 || libc::dup2(out, 2) < 0 {
            fail(rep, Stage::Stdio);
        }
        close_all_but(rep);
        // Files the script creates in its private directory need no protection from others.
        libc::umask(0o022);
        check(libc::chdir(spec.cwd.as_ptr()), rep, Stage::Chdir);
        for (resource, value) in spec.limits.list {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            check(libc::setrlimit(resource, &lim), rep, Stage::Rlimit);
        }
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            rep,
            Stage::NoNewPrivs,
        );
        if let Some((uid, gid)) = spec.drop_to {
            // Raw system calls: glibc's wrappers would try to change the ids of every thread
            // the name server has, and wait forever for threads that do not exist here.
            let null: *const libc::gid_t = std::ptr::null();
            let rc = libc::syscall(libc::SYS_setgroups, 0usize, null) as libc::c_int;
            check(rc, rep, Stage::SwitchUser);
            let rc = libc::syscall(libc::SYS_setresgid, gid, gid, gid) as libc::c_int;
            check(rc, rep, Stage::SwitchUser);
            let rc = libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int;
            check(rc, rep, Stage::SwitchUser);
        }
        libc::execve(spec.sh.as_ptr(), spec.argv.as_ptr(), spec.envp.as_ptr());
        fail(rep, Stage::Exec)
    }
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

/// A private temporary directory on the host (limits-only mode), removed (with whatever the
/// script left in it) on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/pairfs-exec-<random>` with mode 0700, owned by the account the script
    /// runs as; the random name is never reused, so `create` (not `create_all`) refuses
    /// anything planted there in advance.
    fn create(owner: Option<(u32, u32)>) -> Result<TempDir, WireError> {
        let path = std::env::temp_dir().join(format!("pairfs-exec-{}", random_hex(8)));
        let fail = |e: io::Error| err::internal(format!("EXEC: cannot create a temp dir: {e}"));
        DirBuilder::new().mode(0o700).create(&path).map_err(fail)?;
        let dir = TempDir { path };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid)).map_err(fail)?;
        }
        Ok(dir)
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

fn write_script(path: &Path, script: &[u8], owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    f.write_all(script)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Why collecting a script's output failed.
enum CollectError {
    /// The wall-clock deadline passed; everything was killed and reaped.
    TimedOut,
    /// The sandbox could not be set up (the child's report).
    Setup(String),
    /// Reading the pipe or waiting for the child failed.
    Io(io::Error),
}

/// Reads the output until end of file or the deadline, then reaps the child. Whatever
/// happens, the child's process group is killed before it is reaped, so nothing of the script
/// outlives this call (with namespaces, the init's death kills all the rest).
fn collect(
    pid: libc::pid_t,
    out: OwnedFd,
    report: OwnedFd,
    deadline: Instant,
    cap: usize,
) -> Result<ExecResult, CollectError> {
    let pid = nix::unistd::Pid::from_raw(pid);
    let result = read_until(&out, deadline, cap).and_then(|(output, truncated)| {
        wait_exit_nowait(pid, deadline)?;
        Ok((output, truncated))
    });
    // The child is not reaped yet, so its pid still names its group: no other process can
    // have taken it over, and killing the group reaches exactly the script's processes.
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(|e| CollectError::Io(e.into()))?,
        }
    };
    // Every writer of the report pipe is gone now; it holds a failure, the shell's status
    // (namespaces), or nothing.
    let mut rep = Vec::new();
    File::from(report)
        .read_to_end(&mut rep)
        .map_err(CollectError::Io)?;
    if let [REPORT_FAILED, stage, e0, e1, e2, e3, ..] = rep[..] {
        let errno = i32::from_le_bytes([e0, e1, e2, e3]);
        return Err(CollectError::Setup(format!(
            "{}: {}",
            Stage::describe(stage),
            io::Error::from_raw_os_error(errno)
        )));
    }
    let (output, truncated) = result?;
    let exit_code = match rep[..] {
        [REPORT_STATUS, s0, s1, s2, s3, ..] => {
            let st = i32::from_le_bytes([s0, s1, s2, s3]);
            libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st))
        }
        _ => match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => Some(code),
            _ => None,
        },
    };
    Ok(ExecResult {
        output,
        exit_code,
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

/// Waits until the child has exited without reaping it (so its pid keeps naming the group),
/// checking every few milliseconds until the deadline. Normally it has already exited when
/// its output pipe closes, so the first check succeeds.
fn wait_exit_nowait(pid: nix::unistd::Pid, deadline: Instant) -> Result<(), CollectError> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
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
    use std::sync::OnceLock;

    fn sandbox() -> &'static Sandbox {
        static S: OnceLock<Sandbox> = OnceLock::new();
        S.get_or_init(|| Sandbox::probe(None).unwrap())
    }

    fn isolated() -> bool {
        sandbox().isolation() != Isolation::LimitsOnly
    }

    fn limits(timeout_ms: u64) -> ExecLimits {
        ExecLimits {
            timeout: Duration::from_millis(timeout_ms),
            ..ExecLimits::default()
        }
    }

    fn run(script: &str) -> ExecResult {
        run_script(script.as_bytes(), &limits(10_000), sandbox()).unwrap()
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
        // A shell killed by a signal has no exit code.
        assert_eq!(run("kill -9 $$").exit_code, None);
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
        if isolated() {
            // The sandbox's own /tmp, gone with its mount namespace.
            assert_eq!(cwd, SANDBOX_TMP);
        } else {
            assert!(!Path::new(&cwd).exists(), "temp dir removed afterwards");
        }
    }

    #[test]
    fn output_is_capped_and_the_child_still_finishes() {
        let l = ExecLimits {
            max_output_bytes: 1000,
            ..limits(10_000)
        };
        // 2 MB through a 64 KiB pipe: the reader must keep draining past the cap.
        let script = b"head -c 2000000 /dev/zero; echo done >&2; exit 4";
        let r = run_script(script, &l, sandbox()).unwrap();
        assert_eq!(r.output.len(), 1000);
        assert!(r.truncated);
        assert_eq!(r.exit_code, Some(4));
    }

    #[test]
    fn resource_limits_are_applied() {
        let out = String::from_utf8(run("cat /proc/self/limits").output).unwrap();
        let l = ExecLimits::default();
        for (name, value) in [
            ("Max cpu time", l.cpu_seconds),
            ("Max file size", MAX_FILE_BYTES),
            ("Max core file size", 0),
            ("Max processes", l.max_processes),
            ("Max open files", l.max_open_files),
            ("Max address space", l.max_memory_bytes),
        ] {
            let line = out.lines().find(|x| x.starts_with(name)).unwrap();
            let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
            assert_eq!(
                fields[..2],
                [value.to_string(), value.to_string()],
                "{line}"
            );
        }
    }

    /// Host pids of processes whose command line holds the argument `arg`.
    fn pids_with_arg(arg: &str) -> Vec<i32> {
        let mut pids = vec![];
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
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

    /// A `sleep` argument no other process on the host uses: `1000.<random digits>`.
    fn marker() -> String {
        let n = u64::from_str_radix(&random_hex(6), 16).unwrap();
        format!("1000.{n}")
    }

    /// Waits (with a deadline) until every marker names a running process; their host pids.
    fn wait_started(markers: &[String]) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found: Vec<Vec<i32>> = markers.iter().map(|m| pids_with_arg(m)).collect();
            if found.iter().all(|p| !p.is_empty()) {
                return found.into_iter().flatten().collect();
            }
            assert!(Instant::now() < deadline, "not all of {markers:?} started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn timeout_kills_every_process_of_the_script_promptly() {
        let m: Vec<String> = (0..4).map(|_| marker()).collect();
        // Without namespaces a process that starts its own session escapes the group kill.
        let setsid = if isolated() {
            format!("setsid sleep {} &\n", m[2])
        } else {
            format!("sleep {} &\n", m[2])
        };
        let script = format!(
            "sleep {} &\n(sleep {}; echo never) &\n{setsid}sleep {}\n",
            m[0], m[1], m[3]
        );
        let start = Instant::now();
        let runner =
            std::thread::spawn(move || run_script(script.as_bytes(), &limits(1500), sandbox()));
        let pids = wait_started(&m);
        let e = runner.join().unwrap().unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code, ErrorCode::Timeout);
        assert_eq!(e.msg, "EXEC terminated after 1.5 s (timeout)");
        assert!(took < Duration::from_secs(4), "took {took:?}");
        for pid in pids {
            assert!(wait_dead(pid), "process {pid} survived the timeout");
        }
    }

    #[test]
    fn background_child_holding_the_pipe_does_not_outlive_the_timeout() {
        // The shell exits at once, but its background child keeps the pipe open.
        let start = Instant::now();
        let r = run_script(b"echo hi; sleep 100 &", &limits(400), sandbox());
        if isolated() {
            // The namespace dies with the shell, and the pipe with it.
            assert_eq!(r.unwrap().output, b"hi\n");
        } else {
            assert_eq!(r.unwrap_err().code, ErrorCode::Timeout);
        }
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn detached_background_child_is_killed_after_a_normal_exit() {
        let m = marker();
        let r = run(&format!("sleep {m} >/dev/null 2>&1 &\necho $!\n"));
        assert_eq!(r.exit_code, Some(0));
        let started: i32 = String::from_utf8(r.output).unwrap().trim().parse().unwrap();
        assert!(started > 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pids_with_arg(&m).iter().all(|p| wait_dead(*p)) {
            assert!(
                Instant::now() < deadline,
                "the background sleep outlived the script"
            );
        }
    }

    #[test]
    fn sandbox_hides_the_host_and_drops_privileges() {
        if !isolated() {
            println!(
                "SKIPPED: no namespaces here ({})",
                sandbox().isolation().name()
            );
            return;
        }
        let secret = std::env::temp_dir().join(format!("pairfs-exec-secret-{}", random_hex(6)));
        fs::write(&secret, "secret").unwrap();
        let r = run(&format!(
            "cat {s} 2>&1 || echo no-secret\ncat /etc/shadow 2>&1 || echo no-shadow\n\
             touch /usr/x /etc/x /x 2>/dev/null || echo read-only\n\
             echo > /tmp/ok && echo tmp-writable\nid -u\nls /proc | grep -c '^[0-9]'\n",
            s = secret.display()
        ));
        let _ = fs::remove_file(&secret);
        let out = String::from_utf8_lossy(&r.output).to_string();
        for want in ["no-secret", "no-shadow", "read-only", "tmp-writable"] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
        assert!(!out.lines().any(|l| l == "secret"), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let uid: u32 = lines[lines.len() - 2].parse().unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_ne!(uid, 0, "{out}");
        }
        // Only the script's own processes are visible: init, the shell, ls, grep.
        let procs: u32 = lines[lines.len() - 1].parse().unwrap();
        assert!(procs <= 5, "{out}");
    }

    #[test]
    fn seconds_render_like_users_read_them() {
        assert_eq!(seconds_text(Duration::from_secs(10)), "10");
        assert_eq!(seconds_text(Duration::from_millis(500)), "0.5");
        assert_eq!(seconds_text(Duration::from_millis(1250)), "1.25");
    }
}
