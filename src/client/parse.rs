//! Command lines to [`Command`]s. Pure: no I/O, so every command and every error is unit
//! tested here.
//!
//! Words are split on whitespace and the command word is case-insensitive; file and user
//! arguments are passed on as typed (the name server validates and canonicalises names).

use crate::protocol::{err, AccessKind, WireError};

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CREATE f`.
    Create {
        /// File name.
        file: String,
    },
    /// `READ f`.
    Read {
        /// File name.
        file: String,
    },
    /// `WRITE f i`: opens a write session on sentence `i`.
    Write {
        /// File name.
        file: String,
        /// 0-based sentence index.
        sentence: u64,
    },
    /// `UNDO f`.
    Undo {
        /// File name.
        file: String,
    },
    /// `DELETE f`.
    Delete {
        /// File name.
        file: String,
    },
    /// `INFO f`.
    Info {
        /// File name.
        file: String,
    },
    /// `VIEW` with `-a`, `-l`, `-al`/`-la`.
    View {
        /// Every file, not only accessible ones.
        all: bool,
        /// The long table.
        long: bool,
    },
    /// `STREAM f`.
    Stream {
        /// File name.
        file: String,
    },
    /// `LIST`: every user.
    List,
    /// `ADDACCESS -R|-W f u`.
    AddAccess {
        /// File name.
        file: String,
        /// Grantee.
        user: String,
        /// `-W` (read and write) rather than `-R`.
        write: bool,
    },
    /// `REMACCESS f u`.
    RemAccess {
        /// File name.
        file: String,
        /// User losing access.
        user: String,
    },
    /// `EXEC f`.
    Exec {
        /// File name.
        file: String,
    },
    /// `UPLOAD local f`: replace (or create) `f` with a local file's bytes.
    Upload {
        /// Path of the local file to send.
        local: String,
        /// File name in the cluster.
        file: String,
    },
    /// `DOWNLOAD f local`: save `f`'s bytes to a local file.
    Download {
        /// File name in the cluster.
        file: String,
        /// Path of the local file to write.
        local: String,
    },
    /// `STATUS`: servers, pairs and replication.
    Status,
    /// `FSCK [f]`: check every copy of one file, or of every file.
    Fsck {
        /// One file; `None` for all.
        file: Option<String>,
    },
    /// `RECOVER ss`: start a recovery sync of that storage server now.
    Recover {
        /// The storage server's name.
        ss: String,
    },
    /// `CREATEFOLDER /p`.
    CreateFolder {
        /// Folder name as typed.
        folder: String,
    },
    /// `VIEWFOLDER [/p]` (the root without an argument).
    ViewFolder {
        /// Folder name as typed.
        folder: String,
    },
    /// `MOVE f /p`.
    Move {
        /// File name.
        file: String,
        /// Destination folder.
        folder: String,
    },
    /// `CHECKPOINT f tag`.
    Checkpoint {
        /// File name.
        file: String,
        /// Tag.
        tag: String,
    },
    /// `VIEWCHECKPOINT f tag`.
    ViewCheckpoint {
        /// File name.
        file: String,
        /// Tag.
        tag: String,
    },
    /// `REVERT f tag`.
    Revert {
        /// File name.
        file: String,
        /// Tag.
        tag: String,
    },
    /// `LISTCHECKPOINTS f`.
    ListCheckpoints {
        /// File name.
        file: String,
    },
    /// `RACC f R|W|RW` (alias `REQUESTACCESS`).
    RequestAccess {
        /// File name.
        file: String,
        /// What is asked for.
        kind: AccessKind,
    },
    /// `VIEWACCR` (alias `VIEWACCESSREQUESTS`).
    ViewRequests,
    /// `APPROVEACCR id` / `DISACCR id`.
    AnswerRequest {
        /// The request id.
        id: u64,
        /// APPROVEACCR rather than DISACCR.
        approve: bool,
    },
    /// `HELP`.
    Help,
    /// `EXIT`.
    Exit,
}

/// One line typed inside a write session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditLine {
    /// `k text…`: insert `text` before word `k`.
    Edit {
        /// 0-based word index.
        word_index: u64,
        /// The words to insert, as typed after the index.
        text: String,
    },
    /// `ETIRW`: commit.
    Etirw,
}

/// The usage line of each supported command, as `ERROR [INVALID]: usage: …` prints it.
pub fn usage(word: &str) -> &'static str {
    match word {
        "CREATE" => "CREATE <file>",
        "READ" => "READ <file>",
        "WRITE" => "WRITE <file> <sentence_index>",
        "UNDO" => "UNDO <file>",
        "DELETE" => "DELETE <file>",
        "INFO" => "INFO <file>",
        "VIEW" => "VIEW [-a] [-l] (or -al)",
        "STREAM" => "STREAM <file>",
        "LIST" => "LIST",
        "ADDACCESS" => "ADDACCESS -R|-W <file> <user>",
        "REMACCESS" => "REMACCESS <file> <user>",
        "EXEC" => "EXEC <file>",
        "UPLOAD" => "UPLOAD <local_path> <file>",
        "DOWNLOAD" => "DOWNLOAD <file> <local_path>",
        "STATUS" => "STATUS",
        "FSCK" => "FSCK [<file>]",
        "RECOVER" => "RECOVER <storage_server>",
        "CREATEFOLDER" => "CREATEFOLDER /<folder>",
        "VIEWFOLDER" => "VIEWFOLDER [/<folder>]",
        "MOVE" => "MOVE <file> /<folder>",
        "CHECKPOINT" => "CHECKPOINT <file> <tag>",
        "VIEWCHECKPOINT" => "VIEWCHECKPOINT <file> <tag>",
        "REVERT" => "REVERT <file> <tag>",
        "LISTCHECKPOINTS" => "LISTCHECKPOINTS <file>",
        "RACC" | "REQUESTACCESS" => "RACC <file> R|W|RW",
        "VIEWACCR" | "VIEWACCESSREQUESTS" => "VIEWACCR",
        "APPROVEACCR" => "APPROVEACCR <id>",
        "DISACCR" => "DISACCR <id>",
        "HELP" => "HELP",
        "EXIT" => "EXIT",
        _ => "HELP",
    }
}

fn usage_err(word: &str) -> WireError {
    err::invalid(format!("usage: {}", usage(word)))
}

/// Parses one command line. `Ok(None)` for a blank line, which is ignored.
pub fn parse_line(line: &str) -> Result<Option<Command>, WireError> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let args: Vec<&str> = words.collect();
    let word = first.to_ascii_uppercase();
    let one_file = |make: fn(String) -> Command| match args.as_slice() {
        [f] => Ok(make((*f).to_string())),
        _ => Err(usage_err(&word)),
    };
    let no_args = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(usage_err(&word))
        }
    };
    let cmd = match word.as_str() {
        "CREATE" => one_file(|file| Command::Create { file }),
        "READ" => one_file(|file| Command::Read { file }),
        "UNDO" => one_file(|file| Command::Undo { file }),
        "DELETE" => one_file(|file| Command::Delete { file }),
        "INFO" => one_file(|file| Command::Info { file }),
        "STREAM" => one_file(|file| Command::Stream { file }),
        "EXEC" => one_file(|file| Command::Exec { file }),
        "WRITE" => match args.as_slice() {
            [f, i] => i
                .parse::<u64>()
                .map(|sentence| Command::Write {
                    file: (*f).to_string(),
                    sentence,
                })
                .map_err(|_| usage_err(&word)),
            _ => Err(usage_err(&word)),
        },
        "VIEW" => parse_view(&args).ok_or_else(|| usage_err(&word)),
        "LIST" => no_args(Command::List),
        "STATUS" => no_args(Command::Status),
        "FSCK" => match args.as_slice() {
            [] => Ok(Command::Fsck { file: None }),
            [f] => Ok(Command::Fsck {
                file: Some((*f).to_string()),
            }),
            _ => Err(usage_err(&word)),
        },
        "RECOVER" => match args.as_slice() {
            [ss] => Ok(Command::Recover {
                ss: (*ss).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "UPLOAD" => match args.as_slice() {
            [l, f] => Ok(Command::Upload {
                local: (*l).to_string(),
                file: (*f).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "DOWNLOAD" => match args.as_slice() {
            [f, l] => Ok(Command::Download {
                file: (*f).to_string(),
                local: (*l).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "HELP" => no_args(Command::Help),
        "EXIT" => no_args(Command::Exit),
        "ADDACCESS" => match args.as_slice() {
            [flag, f, u] => {
                let write = match flag.to_ascii_uppercase().as_str() {
                    "-R" => Ok(false),
                    "-W" => Ok(true),
                    _ => Err(usage_err(&word)),
                }?;
                Ok(Command::AddAccess {
                    file: (*f).to_string(),
                    user: (*u).to_string(),
                    write,
                })
            }
            _ => Err(usage_err(&word)),
        },
        "REMACCESS" => match args.as_slice() {
            [f, u] => Ok(Command::RemAccess {
                file: (*f).to_string(),
                user: (*u).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "CREATEFOLDER" => match args.as_slice() {
            [p] => Ok(Command::CreateFolder {
                folder: (*p).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "VIEWFOLDER" => match args.as_slice() {
            [] => Ok(Command::ViewFolder {
                folder: "/".to_string(),
            }),
            [p] => Ok(Command::ViewFolder {
                folder: (*p).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "MOVE" => match args.as_slice() {
            [f, p] => Ok(Command::Move {
                file: (*f).to_string(),
                folder: (*p).to_string(),
            }),
            _ => Err(usage_err(&word)),
        },
        "CHECKPOINT" | "VIEWCHECKPOINT" | "REVERT" => match args.as_slice() {
            [f, t] => {
                let (file, tag) = ((*f).to_string(), (*t).to_string());
                Ok(match word.as_str() {
                    "CHECKPOINT" => Command::Checkpoint { file, tag },
                    "REVERT" => Command::Revert { file, tag },
                    _ => Command::ViewCheckpoint { file, tag },
                })
            }
            _ => Err(usage_err(&word)),
        },
        "LISTCHECKPOINTS" => one_file(|file| Command::ListCheckpoints { file }),
        "RACC" | "REQUESTACCESS" => match args.as_slice() {
            [f, k] => {
                let kind = match k.to_ascii_uppercase().as_str() {
                    "R" => Ok(AccessKind::R),
                    "W" => Ok(AccessKind::W),
                    "RW" => Ok(AccessKind::RW),
                    _ => Err(usage_err(&word)),
                }?;
                Ok(Command::RequestAccess {
                    file: (*f).to_string(),
                    kind,
                })
            }
            _ => Err(usage_err(&word)),
        },
        "VIEWACCR" | "VIEWACCESSREQUESTS" => no_args(Command::ViewRequests),
        "APPROVEACCR" | "DISACCR" => match args.as_slice() {
            // `#3` as VIEWACCR and RACC print it, or plain `3`.
            [id] => id
                .strip_prefix('#')
                .unwrap_or(id)
                .parse::<u64>()
                .map(|id| Command::AnswerRequest {
                    id,
                    approve: word == "APPROVEACCR",
                })
                .map_err(|_| usage_err(&word)),
            _ => Err(usage_err(&word)),
        },
        "ETIRW" => Err(err::invalid("ETIRW is only valid inside a WRITE session")),
        _ => Err(err::invalid(format!(
            "unknown command '{}' (type HELP)",
            crate::names::show(first)
        ))),
    }?;
    Ok(Some(cmd))
}

/// VIEW's flags: any of `-a`, `-l`, `-al`, `-la`, alone or together; `None` for anything else.
fn parse_view(args: &[&str]) -> Option<Command> {
    let (mut all, mut long) = (false, false);
    for a in args {
        let letters = a.strip_prefix('-')?;
        if letters.is_empty() {
            return None;
        }
        for c in letters.chars() {
            match c.to_ascii_lowercase() {
                'a' => all = true,
                'l' => long = true,
                _ => return None,
            }
        }
    }
    Some(Command::View { all, long })
}

/// The message for a line inside a write session that is neither an edit nor `ETIRW`.
pub const EDIT_FORMAT_MSG: &str = "expected '<word_index> <text>' or ETIRW";

/// Parses one line typed inside a write session. `Ok(None)` for a blank line.
pub fn parse_edit(line: &str) -> Result<Option<EditLine>, WireError> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.eq_ignore_ascii_case("ETIRW") {
        return Ok(Some(EditLine::Etirw));
    }
    let (index, rest) = trimmed
        .split_once(char::is_whitespace)
        .ok_or_else(|| err::invalid(EDIT_FORMAT_MSG))?;
    let word_index = index
        .parse::<u64>()
        .map_err(|_| err::invalid(EDIT_FORMAT_MSG))?;
    let text = rest.trim_start();
    if text.is_empty() {
        return Err(err::invalid(EDIT_FORMAT_MSG));
    }
    Ok(Some(EditLine::Edit {
        word_index,
        text: text.to_string(),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly by design.
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse_line(line).unwrap().unwrap()
    }

    fn err_text(line: &str) -> String {
        parse_line(line).unwrap_err().to_string()
    }

    fn f(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn blank_lines_are_ignored() {
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("   \t ").unwrap(), None);
    }

    #[test]
    fn single_file_commands_in_any_case() {
        assert_eq!(ok("CREATE a.txt"), Command::Create { file: f("a.txt") });
        assert_eq!(ok("create a.txt"), Command::Create { file: f("a.txt") });
        assert_eq!(
            ok("  Read   /d/a.txt "),
            Command::Read {
                file: f("/d/a.txt")
            }
        );
        assert_eq!(ok("undo a"), Command::Undo { file: f("a") });
        assert_eq!(ok("DELETE a"), Command::Delete { file: f("a") });
        assert_eq!(ok("info a"), Command::Info { file: f("a") });
        assert_eq!(ok("stream a"), Command::Stream { file: f("a") });
        assert_eq!(ok("Exec s.sh"), Command::Exec { file: f("s.sh") });
    }

    #[test]
    fn file_names_keep_their_case() {
        assert_eq!(ok("read A.TXT"), Command::Read { file: f("A.TXT") });
    }

    #[test]
    fn write_takes_a_sentence_index() {
        assert_eq!(
            ok("WRITE a.txt 3"),
            Command::Write {
                file: f("a.txt"),
                sentence: 3
            }
        );
        let usage = "ERROR [INVALID]: usage: WRITE <file> <sentence_index>";
        assert_eq!(err_text("WRITE a.txt"), usage);
        assert_eq!(err_text("WRITE a.txt -1"), usage);
        assert_eq!(err_text("WRITE a.txt x"), usage);
        assert_eq!(err_text("WRITE a.txt 1 2"), usage);
    }

    #[test]
    fn view_flags() {
        let v = |all, long| Command::View { all, long };
        assert_eq!(ok("VIEW"), v(false, false));
        assert_eq!(ok("view -a"), v(true, false));
        assert_eq!(ok("VIEW -l"), v(false, true));
        assert_eq!(ok("VIEW -al"), v(true, true));
        assert_eq!(ok("VIEW -la"), v(true, true));
        assert_eq!(ok("VIEW -a -l"), v(true, true));
        assert_eq!(ok("VIEW -AL"), v(true, true));
        let usage = "ERROR [INVALID]: usage: VIEW [-a] [-l] (or -al)";
        assert_eq!(err_text("VIEW -x"), usage);
        assert_eq!(err_text("VIEW a"), usage);
        assert_eq!(err_text("VIEW -"), usage);
    }

    #[test]
    fn no_argument_commands() {
        assert_eq!(ok("LIST"), Command::List);
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok("exit"), Command::Exit);
        assert_eq!(err_text("LIST x"), "ERROR [INVALID]: usage: LIST");
        assert_eq!(err_text("EXIT now"), "ERROR [INVALID]: usage: EXIT");
        assert_eq!(err_text("HELP me"), "ERROR [INVALID]: usage: HELP");
    }

    #[test]
    fn access_commands() {
        assert_eq!(
            ok("ADDACCESS -R a.txt bob"),
            Command::AddAccess {
                file: f("a.txt"),
                user: f("bob"),
                write: false
            }
        );
        assert_eq!(
            ok("addaccess -w a.txt bob"),
            Command::AddAccess {
                file: f("a.txt"),
                user: f("bob"),
                write: true
            }
        );
        let usage = "ERROR [INVALID]: usage: ADDACCESS -R|-W <file> <user>";
        assert_eq!(err_text("ADDACCESS -X a.txt bob"), usage);
        assert_eq!(err_text("ADDACCESS a.txt bob"), usage);
        assert_eq!(
            ok("REMACCESS a.txt bob"),
            Command::RemAccess {
                file: f("a.txt"),
                user: f("bob")
            }
        );
        assert_eq!(
            err_text("REMACCESS a.txt"),
            "ERROR [INVALID]: usage: REMACCESS <file> <user>"
        );
    }

    #[test]
    fn wrong_argument_counts_print_usage() {
        assert_eq!(err_text("CREATE"), "ERROR [INVALID]: usage: CREATE <file>");
        assert_eq!(err_text("READ a b"), "ERROR [INVALID]: usage: READ <file>");
        assert_eq!(err_text("UNDO"), "ERROR [INVALID]: usage: UNDO <file>");
        assert_eq!(err_text("DELETE"), "ERROR [INVALID]: usage: DELETE <file>");
        assert_eq!(err_text("INFO"), "ERROR [INVALID]: usage: INFO <file>");
        assert_eq!(err_text("STREAM"), "ERROR [INVALID]: usage: STREAM <file>");
        assert_eq!(err_text("EXEC a b"), "ERROR [INVALID]: usage: EXEC <file>");
    }

    #[test]
    fn folder_checkpoint_and_request_commands() {
        assert_eq!(
            ok("createfolder /docs/"),
            Command::CreateFolder {
                folder: f("/docs/")
            }
        );
        assert_eq!(ok("VIEWFOLDER"), Command::ViewFolder { folder: f("/") });
        assert_eq!(ok("VIEWFOLDER /d"), Command::ViewFolder { folder: f("/d") });
        assert_eq!(
            ok("MOVE a.txt /d"),
            Command::Move {
                file: f("a.txt"),
                folder: f("/d")
            }
        );
        assert_eq!(
            ok("checkpoint a.txt v1"),
            Command::Checkpoint {
                file: f("a.txt"),
                tag: f("v1")
            }
        );
        assert_eq!(
            ok("VIEWCHECKPOINT a.txt v1"),
            Command::ViewCheckpoint {
                file: f("a.txt"),
                tag: f("v1")
            }
        );
        assert_eq!(
            ok("REVERT a.txt v1"),
            Command::Revert {
                file: f("a.txt"),
                tag: f("v1")
            }
        );
        assert_eq!(
            ok("LISTCHECKPOINTS a.txt"),
            Command::ListCheckpoints { file: f("a.txt") }
        );
        for (line, kind) in [
            ("RACC a.txt r", AccessKind::R),
            ("REQUESTACCESS a.txt W", AccessKind::W),
            ("racc a.txt rw", AccessKind::RW),
        ] {
            assert_eq!(
                ok(line),
                Command::RequestAccess {
                    file: f("a.txt"),
                    kind
                }
            );
        }
        assert_eq!(ok("VIEWACCR"), Command::ViewRequests);
        assert_eq!(ok("viewaccessrequests"), Command::ViewRequests);
        assert_eq!(
            ok("APPROVEACCR #3"),
            Command::AnswerRequest {
                id: 3,
                approve: true
            }
        );
        assert_eq!(
            ok("DISACCR 4"),
            Command::AnswerRequest {
                id: 4,
                approve: false
            }
        );
        assert_eq!(
            err_text("RACC a.txt X"),
            "ERROR [INVALID]: usage: RACC <file> R|W|RW"
        );
        assert_eq!(
            err_text("APPROVEACCR x"),
            "ERROR [INVALID]: usage: APPROVEACCR <id>"
        );
        assert_eq!(
            err_text("MOVE a.txt"),
            "ERROR [INVALID]: usage: MOVE <file> /<folder>"
        );
        assert_eq!(
            err_text("CHECKPOINT a.txt"),
            "ERROR [INVALID]: usage: CHECKPOINT <file> <tag>"
        );
    }

    #[test]
    fn recover_takes_one_server() {
        assert_eq!(ok("recover ss1"), Command::Recover { ss: f("ss1") });
        assert_eq!(
            err_text("RECOVER"),
            "ERROR [INVALID]: usage: RECOVER <storage_server>"
        );
    }

    #[test]
    fn replication_commands() {
        assert_eq!(ok("fsck"), Command::Fsck { file: None });
        assert_eq!(
            ok("FSCK /d/a.txt"),
            Command::Fsck {
                file: Some(f("/d/a.txt"))
            }
        );
        assert_eq!(
            err_text("FSCK a b"),
            "ERROR [INVALID]: usage: FSCK [<file>]"
        );
        assert_eq!(ok("status"), Command::Status);
        assert_eq!(err_text("STATUS x"), "ERROR [INVALID]: usage: STATUS");
        assert_eq!(
            ok("upload ./pic.png /d/pic.png"),
            Command::Upload {
                local: f("./pic.png"),
                file: f("/d/pic.png")
            }
        );
        assert_eq!(
            ok("DOWNLOAD a.bin /tmp/a.bin"),
            Command::Download {
                file: f("a.bin"),
                local: f("/tmp/a.bin")
            }
        );
        assert_eq!(
            err_text("UPLOAD a"),
            "ERROR [INVALID]: usage: UPLOAD <local_path> <file>"
        );
        assert_eq!(
            err_text("DOWNLOAD a b c"),
            "ERROR [INVALID]: usage: DOWNLOAD <file> <local_path>"
        );
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(
            err_text("frobnicate a"),
            "ERROR [INVALID]: unknown command 'frobnicate' (type HELP)"
        );
        assert_eq!(
            err_text("ETIRW"),
            "ERROR [INVALID]: ETIRW is only valid inside a WRITE session"
        );
    }

    #[test]
    fn edit_lines() {
        assert_eq!(
            parse_edit("0 Hello world.").unwrap(),
            Some(EditLine::Edit {
                word_index: 0,
                text: f("Hello world.")
            })
        );
        assert_eq!(
            parse_edit("  12   more  words ").unwrap(),
            Some(EditLine::Edit {
                word_index: 12,
                text: f("more  words")
            })
        );
        assert_eq!(parse_edit("etirw").unwrap(), Some(EditLine::Etirw));
        assert_eq!(parse_edit(" ETIRW ").unwrap(), Some(EditLine::Etirw));
        assert_eq!(parse_edit("").unwrap(), None);
        let msg = "ERROR [INVALID]: expected '<word_index> <text>' or ETIRW";
        for bad in ["hello world", "3", "-1 x", "x 3", "3.5 x", "EXIT"] {
            assert_eq!(parse_edit(bad).unwrap_err().to_string(), msg, "{bad}");
        }
    }
}
