//! Words and characters of content as its bytes stream past, with at most one table lookup per
//! byte.
//!
//! The counts equal `document::count_words` and `document::count_chars` over
//! `String::from_utf8_lossy` of the whole content (each maximal invalid subsequence is one
//! U+FFFD), however the bytes are split into pieces. Uploads count every byte they receive,
//! and binary content is mostly invalid UTF-8: a byte-by-byte decoder with a branch per case
//! mispredicts on nearly every byte of such content and was the slowest step of an upload. Here
//! the decoder is a state machine whose table is computed at compile time from a readable
//! step function ([`step`]); the hot loop's only other branch is per eight bytes of every lane
//! (all ASCII or not), which binary and text content each take the same way nearly always.
//!
//! Speed, for an upload's CPU budget: a long piece is split into [`LANES`] lanes decoded side by
//! side (each lane is one chain of dependent loads); a lane's state and counts live in one word
//! to which a byte adds its whole table entry ([`Lane`]); and eight ASCII bytes between
//! characters are counted at once with word-wide bit arithmetic ([`non_space`]) instead of
//! eight lookups.
//!
//! Where the processor has AVX-512 (BW and VBMI), a piece of [`VECTOR_MIN_BYTES`] or more is
//! counted 64 bytes at a time instead ([`avx512`]): about three times as fast as the table on
//! binary content and on non-ASCII text (the ignored test below measures both). The table
//! takes only the few bytes before the first point between characters and those after the
//! last ASCII byte, so both count exactly alike however the bytes are split.
//!
//! A state is (where we are inside a UTF-8 sequence, whether the last character was part of a
//! word). Sequences whose lead byte could start a non-ASCII whitespace character (U+0085,
//! U+00A0, U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) get states of
//! their own, so whitespace is known when a sequence completes without decoding it.
//!
//! # Where it runs: counting content as it arrives
//!
//! An UPLOAD's words and characters are counted while its bytes arrive, on a thread beside the
//! one that receives and writes, for parts of 4 MiB or more (`COUNT_THREAD_MIN_BYTES` in the
//! server's upload path): a bounded queue of 4 chunks lies between them (`COUNT_QUEUE_CHUNKS`),
//! and the chunks are shared with the staging relay, not copied. The relay re-sends each chunk
//! with the CRC32C its frame was verified against instead of computing it again. Large temp
//! files are written by a thread of their own with `O_DIRECT`, beside the page cache (see the
//! server's `direct.rs`); smaller ones have their writeback started every 8 MiB
//! (`WRITEBACK_BYTES`, `sync_file_range`), so the final fsync has little left. A frame body of
//! 64 KiB or more is read from the socket straight into a buffer of its own
//! (`protocol::frame`), allocated once at its declared size and, over plain TCP, never zeroed
//! (`read_to_end` on the socket itself, limited to the body; a read bounded by a deadline
//! reads once at a time): the bytes are neither zeroed beforehand nor copied out of a shared
//! buffer afterwards. Once the writer, the counter and the relay are done with a chunk, the
//! receive loop hands its buffer back to the connection for a later chunk, so a long upload
//! reads into pages already mapped rather than faulting in (and the kernel clearing) fresh
//! ones. The part's running CRC32C is joined from the frames' with a shift operator computed
//! once for the chunk length (`protocol::frame::CrcJoin`).

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

/// Entries of [`TABLE`]: 256 for each of the `2 * SEQS` states, a power of two.
const ENTRIES: usize = 2 * SEQS * 256;
/// Bits of a [`Lane`] holding its row; an entry holds there the step to the next row.
const ROW_MASK: u64 = ENTRIES as u64 - 1;
/// Bytes a lane takes between two readings of its counts (see [`Lane`]).
const BLOCK: usize = 248;
/// Shift of the bits that catch a row step's carries.
const CARRY_SHIFT: u32 = 13;
/// Shift of an entry's character count (0..=2).
const CHARS_SHIFT: u32 = 21;
/// Shift of an entry's word count (0 or 1).
const WORDS_SHIFT: u32 = 31;

// Within a block, the carries out of the row (one a byte at most) stay below the characters,
// and the characters (two a byte at most) below the words.
const _: () = assert!(ENTRIES.is_power_of_two() && ENTRIES == 1 << CARRY_SHIFT);
const _: () = assert!(BLOCK < 1 << (CHARS_SHIFT - CARRY_SHIFT));
const _: () = assert!(2 * BLOCK < 1 << (WORDS_SHIFT - CHARS_SHIFT));

/// Every (state, byte) entry: the step from this row to the next state's (modulo
/// [`ENTRIES`]), the characters and words completed.
static TABLE: [u32; ENTRIES] = build();

const fn build() -> [u32; ENTRIES] {
    let mut t = [0u32; ENTRIES];
    let mut i = 0;
    while i < 2 * SEQS {
        let st = State {
            seq: ALL_SEQS[i >> 1],
            in_word: i & 1 == 1,
        };
        let mut b = 0;
        while b < 256 {
            let s = step(st, b as u8);
            let to = (row(s.next) as u32).wrapping_sub(row(st) as u32) & ROW_MASK as u32;
            t[row(st) as usize + b] =
                to | ((s.chars as u32) << CHARS_SHIFT) | ((s.words as u32) << WORDS_SHIFT);
            b += 1;
        }
        i += 1;
    }
    t
}

/// One lane's state and counts in one word, so that a byte costs one addition of a whole table
/// entry: the row in the low bits (each entry's step lands on the next row, its carry in the
/// bits above), the characters and the words in fields above that. The counts are read (and
/// the fields emptied) at least every [`BLOCK`] bytes, before any field overflows.
#[derive(Clone, Copy)]
struct Lane(u64);

impl Lane {
    fn at(row: usize) -> Lane {
        Lane(row as u64)
    }

    #[inline(always)]
    fn row(self) -> usize {
        (self.0 & ROW_MASK) as usize
    }

    /// Takes byte `b`.
    #[inline(always)]
    fn feed(&mut self, b: u8) {
        // The row's low eight bits are zero: the byte fills them.
        self.0 += u64::from(TABLE[(self.0 as usize).wrapping_add(b as usize) & (ENTRIES - 1)]);
    }

    /// Takes eight ASCII bytes `x` (little-endian), in a state between characters.
    #[inline(always)]
    fn feed_ascii(&mut self, x: u64) {
        let in_word = (self.0 >> 8) & 1;
        let word = non_space(x);
        // A word starts at a non-space byte whose previous byte is a space.
        let starts = word & !((word << 8) | (in_word << 7));
        let words = ((starts >> 7).wrapping_mul(ONES)) >> 56;
        let next = (word >> 63) << 8;
        self.0 = (self.0 & !ROW_MASK) + next + (8 << CHARS_SHIFT) + (words << WORDS_SHIFT);
    }

    /// The characters and words taken since the last reading; empties their fields.
    #[inline(always)]
    fn take(&mut self) -> (u64, u64) {
        let a = self.0;
        self.0 &= ROW_MASK;
        let chars_mask = (1 << (WORDS_SHIFT - CHARS_SHIFT)) - 1;
        ((a >> CHARS_SHIFT) & chars_mask, a >> WORDS_SHIFT)
    }
}

/// One in each byte.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of each byte.
const HIGH: u64 = ONES * 0x80;

/// For eight ASCII bytes `x`: the high bit of each byte that is not whitespace.
#[inline(always)]
fn non_space(x: u64) -> u64 {
    // Every byte is below 0x80, so no sum below carries into the next byte.
    let not_blank = (x ^ (ONES * b' ' as u64)) + ONES * 0x7F;
    let from_tab = x + ONES * (0x80 - b'\t' as u64);
    let past_cr = x + ONES * (0x80 - 1 - b'\r' as u64);
    not_blank & !(from_tab & !past_cr) & HIGH
}

/// Lanes [`TextCount::update`] runs side by side over a long piece.
const LANES: usize = 6;
/// Shortest lane worth splitting a piece for.
const LANE_MIN_BYTES: usize = 1024;

/// Runs the table over `bytes` from `row`, one byte at a time: the end row, characters and
/// words completed.
fn run(row: usize, bytes: &[u8]) -> (usize, u64, u64) {
    let (mut chars, mut words) = (0u64, 0u64);
    let mut lane = Lane::at(row);
    for block in bytes.chunks(BLOCK) {
        for &b in block {
            lane.feed(b);
        }
        let (c, w) = lane.take();
        chars += c;
        words += w;
    }
    (lane.row(), chars, words)
}

/// Runs the table over `N` lanes side by side, from (and updating) their rows, eight bytes of
/// each lane at a time (all at once when they are all ASCII, between characters), as far as
/// the shortest lane goes rounded down to a multiple of eight: the characters and words
/// completed in all lanes.
// The lanes are interleaved byte by byte: indexes, not iterators.
#[allow(clippy::needless_range_loop)]
fn run_lanes<const N: usize>(rows: &mut [usize; N], lanes: [&[u8]; N]) -> (u64, u64) {
    let len = lanes.iter().map(|l| l.len()).min().unwrap_or(0);
    let mut lane: [Lane; N] = rows.map(Lane::at);
    let n = len / 8;
    let (mut chars, mut words) = (0u64, 0u64);
    let mut at = 0;
    while at < n {
        let end = (at + BLOCK / 8).min(n);
        let block: [&[u8]; N] = std::array::from_fn(|k| &lanes[k][8 * at..8 * end]);
        for i in 0..end - at {
            let ch: [&[u8; 8]; N] = std::array::from_fn(|k| {
                block[k][8 * i..8 * i + 8].try_into().expect("eight bytes")
            });
            let x: [u64; N] = std::array::from_fn(|k| u64::from_le_bytes(*ch[k]));
            let ascii = x.iter().fold(0, |a, &x| a | x) & HIGH == 0;
            if ascii && between(&lane) {
                for k in 0..N {
                    lane[k].feed_ascii(x[k]);
                }
            } else {
                for j in 0..8 {
                    for k in 0..N {
                        lane[k].feed(ch[k][j]);
                    }
                }
            }
        }
        for l in &mut lane {
            let (c, w) = l.take();
            chars += c;
            words += w;
        }
        at = end;
    }
    *rows = lane.map(Lane::row);
    (chars, words)
}

/// Whether every lane is between characters: in the row of [`Seq::Start`], in a word or not.
#[inline(always)]
fn between<const N: usize>(lane: &[Lane; N]) -> bool {
    lane.iter().fold(0, |a, l| a | l.row()) < 1 << 9
}

/// The row after the ASCII byte `b`, whatever came before it.
fn lane_start(b: u8) -> usize {
    let space = matches!(b, b' ' | b'\t'..=b'\r');
    row(State {
        seq: Seq::Start,
        in_word: !space,
    }) as usize
}

/// Pieces at least this long are counted with AVX-512 where the processor has it.
const VECTOR_MIN_BYTES: usize = 256;
/// Most bytes the table takes at the start of a piece to reach a point between characters
/// before leaving the whole piece to it (only content that is never between characters, such
/// as a long run of lead bytes, gets that far).
const SYNC_MAX_BYTES: usize = 64;

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Whether this processor has the instructions [`avx512::count`] uses.
#[cfg(target_arch = "x86_64")]
fn vector_ok() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("popcnt")
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
        #[cfg(target_arch = "x86_64")]
        if bytes.len() >= VECTOR_MIN_BYTES && vector_ok() {
            self.update_vector(bytes);
            return;
        }
        self.update_table(bytes);
    }

    /// [`TextCount::update`] with AVX-512 (see [`avx512`]): the table takes the bytes up to the
    /// first point between characters and those after the last ASCII byte, the vector all
    /// the bytes between.
    #[cfg(target_arch = "x86_64")]
    fn update_vector(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while self.row >> 9 != Seq::Start as u16 {
            if at == SYNC_MAX_BYTES.min(bytes.len()) {
                self.update_table(&bytes[at..]);
                return;
            }
            let (r, c, w) = run(self.row as usize, &bytes[at..at + 1]);
            self.advance(r, c, w);
            at += 1;
        }
        let rest = &bytes[at..];
        let end = match rest.iter().rposition(u8::is_ascii) {
            Some(last) if last + 1 >= VECTOR_MIN_BYTES => last + 1,
            _ => {
                self.update_table(rest);
                return;
            }
        };
        let in_word = self.row & 1 << 8 != 0;
        // SAFETY: the processor has these instructions (checked by the caller).
        let (chars, words) = unsafe { avx512::count(&rest[..end], in_word) };
        // After an ASCII byte the decoder is between characters, in a word unless it was a
        // space.
        self.advance(lane_start(rest[end - 1]), chars, words);
        self.update_table(&rest[end..]);
    }

    /// [`TextCount::update`] with the table alone.
    fn update_table(&mut self, bytes: &[u8]) {
        if bytes.len() < LANE_MIN_BYTES * LANES {
            let mut rows = [self.row as usize];
            let (chars, words) = run_lanes(&mut rows, [bytes]);
            let done = bytes.len() / 8 * 8;
            let (r, c, w) = run(rows[0], &bytes[done..]);
            self.advance(r, chars + c, words + w);
            return;
        }
        // One lane is one chain of dependent table loads; a few lanes over separate parts of
        // the bytes keep the processor busy while each load is in flight. A lane starts just
        // after an ASCII byte, where the state is known without looking further back: the
        // decoder is between characters, inside a word exactly when that byte is not a space.
        // The ASCII byte itself is counted from the previous lane's end state, so the result
        // is exactly that of one lane over all the bytes.
        let len = bytes.len();
        let mut sync = [len; LANES];
        let mut from = 0;
        for (k, cut) in sync.iter_mut().enumerate().skip(1) {
            let at = (k * len / LANES).max(from);
            *cut = bytes[at..]
                .iter()
                .position(u8::is_ascii)
                .map_or(len, |p| at + p);
            from = (*cut + 1).min(len);
        }
        let lanes: [&[u8]; LANES] = std::array::from_fn(|k| {
            let start = if k == 0 { 0 } else { (sync[k] + 1).min(len) };
            let end = if k + 1 < LANES { sync[k + 1] } else { len };
            &bytes[start.min(end)..end]
        });
        let mut rows: [usize; LANES] = std::array::from_fn(|k| {
            if k == 0 {
                self.row as usize
            } else {
                bytes.get(sync[k]).map_or(0, |&b| lane_start(b))
            }
        });
        let (mut chars, mut words) = run_lanes(&mut rows, lanes);
        let common = lanes.iter().map(|l| l.len()).min().unwrap_or(0) / 8 * 8;
        let mut r = self.row as usize;
        for k in 0..LANES {
            if k > 0 {
                let Some(&b) = bytes.get(sync[k]) else { break };
                let mut lane = Lane::at(r);
                lane.feed(b);
                debug_assert_eq!(lane.row(), lane_start(b));
                let (c, w) = lane.take();
                chars += c;
                words += w;
            }
            let (end, c, w) = run(rows[k], &lanes[k][common..]);
            r = end;
            chars += c;
            words += w;
        }
        self.advance(r, chars, words);
    }

    fn advance(&mut self, row: usize, chars: u64, words: u64) {
        self.row = row as u16;
        self.chars += chars;
        self.words += words;
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

    /// xorshift bytes, with `ascii_every` forcing an ASCII byte now and then (0: never).
    fn noise(n: usize, seed: u64, ascii_every: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = (x >> 24) as u8;
                if ascii_every > 0 && i % ascii_every == 0 {
                    b & 0x7F
                } else {
                    b
                }
            })
            .collect()
    }

    #[test]
    fn lanes_count_exactly_like_one_pass() {
        let mut cases = vec![
            noise(100_000, 7, 0),
            noise(50_000, 9, 0).iter().map(|b| b | 0x80).collect(),
            noise(9_000, 11, 3),
            "é€ \u{3000}word 𝄞.".repeat(2_000).into_bytes(),
            // An ASCII byte now and then for the lanes to start at, blocks of only bytes above
            // 0x7F between them.
            format!("x{}", "é".repeat(2_500)).repeat(8).into_bytes(),
        ];
        // No ASCII byte at all after the first lane: one lane does everything.
        let mut no_ascii = b"ab ".to_vec();
        no_ascii.extend(std::iter::repeat_n(0xFFu8, 20_000));
        cases.push(no_ascii);
        // ASCII bytes only near the end, and a sequence cut at every lane boundary.
        let mut late = vec![0xE2u8; 30_000];
        late.extend_from_slice(b" x y");
        cases.push(late);
        for (n, bytes) in cases.iter().enumerate() {
            assert_eq!(counts(bytes), reference(bytes), "case {n}");
            // The same bytes in pieces of every kind of size.
            for piece in [1usize, 4095, 4096, 4097, 65_536] {
                let mut t = TextCount::new();
                for p in bytes.chunks(piece) {
                    t.update(p);
                }
                assert_eq!(
                    t.finish(),
                    reference(bytes),
                    "case {n} in pieces of {piece}"
                );
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

    /// Counts of `bytes` taken in pieces of `piece` bytes by the table alone.
    fn table_counts(bytes: &[u8], piece: usize) -> (u64, u64) {
        let mut t = TextCount::new();
        for p in bytes.chunks(piece) {
            t.update_table(p);
        }
        t.finish()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lead_classes_accept_exactly_the_decoders_first_continuations() {
        for b in 0..=255u8 {
            let after = step(
                State {
                    seq: Seq::Start,
                    in_word: false,
                },
                b,
            )
            .next
            .seq;
            let lead = !matches!(after, Seq::Start);
            assert_eq!(avx512::lead_bits(b) != 0, lead, "{b:02x}");
            for c in 0x80..=0xBFu8 {
                let taken = avx512::accepts(c) & avx512::lead_bits(b) != 0;
                assert_eq!(taken, lead && continues(after, c), "{b:02x} {c:02x}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn whitespace_classes_meet_exactly_at_multi_byte_whitespace() {
        // Every character of two or three bytes, and every byte triple a lead may start.
        let mut space = std::collections::HashSet::new();
        for c in (0x80u32..=0xFFFF).filter_map(char::from_u32) {
            if c.is_whitespace() {
                let mut buf = [0u8; 4];
                space.insert(c.encode_utf8(&mut buf).as_bytes().to_vec());
            }
        }
        assert_eq!(space.len(), 19);
        for b0 in 0xC0..=0xFFu8 {
            for b1 in 0x80..=0xBFu8 {
                let pair = avx512::space_lead(b0) & avx512::space_second(b1);
                assert_eq!(
                    pair & 3 != 0,
                    space.contains(&vec![b0, b1]),
                    "{b0:02x} {b1:02x}"
                );
                for b2 in 0x80..=0xBFu8 {
                    let three = pair & avx512::space_third(b2) != 0;
                    assert_eq!(
                        three,
                        space.contains(&vec![b0, b1, b2]),
                        "{b0:02x} {b1:02x} {b2:02x}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_and_table_count_alike_across_block_edges() {
        // Every character that matters to the vector's look back, at every offset around a
        // 64-byte block's edge, after a space or a word, in pieces that cut it anywhere.
        let specials = [
            "\u{85}",
            "\u{a0}",
            "\u{1680}",
            "\u{2000}",
            "\u{200a}",
            "\u{2028}",
            "\u{202f}",
            "\u{205f}",
            "\u{3000}",
            "\u{200b}",
            "\u{2010}",
            "\u{3001}",
            "é",
            "€",
            "𝄞",
            "\u{10FFFF}",
            "\u{D7FF}",
            "\u{E000}",
        ];
        let broken: [&[u8]; 10] = [
            b"\xE0\x80",
            b"\xED\xA0\x80",
            b"\xF0\x80",
            b"\xF4\x90",
            b"\xE2\x80",
            b"\xF0\x9F\x98",
            b"\xC0\xAF",
            b"\xFF",
            b"\x80\x80",
            b"\xE1\x9A",
        ];
        let mut pieces: Vec<Vec<u8>> = specials.iter().map(|s| s.as_bytes().to_vec()).collect();
        pieces.extend(broken.iter().map(|b| b.to_vec()));
        for piece in &pieces {
            for before in [&b" "[..], b"w", b"\t", b"\xC2\xA0"] {
                for offset in 56..72 {
                    let mut bytes = vec![b'x'; offset];
                    for (i, b) in bytes.iter_mut().enumerate() {
                        if i % 7 == 3 {
                            *b = b' ';
                        }
                    }
                    bytes.extend_from_slice(before);
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(b"y z");
                    bytes.extend(std::iter::repeat_n(b'q', 150));
                    let want = reference(&bytes);
                    assert_eq!(counts(&bytes), want, "{bytes:02x?}");
                    assert_eq!(table_counts(&bytes, bytes.len()), want, "{bytes:02x?}");
                    for cut in [1, 63, 64, 65, 100, 256, 300] {
                        let mut t = TextCount::new();
                        for p in bytes.chunks(cut) {
                            t.update(p);
                        }
                        assert_eq!(t.finish(), want, "in pieces of {cut}: {bytes:02x?}");
                    }
                }
            }
        }
    }

    #[test]
    fn vector_and_table_count_random_and_text_alike() {
        let cases = [
            noise(300_000, 3, 0),
            noise(100_000, 5, 2),
            noise(100_000, 13, 0).iter().map(|b| b | 0x80).collect(),
            "é€ \u{3000}word 𝄞.\u{85}\u{2028}x\u{a0}"
                .repeat(3_000)
                .into_bytes(),
            text_of(
                &["the", "fox", "\u{3000}", "日本語", "\u{2003}", "a\u{a0}b"],
                200_000,
            ),
        ];
        for (n, bytes) in cases.iter().enumerate() {
            let want = reference(bytes);
            for piece in [255usize, 256, 1000, 4096, 65_536, 1 << 20] {
                let mut t = TextCount::new();
                for p in bytes.chunks(piece) {
                    t.update(p);
                }
                assert_eq!(t.finish(), want, "case {n} in pieces of {piece}");
                assert_eq!(
                    table_counts(bytes, piece),
                    want,
                    "case {n} in pieces of {piece}"
                );
            }
        }
    }

    /// Random bytes, or text: ASCII words, words of mixed scripts, every kind of whitespace.
    fn content() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let raw = proptest::collection::vec(any::<u8>(), 0..3_000);
        let piece = prop_oneof![
            Just("word".to_string()),
            Just(" ".to_string()),
            Just("\t\n\r\x0b\x0c".to_string()),
            Just("é€日本".to_string()),
            Just("𝄞".to_string()),
            Just(
                "\u{85}\u{a0}\u{1680}\u{2000}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}"
                    .to_string()
            ),
            Just("\u{2010}\u{200b}\u{1681}\u{3001}\u{a1}".to_string()),
            any::<char>().prop_map(String::from),
        ];
        let text = proptest::collection::vec(piece, 0..800).prop_map(|p| p.concat().into_bytes());
        // Text with some bytes broken, so sequences are cut and stray bytes appear.
        let broken = (
            text.clone(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        )
            .prop_map(|(mut t, hits)| {
                for (at, b) in hits {
                    if !t.is_empty() {
                        let n = t.len();
                        t[at % n] = b;
                    }
                }
                t
            });
        prop_oneof![raw, text, broken]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
        #[test]
        fn any_content_in_any_pieces_counts_like_lossy_decoding(
            half in content(),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..6),
        ) {
            // Long enough for the lanes: the content twice over, with more of it after.
            let mut bytes = half.clone();
            bytes.extend_from_slice(&half);
            bytes.extend(std::iter::repeat_n(half, 4).flatten());
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut t = TextCount::new();
            for w in cuts.windows(2) {
                t.update(&bytes[w[0]..w[1]]);
            }
            proptest::prop_assert_eq!(t.finish(), reference(&bytes));
            proptest::prop_assert_eq!(counts(&bytes), reference(&bytes));
        }
    }

    /// The algorithm before the accumulators, the ASCII path and eight lanes: four lanes, a
    /// u16 entry, a character and a word count read out of each entry. The baseline of
    /// [`megabytes_per_second_against_the_previous_loop`].
    mod before {
        use super::super::{lane_start, row, step, State, ALL_SEQS, SEQS};

        const ROW_MASK: u16 = 0x1FFF;
        const CHARS_SHIFT: u16 = 13;
        const WORDS_SHIFT: u16 = 15;
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

        const LANES: usize = 4;
        const LANE_MIN_BYTES: usize = 1024;

        fn run(mut row: usize, bytes: &[u8]) -> (usize, u64, u64) {
            let (mut chars, mut words) = (0u64, 0u64);
            for &b in bytes {
                let e = TABLE[row + b as usize];
                row = (e & ROW_MASK) as usize;
                chars += u64::from((e >> CHARS_SHIFT) & 3);
                words += u64::from(e >> WORDS_SHIFT);
            }
            (row, chars, words)
        }

        /// (row, words, chars) after `bytes` from `(row, words, chars)`.
        pub fn update(state: &mut (usize, u64, u64), bytes: &[u8]) {
            let advance = |state: &mut (usize, u64, u64), r, c, w| {
                state.0 = r;
                state.1 += w;
                state.2 += c;
            };
            if bytes.len() < LANE_MIN_BYTES * LANES {
                let (r, chars, words) = run(state.0, bytes);
                advance(state, r, chars, words);
                return;
            }
            let len = bytes.len();
            let mut sync = [len; LANES];
            let mut from = 0;
            for (k, cut) in sync.iter_mut().enumerate().skip(1) {
                let at = (k * len / LANES).max(from);
                *cut = bytes[at..]
                    .iter()
                    .position(u8::is_ascii)
                    .map_or(len, |p| at + p);
                from = (*cut + 1).min(len);
            }
            let lane = |k: usize| -> &[u8] {
                let start = if k == 0 { 0 } else { (sync[k] + 1).min(len) };
                let end = if k + 1 < LANES { sync[k + 1] } else { len };
                &bytes[start.min(end)..end]
            };
            let lanes = [lane(0), lane(1), lane(2), lane(3)];
            let mut rows = [state.0, 0, 0, 0];
            for k in 1..LANES {
                rows[k] = bytes.get(sync[k]).map_or(0, |&b| lane_start(b));
            }
            let mut chars = [0u64; LANES];
            let mut words = [0u64; LANES];
            let common = lanes.iter().map(|l| l.len()).min().unwrap_or(0);
            for i in 0..common {
                for k in 0..LANES {
                    let e = TABLE[rows[k] + lanes[k][i] as usize];
                    rows[k] = (e & ROW_MASK) as usize;
                    chars[k] += u64::from((e >> CHARS_SHIFT) & 3);
                    words[k] += u64::from(e >> WORDS_SHIFT);
                }
            }
            let mut r = state.0;
            for k in 0..LANES {
                if k > 0 {
                    let Some(&b) = bytes.get(sync[k]) else { break };
                    let e = TABLE[r + b as usize];
                    chars[k] += u64::from((e >> CHARS_SHIFT) & 3);
                    words[k] += u64::from(e >> WORDS_SHIFT);
                }
                let (end, c, w) = run(rows[k], &lanes[k][common..]);
                r = end;
                chars[k] += c;
                words[k] += w;
            }
            advance(state, r, chars.iter().sum(), words.iter().sum());
        }
    }

    /// `n` bytes of text made of `words`, separated by spaces and now and then a newline.
    fn text_of(words: &[&str], n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 64);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
        }
        out.truncate(n);
        out
    }

    /// MB/s of the previous loop, of the table alone and of [`TextCount::update`], from the same run, over 64 MiB in 1 MiB
    /// pieces: `cargo test --release --lib textcount -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run with --ignored --nocapture"]
    fn megabytes_per_second_against_the_previous_loop() {
        use std::hint::black_box;
        use std::time::Instant;
        const SIZE: usize = 64 << 20;
        const PIECE: usize = 1 << 20;
        let english = [
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "lazy",
            "dog,",
            "and",
            "replicated",
            "storage",
            "servers",
            "answer.",
            "A",
            "pair",
            "of",
            "files",
        ];
        let mixed = [
            "the",
            "fox",
            "café",
            "naïve",
            "Grüße",
            "слово",
            "Привет,",
            "日本語の",
            "文章。",
            "€10",
            "𝄞",
            "\u{3000}",
            "\u{a0}",
            "—",
            "“quoted”",
            "ok",
        ];
        // Each case's bytes, and how many times they are counted over (a short buffer stays
        // in the processor's cache: the loop alone, without the memory's speed).
        let cases = [
            ("random bytes", noise(SIZE, 42, 0), 1),
            ("ASCII text", text_of(&english, SIZE), 1),
            ("mixed UTF-8 text", text_of(&mixed, SIZE), 1),
            (
                "random bytes, 256 KiB in cache",
                noise(256 << 10, 42, 0),
                256,
            ),
        ];
        let mb = SIZE as f64 / 1e6;
        println!(
            "| content (64 MiB, 1 MiB pieces) | before MB/s | table MB/s | now MB/s | now/before |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, bytes, repeat) in &cases {
            let pieces = || (0..*repeat).flat_map(|_| bytes.chunks(PIECE));
            let (mut t0, mut t1, mut t2) = (Vec::new(), Vec::new(), Vec::new());
            // Alternating rounds, the best of each (the machine is shared and noisy).
            for _ in 0..5 {
                let start = Instant::now();
                let mut old = (0usize, 0u64, 0u64);
                for p in pieces() {
                    before::update(&mut old, black_box(p));
                }
                black_box(old);
                t0.push(start.elapsed().as_secs_f64());
                let start = Instant::now();
                let mut new = TextCount::new();
                for p in pieces() {
                    new.update(black_box(p));
                }
                black_box(&new);
                t1.push(start.elapsed().as_secs_f64());
                let start = Instant::now();
                let mut table = TextCount::new();
                for p in pieces() {
                    table.update_table(black_box(p));
                }
                black_box(&table);
                t2.push(start.elapsed().as_secs_f64());
                assert_eq!((old.1, old.2), (new.words, new.chars), "{name}");
                assert_eq!(table.finish(), new.finish(), "{name}");
            }
            let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let (r0, r1, r2) = (mb / best(&t0), mb / best(&t1), mb / best(&t2));
            println!("| {name} | {r0:.0} | {r2:.0} | {r1:.0} | {:.2} |", r1 / r0);
        }
    }
}
