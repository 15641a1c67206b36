//! The same counts 64 bytes at a time with AVX-512 (BW and VBMI), where the processor has it.
//!
//! Lossy UTF-8 decoding looks back at most three bytes: a byte starts a character (or a
//! replacement character) unless it is a continuation byte that the bytes before it expect.
//! So each byte's part is known from the bytes just before it, for 64 bytes at once, as one
//! bit per byte of a `u64`:
//!
//! - `v1`: a continuation byte that the byte before it accepts as a lead's first (the lead's
//!   class and the classes a continuation satisfies are 64-entry table lookups, indexed by the
//!   byte's low six bits, `vpermb`);
//! - `v2`, `v3`: a second or third continuation of a three- or four-byte lead whose first
//!   continuation was accepted;
//! - every other byte starts a character, so characters = bytes that start one.
//!
//! Words: a word starts at each character that is not whitespace and follows whitespace (or
//! the start). A multi-byte whitespace character is only known at its last byte, so this is
//! counted as (characters after whitespace) minus (whitespace characters after whitespace),
//! each known no later than the character's last byte. `space_end` marks the last byte of
//! every whitespace character: an ASCII one, or one of the nineteen multi-byte ones, which
//! always decode as exactly themselves (found as a lead, a second byte and a third byte whose
//! table classes meet).
//!
//! [`count`] runs over a stretch that starts between characters and ends with an ASCII byte,
//! so no character crosses either end and the decoder's state after it is known.

use std::arch::x86_64::*;

/// Bits of a lead's class: which first continuations it accepts.
const NORMAL: u8 = 1;
const LEAD_E0: u8 = 2;
const LEAD_ED: u8 = 4;
const LEAD_F0: u8 = 8;
const LEAD_F4: u8 = 16;

/// The class of byte `b` as a lead (0 if it is none).
pub(super) const fn lead_bits(b: u8) -> u8 {
    match b {
        0xC2..=0xDF | 0xE1..=0xEC | 0xEE | 0xEF | 0xF1..=0xF3 => NORMAL,
        0xE0 => LEAD_E0,
        0xED => LEAD_ED,
        0xF0 => LEAD_F0,
        0xF4 => LEAD_F4,
        _ => 0,
    }
}

/// The lead classes that accept continuation byte `c` as their first.
pub(super) const fn accepts(c: u8) -> u8 {
    let mut bits = 0;
    if matches!(c, 0x80..=0xBF) {
        bits |= NORMAL;
    }
    if matches!(c, 0xA0..=0xBF) {
        bits |= LEAD_E0;
    }
    if matches!(c, 0x80..=0x9F) {
        bits |= LEAD_ED;
    }
    if matches!(c, 0x90..=0xBF) {
        bits |= LEAD_F0;
    }
    if matches!(c, 0x80..=0x8F) {
        bits |= LEAD_F4;
    }
    bits
}

/// Bits of the multi-byte whitespace characters, one for each (lead, second byte, third
/// bytes): C2 85, C2 A0, E1 9A 80, E2 80 80..=8A, E2 80 A8|A9|AF, E2 81 9F, E3 80 80.
const SP_C285: u8 = 1;
const SP_C2A0: u8 = 2;
const SP_E19A: u8 = 4;
const SP_E280_LOW: u8 = 8;
const SP_E280_HIGH: u8 = 16;
const SP_E281: u8 = 32;
const SP_E380: u8 = 64;
/// The two-byte ones.
const SP_TWO: u8 = SP_C285 | SP_C2A0;

/// The whitespace characters lead byte `b` may start.
pub(super) const fn space_lead(b: u8) -> u8 {
    match b {
        0xC2 => SP_C285 | SP_C2A0,
        0xE1 => SP_E19A,
        0xE2 => SP_E280_LOW | SP_E280_HIGH | SP_E281,
        0xE3 => SP_E380,
        _ => 0,
    }
}

/// The whitespace characters whose second byte `b` may be.
pub(super) const fn space_second(b: u8) -> u8 {
    match b {
        0x85 => SP_C285,
        0xA0 => SP_C2A0,
        0x9A => SP_E19A,
        0x80 => SP_E280_LOW | SP_E280_HIGH | SP_E380,
        0x81 => SP_E281,
        _ => 0,
    }
}

/// The three-byte whitespace characters whose third byte `b` may be.
pub(super) const fn space_third(b: u8) -> u8 {
    match b {
        0x80 => SP_E19A | SP_E280_LOW | SP_E380,
        0x81..=0x8A => SP_E280_LOW,
        0xA8 | 0xA9 | 0xAF => SP_E280_HIGH,
        0x9F => SP_E281,
        _ => 0,
    }
}

/// Which class a [`table`] gives.
#[derive(Clone, Copy)]
enum Class {
    Lead,
    Accepts,
    SpaceLead,
    SpaceSecond,
    SpaceThird,
}

/// A table for `vpermb` over bytes from `base`: entry `i` is the class of byte `base + i`.
const fn table(base: u8, class: Class) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let b = base + i as u8;
        t[i] = match class {
            Class::Lead => lead_bits(b),
            Class::Accepts => accepts(b),
            Class::SpaceLead => space_lead(b),
            Class::SpaceSecond => space_second(b),
            Class::SpaceThird => space_third(b),
        };
        i += 1;
    }
    t
}

/// Entry `j` is `63 + j`: with `vpermi2b` over (the block before, this block), each byte's
/// predecessor.
const fn before_index() -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut j = 0;
    while j < 64 {
        t[j] = 63 + j as u8;
        j += 1;
    }
    t
}

/// `vpshufb` table of ASCII whitespace by low nibble (per 128-bit lane): the one whitespace
/// byte with that low nibble, or 0xFF, which no ASCII byte equals.
const fn ascii_space_table() -> [u8; 64] {
    let mut t = [0xFFu8; 64];
    let mut lane = 0;
    while lane < 4 {
        t[16 * lane] = b' ';
        let mut b = b'\t';
        while b <= b'\r' {
            t[16 * lane + b as usize] = b;
            b += 1;
        }
        lane += 1;
    }
    t
}

/// The tables of [`count`], as stored.
pub(super) struct Tables {
    lead: [u8; 64],
    accept: [u8; 64],
    space_lead: [u8; 64],
    space_second: [u8; 64],
    space_third: [u8; 64],
    before: [u8; 64],
    ascii_space: [u8; 64],
}

pub(super) static TABLES: Tables = Tables {
    lead: table(0xC0, Class::Lead),
    accept: table(0x80, Class::Accepts),
    space_lead: table(0xC0, Class::SpaceLead),
    space_second: table(0x80, Class::SpaceSecond),
    space_third: table(0x80, Class::SpaceThird),
    before: before_index(),
    ascii_space: ascii_space_table(),
};

/// 64 bytes as one vector.
#[target_feature(enable = "avx512f")]
fn load(bytes: &[u8; 64]) -> __m512i {
    // SAFETY: an unaligned load of 64 bytes from a reference to 64 bytes.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

/// How far ahead of the block being counted its bytes are fetched into the cache.
const PREFETCH_BYTES: usize = 1024;

/// `m` moved `s` bytes later, the bytes before it from `prev` (the block before).
#[inline(always)]
fn later(m: u64, prev: u64, s: u32) -> u64 {
    (m << s) | (prev >> (64 - s))
}

/// Counts the stretch `bytes`, which starts between characters (inside a word when
/// `in_word`) and ends with an ASCII byte: returns its characters and the words that start in
/// it.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,popcnt")]
pub(super) fn count(bytes: &[u8], in_word: bool) -> (u64, u64) {
    let t = &TABLES;
    let (lead_t, accept_t) = (load(&t.lead), load(&t.accept));
    let (sp_lead_t, sp_second_t) = (load(&t.space_lead), load(&t.space_second));
    let (sp_third_t, before_i) = (load(&t.space_third), load(&t.before));
    let ascii_space_t = load(&t.ascii_space);
    let sp_two = _mm512_set1_epi8(SP_TWO as i8);
    let ge = |v, b: u8| _mm512_cmpge_epu8_mask(v, _mm512_set1_epi8(b as i8));

    // What the block before left, as if the stretch followed ASCII: a space unless
    // `in_word`.
    let (mut p_lead, mut p_sp_lead, mut p_pairs) = (
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
        _mm512_setzero_si512(),
    );
    let (mut p_l34, mut p_v1_34, mut p_l4, mut p_v2_4) = (0u64, 0u64, 0u64, 0u64);
    let mut p_space_end = if in_word { 0 } else { !0u64 };
    let (mut chars, mut after_space, mut space_after_space) = (0u64, 0u64, 0u64);

    let len = bytes.len();
    let mut base = 0;
    while base < len {
        // The last block may be partial: it is completed with ASCII, which no byte before it
        // looks at, and those bytes are not counted.
        let mut tail = [b'x'; 64];
        let (block, valid) = match bytes[base..].first_chunk::<64>() {
            Some(b) => (b, !0u64),
            None => {
                tail[..len - base].copy_from_slice(&bytes[base..]);
                (&tail, (1u64 << (len - base)) - 1)
            }
        };
        // Where memory is read one line at a time (no hardware prefetch, as in some virtual
        // machines), the loop would wait for each: the lines ahead are asked for now.
        _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(base + PREFETCH_BYTES).cast());
        let v = load(block);
        let high = _mm512_movepi8_mask(v);
        let lead_bytes = ge(v, 0xC0);
        let cont = high & !lead_bytes;
        let lead = _mm512_maskz_permutexvar_epi8(lead_bytes, v, lead_t);
        let lead_before = _mm512_permutex2var_epi8(p_lead, before_i, lead);
        let accepted = _mm512_permutexvar_epi8(v, accept_t);
        let v1 = _mm512_mask_test_epi8_mask(cont, lead_before, accepted);
        let l34 = ge(v, 0xE0);
        let l4 = ge(v, 0xF0);

        let v1_34 = v1 & later(l34, p_l34, 1);
        let v2 = cont & later(v1_34, p_v1_34, 1);
        let v2_4 = v2 & later(l4, p_l4, 2);
        let v3 = cont & later(v2_4, p_v2_4, 1);
        let starts = !(v1 | v2 | v3) & valid;
        chars += u64::from(starts.count_ones());

        let ascii_space = _mm512_cmpeq_epi8_mask(_mm512_shuffle_epi8(ascii_space_t, v), v);
        let sp_lead = _mm512_maskz_permutexvar_epi8(lead_bytes, v, sp_lead_t);
        let sp_lead_before = _mm512_permutex2var_epi8(p_sp_lead, before_i, sp_lead);
        let second = _mm512_maskz_permutexvar_epi8(cont, v, sp_second_t);
        let pairs = _mm512_and_si512(sp_lead_before, second);
        let pairs_before = _mm512_permutex2var_epi8(p_pairs, before_i, pairs);
        let third = _mm512_maskz_permutexvar_epi8(cont, v, sp_third_t);
        let end2 = _mm512_test_epi8_mask(pairs, sp_two);
        let end3 = _mm512_test_epi8_mask(pairs_before, third);

        let space_end = ascii_space | end2 | end3;
        let before = |s| later(space_end, p_space_end, s);
        after_space += u64::from((starts & before(1)).count_ones());
        let again = (ascii_space & before(1)) | (end2 & before(2)) | (end3 & before(3));
        space_after_space += u64::from((again & valid).count_ones());

        (p_lead, p_sp_lead, p_pairs) = (lead, sp_lead, pairs);
        (p_l34, p_v1_34, p_l4, p_v2_4) = (l34, v1_34, l4, v2_4);
        p_space_end = space_end;
        base += 64;
    }
    (chars, after_space - space_after_space)
}
