//! File, folder and user names: what is allowed and the one canonical spelling.
//!
//! Users type `a.txt` for a file in the root and `/docs/sub/a.txt` for one in a folder; a
//! leading `/` on a root file is accepted too. The canonical form drops the leading `/`
//! (`a.txt`, `docs/sub/a.txt`) and is what the name server indexes, tickets carry, and storage
//! servers map under `<storage>/files/`. Nothing canonical can escape that directory.

use crate::protocol::{err, WireError};

/// Longest path component, in bytes (the common file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest whole name, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Deepest folder nesting.
pub const MAX_DEPTH: usize = 32;
/// Longest user name, in bytes.
pub const MAX_USER_BYTES: usize = 64;

/// Validates a file name and returns its canonical form.
pub fn canonical_file(name: &str) -> Result<String, WireError> {
    if name.is_empty() {
        return Err(err::invalid("file name is empty"));
    }
    if name.ends_with('/') {
        return Err(err::invalid(format!(
            "'{}' names a folder, not a file",
            show(name)
        )));
    }
    canonical_path(name)
}

/// Validates a folder name (`/p`, `/p/`, `p`) and returns its canonical form; the root is "".
pub fn canonical_folder(name: &str) -> Result<String, WireError> {
    let trimmed = name.trim_end_matches('/');
    if trimmed.is_empty() {
        return if name.starts_with('/') {
            Ok(String::new())
        } else {
            Err(err::invalid("folder name is empty"))
        };
    }
    canonical_path(trimmed)
}

fn canonical_path(name: &str) -> Result<String, WireError> {
    if name.len() > MAX_PATH_BYTES {
        return Err(err::invalid(format!(
            "name longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    let rel = name.strip_prefix('/').unwrap_or(name);
    let mut depth = 0;
    for comp in rel.split('/') {
        depth += 1;
        if comp.is_empty() {
            return Err(err::invalid(format!(
                "'{}' has an empty path component",
                show(name)
            )));
        }
        if comp == "." || comp == ".." {
            return Err(err::invalid(format!(
                "'{}': '.' and '..' are not allowed",
                show(name)
            )));
        }
        if comp.len() > MAX_COMPONENT_BYTES {
            return Err(err::invalid(format!(
                "path component longer than {MAX_COMPONENT_BYTES} bytes"
            )));
        }
        if let Some(c) = comp.chars().find(|&c| forbidden(c)) {
            return Err(err::invalid(format!(
                "'{}' contains U+{:04X}; names may not contain control, format or bidi characters",
                show(name),
                c as u32
            )));
        }
    }
    if depth > MAX_DEPTH {
        return Err(err::invalid(format!(
            "more than {MAX_DEPTH} levels of folders"
        )));
    }
    Ok(rel.to_string())
}

/// Unicode general category Cf (format characters), as of Unicode 15.1: invisible
/// characters that change how text around them is shown (the bidi embeddings, overrides and
/// isolates U+202A–U+202E and U+2066–U+2069, the marks U+200E/U+200F and U+061C, zero-width
/// spaces and joiners, tag characters). Kept as an explicit table so the refused set is
/// visible here and needs no Unicode-database crate; new Cf characters in later Unicode
/// versions are rare and would be added here.
const FORMAT_RANGES: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` may not appear in a file or folder name: control characters (category Cc),
/// format characters (Cf, which include every bidi control, so a name cannot make a listing
/// show other names reversed or hidden), and the line and paragraph separators U+2028/U+2029.
pub fn forbidden(c: char) -> bool {
    let u = c as u32;
    c.is_control()
        || u == 0x2028
        || u == 0x2029
        || FORMAT_RANGES.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// How a canonical name is shown to users: root files bare, nested ones with a leading `/`.
pub fn display(canonical: &str) -> String {
    if canonical.contains('/') {
        format!("/{canonical}")
    } else {
        canonical.to_string()
    }
}

/// The canonical folder holding a canonical file ("" for the root).
pub fn parent(canonical: &str) -> &str {
    canonical.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// Longest checkpoint tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;

/// Validates a checkpoint tag: 1–64 bytes of letters, digits, `_` and `-`, so a tag is also
/// a safe file name on a storage server.
pub fn validate_tag(tag: &str) -> Result<(), WireError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_BYTES
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(err::invalid(format!(
            "checkpoint tag '{}' must be 1 to {MAX_TAG_BYTES} letters, digits, '_' or '-'",
            show(tag)
        )))
    }
}

/// The subject a MOVE ticket is minted for: both canonical names joined by a tab, which no
/// name may contain, so the signed string names exactly one (from, to) pair and can never be
/// mistaken for a file.
pub fn move_subject(from: &str, to: &str) -> String {
    format!("{from}\t{to}")
}

/// The subject an SS_MKDIR ticket is minted for: a digest of the folder list, so the signed
/// string stays short however many folders one call carries, and names exactly that list.
pub fn mkdir_subject(folders: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in folders {
        h.update(f.as_bytes());
        h.update(b"\n");
    }
    format!("mkdir\t{}", hex::encode(h.finalize()))
}

/// The canonical name `file` gets when moved into the canonical `folder` ("" is the root).
pub fn moved_name(file: &str, folder: &str) -> String {
    let base = file.rsplit_once('/').map_or(file, |(_, b)| b);
    if folder.is_empty() {
        base.to_string()
    } else {
        format!("{folder}/{base}")
    }
}

/// Validates a user name: 1–64 bytes of letters, digits, `.`, `_`, `-`.
pub fn validate_user(user: &str) -> Result<(), WireError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(err::invalid(format!(
            "user name must be 1 to {MAX_USER_BYTES} bytes"
        )));
    }
    if !user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(err::invalid(format!(
            "user name '{}' may only contain letters, digits, '.', '_' and '-'",
            show(user)
        )));
    }
    Ok(())
}

/// A name made safe to echo in an error message (control characters escaped, length capped).
pub fn show(name: &str) -> String {
    let mut s: String = name.chars().take(80).flat_map(char::escape_debug).collect();
    if name.chars().count() > 80 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_file("a.txt").unwrap(), "a.txt");
        assert_eq!(canonical_file("/a.txt").unwrap(), "a.txt");
        assert_eq!(canonical_file("/docs/sub/a.txt").unwrap(), "docs/sub/a.txt");
        assert_eq!(canonical_folder("/docs/").unwrap(), "docs");
        assert_eq!(canonical_folder("/docs").unwrap(), "docs");
        assert_eq!(canonical_folder("/").unwrap(), "");
        assert_eq!(display("a.txt"), "a.txt");
        assert_eq!(display("docs/a.txt"), "/docs/a.txt");
        assert_eq!(parent("docs/sub/a.txt"), "docs/sub");
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "", "..", "../x", "/a/../b", "a//b", "a\0b", "a\nb", "/", "a/", "./a", "/etc/..",
        ] {
            assert!(canonical_file(bad).is_err(), "{bad:?} accepted");
        }
        assert!(canonical_file(&"x".repeat(256)).is_err());
        assert!(canonical_file(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn format_and_bidi_characters_are_refused() {
        for (bad, code) in [
            ("evil\u{202E}txt.exe", "U+202E"),
            ("a\u{200B}b", "U+200B"),
            ("a\u{2066}b", "U+2066"),
            ("a\u{200F}b", "U+200F"),
            ("a\u{061C}b", "U+061C"),
            ("a\u{2028}b", "U+2028"),
            ("a\u{FEFF}b", "U+FEFF"),
            ("a\u{7}b", "U+0007"),
            ("a\u{85}b", "U+0085"),
            ("a\u{E0041}b", "U+E0041"),
        ] {
            let e = canonical_file(bad).unwrap_err();
            assert!(e.msg.contains(code), "{bad:?}: {}", e.msg);
            assert!(canonical_folder(&format!("/d/{bad}")).is_err());
        }
        for good in [
            "caf\u{e9}.txt",
            "\u{65e5}\u{672c}.txt",
            "a\u{2010}b",
            "\u{5d0}\u{5d1}.txt",
        ] {
            assert!(canonical_file(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn tags_and_moves() {
        assert!(validate_tag("v1_final-2").is_ok());
        assert!(validate_tag(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "..", "a.b", "ä"] {
            assert!(validate_tag(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_tag(&"a".repeat(65)).is_err());
        assert_eq!(moved_name("a.txt", "docs"), "docs/a.txt");
        assert_eq!(moved_name("docs/a.txt", ""), "a.txt");
        assert_eq!(moved_name("docs/a.txt", "x/y"), "x/y/a.txt");
        assert_ne!(move_subject("a", "b/c"), move_subject("a/b", "c"));
    }

    #[test]
    fn users() {
        assert!(validate_user("alice_1.b-c").is_ok());
        for bad in ["", "@nm", "a b", "a/b", "ä"] {
            assert!(validate_user(bad).is_err());
        }
    }
}
