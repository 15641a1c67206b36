//! EXEC sandbox (temporary stand-in with the agreed API until the real sandbox lands).

use crate::protocol::{err, WireError};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Limits for one EXEC run.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Output cap in bytes.
    pub max_output_bytes: usize,
    /// CPU seconds.
    pub cpu_seconds: u64,
    /// Process cap.
    pub max_processes: u64,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// Combined output, capped.
    pub output: Vec<u8>,
    /// Exit code of `sh`, if it exited.
    pub exit_code: Option<i32>,
    /// True when the cap cut the output.
    pub truncated: bool,
}

/// Blocking. On wall-clock expiry: Err(TIMEOUT "EXEC terminated after N s (timeout)").
pub fn run_script(script: &[u8], limits: &ExecLimits) -> Result<ExecResult, WireError> {
    let dir = std::env::temp_dir().join(format!("pairfs-exec-{}", crate::auth::random_hex(8)));
    std::fs::create_dir_all(&dir).map_err(|e| err::internal(e.to_string()))?;
    let result = run_in(&dir, script, limits);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &std::path::Path,
    script: &[u8],
    limits: &ExecLimits,
) -> Result<ExecResult, WireError> {
    let path = dir.join("script.sh");
    std::fs::write(&path, script).map_err(|e| err::internal(e.to_string()))?;
    let mut child = Command::new("sh")
        .arg(&path)
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err::internal(e.to_string()))?;
    let start = Instant::now();
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut buf);
        }
        buf
    });
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut output = reader.join().unwrap_or_default();
            let truncated = output.len() > limits.max_output_bytes;
            output.truncate(limits.max_output_bytes);
            return Ok(ExecResult {
                output,
                exit_code: status.code(),
                truncated,
            });
        }
        if start.elapsed() > limits.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err::timeout(format!(
                "EXEC terminated after {} s (timeout)",
                limits.timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
