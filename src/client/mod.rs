//! The command-line client: parsing, talking to the name and storage servers, rendering.
//!
//! [`run`] is the whole client: it connects, then reads commands from a terminal (with line
//! editing, history and the `> ` / `WRITE> ` prompts) or from a pipe (no prompts), runs each,
//! and returns the exit status: 0 if every command succeeded, 1 if any failed, 2 if the name
//! server could not be reached (at start, or later when a reconnect failed or a connection
//! broke mid-command). Standard output carries only the human text of SPEC §2.

pub mod parse;
pub mod render;
pub mod session;
mod sslink;
pub mod transfer;

use parse::{parse_edit, parse_line, Command, EditLine};
use session::{EditError, Session, WriteSession};
use std::io::{self, BufRead, IsTerminal, Read, Write};

/// Longest input line accepted, in bytes; a longer line is refused with LIMIT and skipped.
/// Room for an edit line carrying the longest sentence a write session may hold (one frame
/// body) plus its word index.
pub const MAX_LINE_BYTES: usize = crate::protocol::frame::MAX_BODY_BYTES + 64;

/// Prompt in normal mode (terminal only).
pub const PROMPT: &str = "> ";
/// Prompt inside a write session (terminal only).
pub const WRITE_PROMPT: &str = "WRITE> ";

/// Entries kept in the in-memory line-editing history.
const HISTORY_ENTRIES: usize = 1000;

/// What the client connects to and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Name server host.
    pub nm_host: String,
    /// Name server port.
    pub nm_port: u16,
    /// The user to act as.
    pub username: String,
    /// The user's key file (`None`: `identity::default_key_path`), created on first use.
    pub user_key_file: Option<std::path::PathBuf>,
    /// How long a change waits out a failover (`--wait-s`); `None`: one failover with the
    /// cluster's own settings, as the name server announces them.
    pub wait: Option<std::time::Duration>,
}

/// Where command lines come from.
pub trait LineSource {
    /// The next line without its newline, `None` at end of input. `prompt` is shown only by
    /// interactive sources.
    fn next_line(&mut self, prompt: &str) -> Option<Result<String, String>>;

    /// Whether a person types the lines (a WRITE that cannot open then just returns to the
    /// prompt; from a pipe its edit lines are skipped up to `ETIRW`).
    fn interactive(&self) -> bool {
        false
    }
}

/// Lines from a pipe or file: no prompts, lossy UTF-8, each line capped at
/// [`MAX_LINE_BYTES`] (a longer one yields `Err` and is skipped).
pub struct PipedLines<R: BufRead> {
    reader: R,
}

impl<R: BufRead> PipedLines<R> {
    /// Wraps a reader.
    pub fn new(reader: R) -> Self {
        PipedLines { reader }
    }
}

impl<R: BufRead> LineSource for PipedLines<R> {
    fn next_line(&mut self, _prompt: &str) -> Option<Result<String, String>> {
        let mut buf = Vec::new();
        let limit = MAX_LINE_BYTES as u64 + 1;
        match (&mut self.reader).take(limit).read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") => {
                // Skip the rest of the over-long line, in bounded pieces.
                loop {
                    let mut rest = Vec::new();
                    match (&mut self.reader).take(limit).read_until(b'\n', &mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if rest.ends_with(b"\n") => break,
                        Ok(_) => {}
                    }
                }
                Some(Err(format!(
                    "line too long: more than {MAX_LINE_BYTES} bytes, the limit; it was skipped"
                )))
            }
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                Some(Ok(String::from_utf8_lossy(&buf).into_owned()))
            }
            // An unreadable standard input ends the session like end of input does.
            Err(_) => None,
        }
    }
}

/// Lines from a terminal, with prompts, line editing and history.
pub struct TerminalLines {
    editor: rustyline::DefaultEditor,
}

impl TerminalLines {
    /// Sets up line editing on the terminal.
    pub fn new() -> Result<Self, rustyline::error::ReadlineError> {
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_ENTRIES)?
            .auto_add_history(true)
            .build();
        Ok(TerminalLines {
            editor: rustyline::DefaultEditor::with_config(config)?,
        })
    }
}

impl LineSource for TerminalLines {
    fn next_line(&mut self, prompt: &str) -> Option<Result<String, String>> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => Some(Ok(line)),
            // Ctrl-C drops the line being typed, as in a shell; Ctrl-D ends the input.
            Err(ReadlineError::Interrupted) => Some(Ok(String::new())),
            Err(_) => None,
        }
    }

    fn interactive(&self) -> bool {
        true
    }
}

/// The exit status being accumulated over a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Status(i32);

impl Status {
    fn fail(&mut self, connection: bool) {
        self.0 = self.0.max(if connection { 2 } else { 1 });
    }
}

/// Runs the client on the process's standard input and output; returns the exit status.
pub fn run(opts: &Options) -> i32 {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if io::stdin().is_terminal() {
        match TerminalLines::new() {
            Ok(mut lines) => return run_with(opts, &mut lines, &mut out),
            Err(e) => log::warn!("line editing unavailable ({e}); reading plain lines"),
        }
    }
    let stdin = io::stdin();
    let mut lines = PipedLines::new(stdin.lock());
    run_with(opts, &mut lines, &mut out)
}

/// Runs the client on any line source and output; returns the exit status.
pub fn run_with(opts: &Options, input: &mut dyn LineSource, out: &mut dyn Write) -> i32 {
    let key_file = opts
        .user_key_file
        .clone()
        .unwrap_or_else(|| crate::identity::default_key_path(&opts.username));
    // The name is checked first (the name server refuses it the same way), so a bad one
    // never names a key file.
    let key = match crate::names::validate_user(&opts.username)
        .and_then(|()| crate::identity::UserKey::load_or_create(&key_file))
    {
        Ok(k) => k,
        Err(e) => {
            let _ = writeln!(out, "{e}");
            let _ = out.flush();
            return 2;
        }
    };
    let mut session =
        match Session::connect_with_key(&opts.nm_host, opts.nm_port, &opts.username, key) {
            Ok(mut s) => {
                s.set_failover_wait(opts.wait);
                s
            }
            Err(e) => {
                let _ = writeln!(out, "{e}");
                let _ = out.flush();
                return 2;
            }
        };
    let mut status = Status::default();
    loop {
        // A person may take minutes over the next line: the storage server's connection slot
        // is given back meanwhile (see `sslink`).
        if input.interactive() {
            session.drop_kept();
        }
        let Some(line) = input.next_line(PROMPT) else {
            break;
        };
        let ok = run_line(&mut session, line, input, out, &mut status);
        if out.flush().is_err() || !ok {
            break;
        }
    }
    let _ = out.flush();
    status.0
}

/// Runs one input line; false when the client should stop (EXIT, or output is gone).
fn run_line(
    session: &mut Session,
    line: Result<String, String>,
    input: &mut dyn LineSource,
    out: &mut dyn Write,
    status: &mut Status,
) -> bool {
    let line = match line {
        Ok(l) => l,
        Err(msg) => {
            status.fail(false);
            return writeln!(out, "{}", crate::protocol::err::limit(msg)).is_ok();
        }
    };
    let cmd = match parse_line(&line) {
        Ok(None) => return true,
        Ok(Some(c)) => c,
        Err(e) => {
            status.fail(false);
            return writeln!(out, "{e}").is_ok();
        }
    };
    let printed = match cmd {
        Command::Exit => return false,
        Command::Help => out.write_all(render::help().as_bytes()),
        Command::Write { file, sentence } => match session.begin_write(&file, sentence) {
            Ok(ws) => write_session(session, ws, input, out, status),
            Err(e) => {
                status.fail(e.connection);
                if !input.interactive() {
                    skip_session_body(input);
                }
                writeln!(out, "{e}")
            }
        },
        cmd => match session.execute(&cmd, out) {
            Ok(()) => Ok(()),
            Err(e) => {
                status.fail(e.connection);
                writeln!(out, "{e}")
            }
        },
    };
    printed.is_ok()
}

/// Consumes the edit lines of a WRITE that could not open, up to and including its `ETIRW`
/// (or the end of input), so they are not run as commands.
fn skip_session_body(input: &mut dyn LineSource) {
    while let Some(line) = input.next_line(WRITE_PROMPT) {
        if let Ok(l) = line {
            if matches!(parse_edit(&l), Ok(Some(EditLine::Etirw))) {
                return;
            }
        }
    }
}

/// The lines of an open write session, until ETIRW, a broken connection, or end of input.
fn write_session(
    session: &mut Session,
    mut ws: WriteSession,
    input: &mut dyn LineSource,
    out: &mut dyn Write,
    status: &mut Status,
) -> io::Result<()> {
    loop {
        out.flush()?;
        let line = match input.next_line(WRITE_PROMPT) {
            None => {
                status.fail(false);
                return writeln!(
                    out,
                    "{}",
                    crate::protocol::err::invalid(
                        "input ended inside a WRITE session; the edits were abandoned"
                    )
                );
            }
            Some(Err(msg)) => {
                status.fail(false);
                writeln!(out, "{}", crate::protocol::err::limit(msg))?;
                continue;
            }
            Some(Ok(l)) => l,
        };
        match parse_edit(&line) {
            Ok(None) => {}
            Err(e) => {
                status.fail(false);
                writeln!(out, "{e}")?;
            }
            Ok(Some(EditLine::Edit { word_index, text })) => {
                match ws.edit(session, word_index, &text) {
                    Ok(sentence) => writeln!(out, "Sentence: {sentence}")?,
                    Err(EditError::Refused(e)) => {
                        status.fail(e.connection);
                        writeln!(out, "{e}")?;
                    }
                    Err(EditError::Broken(e)) => {
                        status.fail(e.connection);
                        // The session is gone with its connection; back to normal mode, past the
                        // rest of its edit lines when they come from a pipe.
                        if !input.interactive() {
                            skip_session_body(input);
                        }
                        return writeln!(out, "{e}");
                    }
                }
            }
            Ok(Some(EditLine::Etirw)) => {
                return match ws.commit(session) {
                    Ok(copies) => writeln!(out, "{}", render::with_copies(render::WRITTEN, copies)),
                    Err(e) => {
                        status.fail(e.connection);
                        writeln!(out, "{e}")
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
