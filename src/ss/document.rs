//! Sentences and word edits (SPEC §3): pure code, no I/O.
//!
//! # The sentence model
//!
//! A sentence is a run of words ending with `.`, `!` or `?`. Every delimiter character ends a
//! sentence, even inside a token, so `e.g.` is the two sentences `e.` and `g.` and `Wow!!` is
//! `Wow!` and `!`. Words are split on Unicode whitespace (`char::is_whitespace`). A sentence
//! starts at the first non-whitespace character after the previous sentence's delimiter (or the
//! start of the file) and ends at, and includes, its own delimiter. A trailing run of words with
//! no delimiter is an unfinished last sentence; it ends at its last non-whitespace character.
//! Bytes between sentences (spaces, newlines) belong to no sentence and are kept exactly by
//! [`Document::replace`], so an edit never reflows the rest of a file.
//!
//! # Rendering
//!
//! An edited sentence is written with single spaces between its words, and a delimiter inside
//! a token starts a new word: inserting `e.g. done.` gives the words `e.`, `g.`, `done.` and
//! reads back `e. g. done.` (SPEC §3). The word indexes of the session count those split
//! words, so what `Sentence:` shows is what the indexes refer to. A sentence that touches its
//! neighbour with no whitespace between (`g.` in a stored `e.g.`) is set apart from it by one
//! space when it is written, so an edit never glues two sentences into one token.
//!
//! Slot `count` (one past the last sentence) is the new-sentence slot. It can be opened only
//! when the file is empty or its last sentence is finished: appending to an unfinished sentence
//! would silently extend it, which is what opening that sentence itself is for.
//!
//! # How write-session locks shift on commit
//!
//! A write session holds a sentence index. When a session on an existing sentence `i` commits
//! and [`Document::replace`] reports that the region now forms `n` sentences, every other open
//! session on an index `> i` must move by `n - 1` (down by one when `n == 0`, i.e. the sentence
//! was emptied; not at all when `n == 1`). Sessions on indexes `< i` never move. A commit that
//! appends at `i == count` shifts nothing, because no session can hold an index past the slot.
//!
//! `n` is defined as the change in the file's sentence count plus one, which is exactly the
//! shift that keeps every later session on its own sentence. This matters in one corner case:
//! if the edited sentence now ends without a delimiter (words were inserted after its
//! delimiter) and another sentence follows, the unfinished tail joins that next sentence. The
//! region then forms one sentence fewer on its own, `n` counts that, and a session on the old
//! next sentence moves onto the joined sentence that contains its words.

use crate::protocol::{err, WireError};
use std::ops::Range;

/// True for the characters that end a sentence.
fn is_delimiter(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

/// A file's text and the byte ranges of its sentences, as parsed once per read or commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The file content exactly as given.
    text: String,
    /// Byte ranges of the sentences in `text`, in order, non-overlapping, each non-empty.
    sentences: Vec<Range<usize>>,
    /// Whether the last sentence ends with a delimiter (true for an empty document).
    last_finished: bool,
}

impl Document {
    /// Splits `text` into sentences in one pass. Bytes below 0x80 are ASCII characters and
    /// are classified as bytes; only a multi-byte character is decoded (every delimiter is
    /// ASCII, and so is every whitespace character but a few, which `char::is_whitespace`
    /// knows). A commit parses the whole file, so this runs over every byte of it.
    pub fn parse(text: &str) -> Document {
        let mut sentences = Vec::new();
        // Start of the sentence being read, and the end of its last non-whitespace char.
        let mut open: Option<(usize, usize)> = None;
        let bytes = text.as_bytes();
        let mut idx = 0;
        while idx < bytes.len() {
            let b = bytes[idx];
            let (space, delimiter, len) = if b < 0x80 {
                // The ASCII whitespace of `char::is_whitespace`: U+0009..=U+000D and U+0020.
                (
                    matches!(b, b'\t'..=b'\r' | b' '),
                    matches!(b, b'.' | b'!' | b'?'),
                    1,
                )
            } else {
                let c = text[idx..].chars().next().unwrap_or_default();
                (c.is_whitespace(), false, c.len_utf8())
            };
            let end = idx + len;
            if !space {
                let start = match open {
                    Some((start, _)) => start,
                    None => idx,
                };
                if delimiter {
                    sentences.push(start..end);
                    open = None;
                } else {
                    open = Some((start, end));
                }
            }
            idx = end;
        }
        let last_finished = match open {
            Some((start, end)) => {
                sentences.push(start..end);
                false
            }
            None => true,
        };
        Document {
            text: text.to_string(),
            sentences,
            last_finished,
        }
    }

    /// The number of sentences, counting an unfinished last one.
    pub fn sentence_count(&self) -> usize {
        self.sentences.len()
    }

    /// Checks that sentence `i` may be opened for writing.
    ///
    /// Ok if `i < count`, or `i == count` and (count == 0 or the last sentence is finished).
    /// Else `INVALID "Sentence index out of range"`.
    pub fn check_open(&self, i: usize) -> Result<(), WireError> {
        let count = self.sentence_count();
        if i < count || (i == count && self.last_finished) {
            Ok(())
        } else {
            Err(err::invalid("Sentence index out of range"))
        }
    }

    /// The words of sentence `i`; an empty Vec for the new-sentence slot (or any index past it).
    pub fn words(&self, i: usize) -> Vec<String> {
        match self.sentences.get(i) {
            Some(range) => self.text[range.clone()]
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        }
    }

    /// The whole new file content with sentence `i` replaced by `words` joined with single
    /// spaces, and `n`, how many sentences the replaced region now forms.
    ///
    /// For an existing sentence every byte outside its range is kept. For `i >= count` the
    /// words are appended, preceded by one space if the text is non-empty and does not end in
    /// whitespace; nothing is appended (and `n == 0`) if `words` is empty. Callers check the
    /// index with [`Document::check_open`] first. `n` is the change in sentence count plus one
    /// (existing) or the change in sentence count (append); see the module doc for why.
    pub fn replace(&self, i: usize, words: &[String]) -> (String, usize) {
        let joined = words.join(" ");
        let old_count = self.sentence_count();
        match self.sentences.get(i) {
            Some(range) => {
                let (before, after) = (&self.text[..range.start], &self.text[range.end..]);
                // A neighbour glued to this sentence (`e.g.`) is set apart by one space.
                let glued_before = !joined.is_empty() && ends_in_word(before);
                let glued_after = !joined.is_empty() && starts_with_word(after);
                let mut out = String::with_capacity(before.len() + joined.len() + after.len() + 2);
                out.push_str(before);
                if glued_before {
                    out.push(' ');
                }
                out.push_str(&joined);
                if glued_after {
                    out.push(' ');
                }
                out.push_str(after);
                // The region can never swallow the previous sentence (it ends in a delimiter)
                // and can join at most the next one, so the new count is >= old_count - 1.
                let n = (count_sentences(&out) + 1).saturating_sub(old_count);
                (out, n)
            }
            None => {
                if joined.is_empty() {
                    return (self.text.clone(), 0);
                }
                let mut out = String::with_capacity(self.text.len() + 1 + joined.len());
                out.push_str(&self.text);
                let needs_space = self
                    .text
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_whitespace());
                if needs_space {
                    out.push(' ');
                }
                out.push_str(&joined);
                let n = count_sentences(&out).saturating_sub(old_count);
                (out, n)
            }
        }
    }
}

/// True when `text` ends in a non-whitespace character.
fn ends_in_word(text: &str) -> bool {
    text.chars().next_back().is_some_and(|c| !c.is_whitespace())
}

/// True when `text` starts with a non-whitespace character.
fn starts_with_word(text: &str) -> bool {
    text.chars().next().is_some_and(|c| !c.is_whitespace())
}

/// The whitespace-split words of `text`, each further split after every delimiter that has
/// more characters behind it (`e.g.` gives `e.` and `g.`): every delimiter ends a sentence,
/// so it also ends a word.
pub fn split_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace().flat_map(|token| {
        let mut parts = Vec::new();
        let mut start = 0;
        for (idx, c) in token.char_indices() {
            let end = idx + c.len_utf8();
            if is_delimiter(c) && end < token.len() {
                parts.push(token[start..end].to_string());
                start = end;
            }
        }
        parts.push(token[start..].to_string());
        parts
    })
}

/// Counts sentences without keeping their ranges.
fn count_sentences(text: &str) -> usize {
    Document::parse(text).sentence_count()
}

/// The private copy of a sentence inside a write session, edited word by word until commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EditBuffer {
    /// The sentence's words as edited so far; none contains whitespace.
    words: Vec<String>,
}

impl EditBuffer {
    /// Starts an edit from a sentence's words (empty for a new sentence).
    pub fn new(words: Vec<String>) -> EditBuffer {
        EditBuffer { words }
    }

    /// Inserts the words of `text` ([`split_words`]) before word `k` (`0..=len`).
    ///
    /// Err `INVALID "Word index out of range"` otherwise, leaving the buffer unchanged.
    pub fn insert(&mut self, k: usize, text: &str) -> Result<(), WireError> {
        if k > self.words.len() {
            return Err(err::invalid("Word index out of range"));
        }
        let new_words = split_words(text);
        // splice keeps this one move of the tail, whatever the number of inserted words.
        self.words.splice(k..k, new_words);
        Ok(())
    }

    /// The words as edited so far.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// The words joined by single spaces: what `Sentence: ...` prints and what commit writes.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// The number of whitespace-separated words in `text`.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The number of characters (Unicode scalar values) in `text`.
pub fn count_chars(text: &str) -> u64 {
    text.chars().count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use proptest::prelude::*;

    fn sentences(text: &str) -> Vec<String> {
        let d = Document::parse(text);
        d.sentences
            .iter()
            .map(|r| text[r.clone()].to_string())
            .collect()
    }

    fn w(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_delimiter_ends_a_sentence() {
        assert_eq!(sentences("e.g."), ["e.", "g."]);
        assert_eq!(sentences("Wow!!"), ["Wow!", "!"]);
        assert_eq!(sentences("Is it? Yes. No!"), ["Is it?", "Yes.", "No!"]);
        assert_eq!(sentences("a.b"), ["a.", "b"]);
    }

    /// Runs one session: opens sentence `i` of `text`, inserts `edits`, and commits.
    fn session(text: &str, i: usize, edits: &[(usize, &str)]) -> String {
        let d = Document::parse(text);
        let mut buf = EditBuffer::new(d.words(i));
        for (k, t) in edits {
            buf.insert(*k, t).expect("edit in range");
        }
        d.replace(i, buf.words()).0
    }

    #[test]
    fn a_delimiter_inside_a_token_is_rendered_as_a_sentence_end() {
        let mut buf = EditBuffer::new(Vec::new());
        buf.insert(0, "e.g. done.").expect("edit");
        assert_eq!(buf.text(), "e. g. done.");
        assert_eq!(buf.words(), w(&["e.", "g.", "done."]));
        assert_eq!(session("", 0, &[(0, "e.g. done.")]), "e. g. done.");
        assert_eq!(session("", 0, &[(0, "Really?No!Yes")]), "Really? No! Yes");
        assert_eq!(session("", 0, &[(0, "Wow!!")]), "Wow! !");
        // Word indexes count the split words, as `Sentence:` shows them.
        assert_eq!(
            session("", 0, &[(0, "e.g. done."), (1, "X")]),
            "e. X g. done."
        );
    }

    #[test]
    fn editing_either_half_of_a_stored_token_keeps_the_halves_apart() {
        // A file uploaded with `e.g.` glued: each half is its own sentence.
        assert_eq!(session("e.g. done.", 1, &[(0, "X")]), "e. X g. done.");
        assert_eq!(session("e.g. done.", 0, &[(1, "X")]), "e. X g. done.");
        assert_eq!(session("e.g. done.", 0, &[(0, "X")]), "X e. g. done.");
        assert_eq!(
            session("Is it?Yes!No.", 1, &[(0, "Oh")]),
            "Is it? Oh Yes! No."
        );
        assert_eq!(session("a.b", 1, &[(1, "c")]), "a. b c");
        // Untouched neighbours keep their bytes.
        assert_eq!(session("e.g.\nnext.", 1, &[(0, "X")]), "e. X g.\nnext.");
    }

    #[test]
    fn whitespace_between_sentences_belongs_to_none() {
        let text = "  Hello world.\n\nSecond\tone!  ";
        assert_eq!(sentences(text), ["Hello world.", "Second\tone!"]);
        let d = Document::parse(text);
        assert_eq!(d.words(1), w(&["Second", "one!"]));
        let (out, n) = d.replace(0, &w(&["Hi", "there."]));
        assert_eq!(out, "  Hi there.\n\nSecond\tone!  ");
        assert_eq!(n, 1);
    }

    #[test]
    fn newlines_inside_a_sentence_become_single_spaces_only_there() {
        let d = Document::parse("One\ntwo. Three\nfour.\n");
        let (out, n) = d.replace(1, &d.words(1));
        assert_eq!(out, "One\ntwo. Three four.\n");
        assert_eq!(n, 1);
    }

    #[test]
    fn empty_file_has_slot_zero_only() {
        let d = Document::parse("");
        assert_eq!(d.sentence_count(), 0);
        assert!(d.check_open(0).is_ok());
        assert!(d.check_open(1).is_err());
        assert!(d.words(0).is_empty());
        assert_eq!(
            d.replace(0, &w(&["Hello", "world."])),
            ("Hello world.".into(), 1)
        );
        assert_eq!(d.replace(0, &[]), (String::new(), 0));
        let blank = Document::parse(" \n ");
        assert_eq!(blank.sentence_count(), 0);
        assert!(blank.check_open(0).is_ok());
        assert_eq!(blank.replace(0, &w(&["Hi."])), (" \n Hi.".into(), 1));
    }

    #[test]
    fn unfinished_last_sentence_has_no_new_slot() {
        let d = Document::parse("Done. not yet");
        assert_eq!(d.sentence_count(), 2);
        assert!(d.check_open(1).is_ok());
        let e = d.check_open(2).err();
        assert_eq!(
            e,
            Some(WireError::new(
                ErrorCode::Invalid,
                "Sentence index out of range"
            ))
        );
        assert_eq!(d.words(1), w(&["not", "yet"]));
        let (out, n) = d.replace(1, &w(&["not", "yet", "done."]));
        assert_eq!(out, "Done. not yet done.");
        assert_eq!(n, 1);
    }

    #[test]
    fn finished_last_sentence_has_a_new_slot() {
        let d = Document::parse("One. Two.");
        assert!(d.check_open(2).is_ok());
        assert!(d.check_open(3).is_err());
        assert_eq!(
            d.replace(2, &w(&["Three."])),
            ("One. Two. Three.".into(), 1)
        );
        let d = Document::parse("One.\n");
        assert_eq!(
            d.replace(1, &w(&["Two", "and", "three."])).0,
            "One.\nTwo and three."
        );
    }

    #[test]
    fn delimiters_in_inserted_text_split_the_sentence() {
        let d = Document::parse("Hello world. Bye.");
        let mut buf = EditBuffer::new(d.words(0));
        assert!(buf.insert(1, "there. Big").is_ok());
        assert_eq!(buf.text(), "Hello there. Big world.");
        let (out, n) = d.replace(0, buf.words());
        assert_eq!(out, "Hello there. Big world. Bye.");
        assert_eq!(n, 2);
        assert_eq!(Document::parse(&out).sentence_count(), 3);
    }

    #[test]
    fn unfinished_tail_joins_the_next_sentence() {
        let d = Document::parse("Hello. World.");
        let (out, n) = d.replace(0, &w(&["Hello.", "x"]));
        assert_eq!(out, "Hello. x World.");
        assert_eq!(sentences(&out), ["Hello.", "x World."]);
        // One sentence fewer on its own, so a session on "World." (1) stays on 1.
        assert_eq!(n, 1);
    }

    #[test]
    fn emptied_sentence_forms_none() {
        let d = Document::parse("a. b. c.");
        let (out, n) = d.replace(1, &[]);
        assert_eq!(out, "a.  c.");
        assert_eq!(n, 0);
    }

    #[test]
    fn insert_at_both_ends_and_out_of_range() {
        let mut buf = EditBuffer::new(w(&["b"]));
        assert!(buf.insert(0, "a").is_ok());
        assert!(buf.insert(2, " c  d ").is_ok());
        assert_eq!(buf.text(), "a b c d");
        let e = buf.insert(5, "x").err();
        assert_eq!(
            e,
            Some(WireError::new(
                ErrorCode::Invalid,
                "Word index out of range"
            ))
        );
        assert_eq!(buf.words(), w(&["a", "b", "c", "d"]).as_slice());
        let mut empty = EditBuffer::new(Vec::new());
        assert!(empty.insert(1, "x").is_err());
        assert!(empty.insert(0, "Hello world.").is_ok());
        assert_eq!(empty.text(), "Hello world.");
        assert!(empty.insert(2, "").is_ok());
        assert_eq!(empty.words().len(), 2);
    }

    #[test]
    fn counts() {
        assert_eq!(count_words("  one two\nthree  "), 3);
        assert_eq!(count_words(""), 0);
        assert_eq!(count_chars("héllo!"), 6);
        assert_eq!(count_chars(""), 0);
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[ab é.!?\n\t]{0,40}").expect("valid regex")
    }

    fn words_strategy() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            proptest::string::string_regex("[abé.!?]{1,4}").expect("valid regex"),
            0..5,
        )
    }

    proptest! {
        #[test]
        fn replace_keeps_bytes_outside_and_counts_match(
            text in text_strategy(),
            words in words_strategy(),
            pick in 0usize..64,
        ) {
            let d = Document::parse(&text);
            let count = d.sentence_count();
            let i = pick % (count + 1);
            prop_assume!(d.check_open(i).is_ok());
            let joined = words.join(" ");
            let (out, n) = d.replace(i, &words);
            let new_count = Document::parse(&out).sentence_count();
            if i < count {
                let r = d.sentences[i].clone();
                // A glued neighbour is set apart by exactly one space; nothing else changes.
                let pad_before = usize::from(!joined.is_empty() && ends_in_word(&text[..r.start]));
                let pad_after = usize::from(!joined.is_empty() && starts_with_word(&text[r.end..]));
                let at = r.start + pad_before;
                prop_assert_eq!(&out[..r.start], &text[..r.start]);
                prop_assert_eq!(&out[r.start..at], &" "[..pad_before]);
                prop_assert_eq!(&out[at..at + joined.len()], joined.as_str());
                let tail = at + joined.len();
                prop_assert_eq!(&out[tail..tail + pad_after], &" "[..pad_after]);
                prop_assert_eq!(&out[tail + pad_after..], &text[r.end..]);
                prop_assert_eq!(new_count, count - 1 + n);
            } else {
                prop_assert!(out.starts_with(&text));
                prop_assert!(out.ends_with(&joined));
                prop_assert_eq!(new_count, count + n);
                if !joined.is_empty() {
                    prop_assert_eq!(n, Document::parse(&joined).sentence_count());
                }
            }
        }

        #[test]
        fn replacing_a_sentence_by_its_own_words_is_identity(
            text in text_strategy(),
            pick in 0usize..64,
        ) {
            let d = Document::parse(&text);
            prop_assume!(d.sentence_count() > 0);
            let i = pick % d.sentence_count();
            let words = d.words(i);
            let r = d.sentences[i].clone();
            prop_assume!(text[r.clone()] == words.join(" "));
            // Identity but for one space that sets a glued neighbour apart.
            let (before, after) = (&text[..r.start], &text[r.end..]);
            let expected = format!(
                "{before}{}{}{}{after}",
                if ends_in_word(before) { " " } else { "" },
                &text[r.clone()],
                if starts_with_word(after) { " " } else { "" },
            );
            prop_assert_eq!(d.replace(i, &words), (expected, 1));
        }

        #[test]
        fn parsing_bytewise_finds_the_sentences_of_the_char_definition(
            text in proptest::string::string_regex(
                "[ab\u{e9}\u{85}\u{a0}\u{2028}\u{3000}\u{1f600}.!?\n\r\t\u{b}\u{c} ]{0,60}"
            ).expect("valid regex")
        ) {
            // The definition: a sentence runs from its first non-whitespace character to its
            // delimiter, or to the last non-whitespace character of the text.
            let mut want = Vec::new();
            let mut open: Option<(usize, usize)> = None;
            for (i, c) in text.char_indices() {
                if c.is_whitespace() {
                    continue;
                }
                let start = open.map_or(i, |(s, _)| s);
                if is_delimiter(c) {
                    want.push(start..i + c.len_utf8());
                    open = None;
                } else {
                    open = Some((start, i + c.len_utf8()));
                }
            }
            let finished = open.is_none();
            want.extend(open.map(|(s, e)| s..e));
            let d = Document::parse(&text);
            prop_assert_eq!(&d.sentences, &want);
            prop_assert_eq!(d.last_finished, finished);
        }

        #[test]
        fn sentences_are_ordered_trimmed_and_cover_every_word(text in text_strategy()) {
            let d = Document::parse(&text);
            let mut prev_end = 0;
            let mut words = 0u64;
            for (k, r) in d.sentences.iter().enumerate() {
                prop_assert!(r.start >= prev_end && r.start < r.end);
                let s = &text[r.clone()];
                prop_assert_eq!(s.trim(), s);
                let last = s.chars().next_back().map(is_delimiter);
                prop_assert!(last == Some(true) || k + 1 == d.sentences.len());
                prop_assert!(!text[prev_end..r.start].chars().any(|c| !c.is_whitespace()));
                words += count_words(s);
                prev_end = r.end;
            }
            prop_assert!(text[prev_end..].trim().is_empty());
            // A word split by a delimiter counts once per sentence piece.
            prop_assert!(words >= count_words(&text));
        }

        #[test]
        fn insert_adds_exactly_the_words(
            start in words_strategy(),
            text in text_strategy(),
            k in 0usize..8,
        ) {
            let mut buf = EditBuffer::new(start.clone());
            let res = buf.insert(k, &text);
            if k <= start.len() {
                prop_assert!(res.is_ok());
                let added = split_words(&text).count() as u64;
                prop_assert!(added >= count_words(&text));
                prop_assert_eq!(buf.words().len() as u64, start.len() as u64 + added);
                prop_assert_eq!(buf.words()[k..k + added as usize].concat(),
                    text.split_whitespace().collect::<String>());
                prop_assert_eq!(&buf.words()[..k], &start[..k]);
                prop_assert_eq!(&buf.words()[buf.words().len() - (start.len() - k)..], &start[k..]);
            } else {
                prop_assert!(res.is_err());
                prop_assert_eq!(buf.words(), start.as_slice());
            }
        }
    }
}
