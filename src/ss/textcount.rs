//! Words and characters of content as its bytes stream past, with one table lookup per byte.
//!
//! The counts equal `document::count_words` and `document::count_chars` over
//! `String::from_utf8_lossy` of the whole content (each maximal invalid subsequence is one
//! U+FFFD), however the bytes are split into pieces. Uploads count every byte they receive,
//! and binary content is mostly invalid UTF-8: a byte-by-byte decoder with a branch per case
//! mispredicts on nearly every byte of such content and was the slowest step of an upload. Here
//! the decoder is a state machine whose table is computed at compile time from a readable
//! step function ([`step`]); the hot loop has no branches but the loop's own.
//!
//! A state is (where we are inside a UTF-8 sequence, whether the last character was part of a
//! word). Sequences whose lead byte could start a non-ASCII whitespace character (U+0085,
//! U+00A0, U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) get states of
//! their own, so whitespace is known when a sequence completes without decoding it.

/// Where the decoder is inside a UTF-8 sequence.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Seq {
    /// Between characters.
    Start = 0,
    /// One more continuation byte (80..=BF) ends an ordinary character.
    Need1,
    /// Two more continuation bytes.
    Need2,
    /// Three more continuation bytes.
    Need3,
    /// After E0: two more, the first in A0..=BF (no overlong forms).
    E0,
    /// After ED: two more, the first in 80..=9F (no surrogates).
    Ed,
    /// After F0: three more, the first in 90..=BF (no overlong forms).
    F0,
    /// After F4: three more, the first in 80..=8F (nothing above U+10FFFF).
    F4,
    /// After C2: one more; 85 and A0 make whitespace.
    C2,
    /// After E1: two more; 9A may lead to U+1680.
    E1,
    /// After E2: two more; 80 and 81 may lead to U+2000..=U+205F whitespace.
    E2,
    /// After E3: two more; 80 may lead to U+3000.
    E3,
    /// After E1 9A: 80 makes U+1680.
    E19a,
    /// After E2 80: 80..=8A, A8, A9, AF make whitespace.
    E280,
    /// After E2 81: 9F makes U+205F.
    E281,
    /// After E3 80: 80 makes U+3000.
    E380,
}

/// Number of [`Seq`] values.
const SEQS: usize = 16;
/// Every [`Seq`], indexed by its discriminant.
const ALL_SEQS: [Seq; SEQS] = [
    Seq::Start,
    Seq::Need1,
    Seq::Need2,
    Seq::Need3,
    Seq::E0,
    Seq::Ed,
    Seq::F0,
    Seq::F4,
    Seq::C2,
    Seq::E1,
    Seq::E2,
    Seq::E3,
    Seq::E19a,
    Seq::E280,
    Seq::E281,
    Seq::E380,
];

/// One decoder state: the sequence position and whether we are inside a word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct State {
    seq: Seq,
    in_word: bool,
}

/// What one byte does: the next state, and the characters and words it completes.
#[derive(Clone, Copy)]
struct Step {
    next: State,
    chars: u16,
    words: u16,
}

impl Step {
    /// A character ends here; `space` says whether it is whitespace.
    const fn emit(mut self, space: bool) -> Step {
        self.chars += 1;
        if space {
            self.next.in_word = false;
        } else if !self.next.in_word {
            self.next.in_word = true;
            self.words += 1;
        }
        self
    }

    const fn goto(mut self, seq: Seq) -> Step {
        self.next.seq = seq;
        self
    }
}

/// Whether `b` may continue a sequence in position `seq` (not [`Seq::Start`]).
const fn continues(seq: Seq, b: u8) -> bool {
    match seq {
        Seq::E0 => matches!(b, 0xA0..=0xBF),
        Seq::Ed => matches!(b, 0x80..=0x9F),
        Seq::F0 => matches!(b, 0x90..=0xBF),
        Seq::F4 => matches!(b, 0x80..=0x8F),
        _ => matches!(b, 0x80..=0xBF),
    }
}

/// `b` read between characters.
const fn start(s: Step, b: u8) -> Step {
    match b {
        // `char::is_whitespace` on ASCII is exactly these six bytes.
        b' ' | b'\t'..=b'\r' => s.goto(Seq::Start).emit(true),
        0x00..=0x7F => s.goto(Seq::Start).emit(false),
        0xC2 => s.goto(Seq::C2),
        0xC3..=0xDF => s.goto(Seq::Need1),
        0xE0 => s.goto(Seq::E0),
        0xE1 => s.goto(Seq::E1),
        0xE2 => s.goto(Seq::E2),
        0xE3 => s.goto(Seq::E3),
        0xE4..=0xEC | 0xEE | 0xEF => s.goto(Seq::Need2),
        0xED => s.goto(Seq::Ed),
        0xF0 => s.goto(Seq::F0),
        0xF1..=0xF3 => s.goto(Seq::Need3),
        0xF4 => s.goto(Seq::F4),
        // A stray continuation byte, C0, C1, F5..=FF: one replacement character each.
        _ => s.goto(Seq::Start).emit(false),
    }
}

/// The decoder's rule: what byte `b` does in state `st`.
const fn step(st: State, b: u8) -> Step {
    let s = Step {
        next: st,
        chars: 0,
        words: 0,
    };
    if matches!(st.seq, Seq::Start) {
        return start(s, b);
    }
    if !continues(st.seq, b) {
        // The sequence so far is one replacement character; `b` starts afresh.
        return start(s.goto(Seq::Start).emit(false), b);
    }
    match st.seq {
        Seq::Need1 => s.goto(Seq::Start).emit(false),
        Seq::C2 => s.goto(Seq::Start).emit(matches!(b, 0x85 | 0xA0)),
        Seq::E19a | Seq::E380 => s.goto(Seq::Start).emit(b == 0x80),
        Seq::E280 => s
            .goto(Seq::Start)
            .emit(matches!(b, 0x80..=0x8A | 0xA8 | 0xA9 | 0xAF)),
        Seq::E281 => s.goto(Seq::Start).emit(b == 0x9F),
        Seq::E1 if b == 0x9A => s.goto(Seq::E19a),
        Seq::E2 if b == 0x80 => s.goto(Seq::E280),
        Seq::E2 if b == 0x81 => s.goto(Seq::E281),
        Seq::E3 if b == 0x80 => s.goto(Seq::E380),
        Seq::Need2 | Seq::E0 | Seq::Ed | Seq::E1 | Seq::E2 | Seq::E3 => s.goto(Seq::Need1),
        Seq::Need3 | Seq::F0 | Seq::F4 => s.goto(Seq::Need2),
        Seq::Start => s,
    }
}

/// Index of a state's row in [`TABLE`]: rows are 256 entries long, so a row index plus a byte
/// is an entry index.
const fn row(st: State) -> u16 {
    (((st.seq as u16) << 1) | st.in_word as u16) << 8
}

/// Bits of an entry holding the next state's row.
const ROW_MASK: u16 = 0x1FFF;
/// Shift of an entry's character count (0..=2, two bits).
const CHARS_SHIFT: u16 = 13;
/// Shift of an entry's word count (0 or 1, one bit).
const WORDS_SHIFT: u16 = 15;

/// Every (state, byte) entry: the next state's row, the characters and words completed.
static TABLE: [u16; 2 * SEQS * 256] = build();

const fn build() -> [u16; 2 * SEQS * 256] {
    let mut t = [0u16; 2 * SEQS * 256];
    let mut i = 0;
    while i < 2 * SEQS {
        let st = State {
            seq: ALL_SEQS[i >> 1],
            in_word: i & 1 == 1,
        };
        let mut b = 0;
        while b < 256 {
            let s = step(st, b as u8);
            t[row(st) as usize + b] =
                row(s.next) | (s.chars << CHARS_SHIFT) | (s.words << WORDS_SHIFT);
            b += 1;
        }
        i += 1;
    }
    t
}

/// The running word and character counts of a byte stream.
#[derive(Debug, Clone)]
pub struct TextCount {
    /// Row of the current state in [`TABLE`].
    row: u16,
    words: u64,
    chars: u64,
}

impl Default for TextCount {
    fn default() -> TextCount {
        TextCount::new()
    }
}

impl TextCount {
    /// Counts of an empty stream.
    pub fn new() -> TextCount {
        TextCount {
            row: row(State {
                seq: Seq::Start,
                in_word: false,
            }),
            words: 0,
            chars: 0,
        }
    }

    /// Takes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut r = self.row as usize;
        let (mut chars, mut words) = (0u64, 0u64);
        for &b in bytes {
            let e = TABLE[r + b as usize];
            r = (e & ROW_MASK) as usize;
            chars += u64::from((e >> CHARS_SHIFT) & 3);
            words += u64::from(e >> WORDS_SHIFT);
        }
        self.chars += chars;
        self.words += words;
        self.row = r as u16;
    }

    /// The final counts: a sequence cut off by the end counts as one (non-space) character.
    pub fn finish(&self) -> (u64, u64) {
        let (mut words, mut chars) = (self.words, self.chars);
        let seq = ALL_SEQS[(self.row >> 9) as usize];
        let in_word = (self.row >> 8) & 1 == 1;
        if seq != Seq::Start {
            chars += 1;
            if !in_word {
                words += 1;
            }
        }
        (words, chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(bytes: &[u8]) -> (u64, u64) {
        let mut t = TextCount::new();
        t.update(bytes);
        t.finish()
    }

    fn reference(bytes: &[u8]) -> (u64, u64) {
        let text = String::from_utf8_lossy(bytes);
        (
            crate::ss::document::count_words(&text),
            crate::ss::document::count_chars(&text),
        )
    }

    #[test]
    fn every_whitespace_character_is_known() {
        for c in (0u32..=0x10FFFF).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let enc = c.encode_utf8(&mut buf).as_bytes();
            let mut with = b"a".to_vec();
            with.extend_from_slice(enc);
            with.extend_from_slice(b"b");
            assert_eq!(counts(&with), reference(&with), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn every_two_byte_pair_matches_lossy_decoding() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for tail in [&b""[..], b" ", b"x", b"\x80", b"\xbf\xbf"] {
                    let mut bytes = vec![a, b];
                    bytes.extend_from_slice(tail);
                    assert_eq!(counts(&bytes), reference(&bytes), "{bytes:02x?}");
                }
            }
        }
    }

    #[test]
    fn long_runs_count_like_lossy_decoding() {
        let bytes = vec![b'a'; (1 << 16) + 3];
        assert_eq!(counts(&bytes), (1, (1 << 16) + 3));
        let spaced: Vec<u8> = (0..200_000)
            .map(|i| if i % 2 == 0 { b'x' } else { b' ' })
            .collect();
        assert_eq!(counts(&spaced), reference(&spaced));
    }
}
