//! TEMP stub of the sentence engine with the agreed API; replaced by the real module on main.
//!
//! Lock shifting: when sentence `i` (existing) is replaced and becomes `n` sentences, every
//! other open session on an index `> i` moves by `n - 1`; an append at `i == count` shifts
//! nothing.

use crate::protocol::{err, WireError};

/// The text and its sentence byte ranges.
pub struct Document {
    text: String,
    ranges: Vec<(usize, usize)>,
}

fn is_delim(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

impl Document {
    /// Splits `text` into sentences.
    pub fn parse(text: &str) -> Document {
        let mut ranges = Vec::new();
        let mut start: Option<usize> = None;
        for (i, c) in text.char_indices() {
            if start.is_none() && !c.is_whitespace() {
                start = Some(i);
            }
            if is_delim(c) {
                if let Some(s) = start.take() {
                    ranges.push((s, i + c.len_utf8()));
                }
            }
        }
        if let Some(s) = start {
            let end = text.trim_end().len();
            ranges.push((s, end));
        }
        Document {
            text: text.to_string(),
            ranges,
        }
    }

    /// Number of sentences, finished or not.
    pub fn sentence_count(&self) -> usize {
        self.ranges.len()
    }

    fn last_finished(&self) -> bool {
        self.ranges
            .last()
            .map(|&(_, e)| self.text[..e].chars().last().is_some_and(is_delim))
            .unwrap_or(true)
    }

    /// Ok if `i` may be opened for writing.
    pub fn check_open(&self, i: usize) -> Result<(), WireError> {
        let n = self.sentence_count();
        if i < n || (i == n && self.last_finished()) {
            Ok(())
        } else {
            Err(err::invalid("Sentence index out of range"))
        }
    }

    /// Words of sentence `i`.
    pub fn words(&self, i: usize) -> Vec<String> {
        match self.ranges.get(i) {
            Some(&(s, e)) => self.text[s..e]
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        }
    }

    /// The new content with sentence `i` replaced, and how many sentences that region forms.
    pub fn replace(&self, i: usize, words: &[String]) -> (String, usize) {
        let joined = words.join(" ");
        let n = Document::parse(&joined).sentence_count();
        match self.ranges.get(i) {
            Some(&(s, e)) => {
                let mut out = String::with_capacity(self.text.len() + joined.len());
                out.push_str(&self.text[..s]);
                out.push_str(&joined);
                out.push_str(&self.text[e..]);
                (out, n)
            }
            None => {
                if words.is_empty() {
                    return (self.text.clone(), 0);
                }
                let mut out = self.text.clone();
                if !out.is_empty() && !out.ends_with(char::is_whitespace) {
                    out.push(' ');
                }
                out.push_str(&joined);
                (out, n)
            }
        }
    }
}

/// The private copy of a sentence inside a write session.
pub struct EditBuffer {
    words: Vec<String>,
}

impl EditBuffer {
    /// A buffer holding `words`.
    pub fn new(words: Vec<String>) -> EditBuffer {
        EditBuffer { words }
    }

    /// Inserts the words of `text` before word `k`.
    pub fn insert(&mut self, k: usize, text: &str) -> Result<(), WireError> {
        if k > self.words.len() {
            return Err(err::invalid("Word index out of range"));
        }
        let new: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        self.words.splice(k..k, new);
        Ok(())
    }

    /// The words.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Words joined by single spaces.
    pub fn text(&self) -> String {
        self.words.join(" ")
    }
}

/// Whitespace-separated words of a text.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Unicode scalar values of a text.
pub fn count_chars(text: &str) -> u64 {
    text.chars().count() as u64
}
