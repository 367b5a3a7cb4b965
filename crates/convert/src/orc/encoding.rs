//! ORC's run-length encodings of version 0.11 (the `DIRECT` column encoding): the
//! byte RLE, booleans packed into it, and the integer RLE version 1. The bytes of
//! one stream of one stripe; the stripe writer compresses them.
//!
//! Both RLEs write runs (3 to 130 equal values, or for integers values a fixed
//! step of -128..127 apart) and literal groups (1 to 128 values as they are): a
//! header byte `n - 3` for a run, `-n` for literals.

/// Values in a run, fewest and most.
const RUN_MIN: usize = 3;
const RUN_MAX: usize = 130;
/// Values in a literal group, most.
const LITERALS_MAX: usize = 128;

/// Appends `value` as a base-128 varint, low groups first.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value` zigzag-encoded (0, -1, 1, -2, ... as 0, 1, 2, 3, ...): the
/// varint of a signed integer of any width.
pub(crate) fn put_signed_varint(out: &mut Vec<u8>, value: i128) {
    put_varint(out, ((value << 1) ^ (value >> 127)) as u128);
}

/// The byte RLE (`tinyint` data, and under [`BoolRle`] every boolean stream).
#[derive(Default)]
pub(crate) struct ByteRle {
    out: Vec<u8>,
    pending: Vec<u8>,
    /// `pending` is a run of its first value (else literals).
    run: bool,
    /// How many values at the end of `pending` are equal.
    tail: usize,
}

impl ByteRle {
    pub(crate) fn push(&mut self, value: u8) {
        if self.pending.is_empty() {
            self.pending.push(value);
            self.tail = 1;
        } else if self.run {
            if value == self.pending[0] {
                self.pending.push(value);
                if self.pending.len() == RUN_MAX {
                    self.flush();
                }
            } else {
                self.flush();
                self.pending.push(value);
                self.tail = 1;
            }
        } else {
            self.tail = if self.pending.last() == Some(&value) { self.tail + 1 } else { 1 };
            if self.tail == RUN_MIN {
                // The last two literals and this value start a run.
                self.pending.truncate(self.pending.len() - (RUN_MIN - 1));
                self.flush();
                self.pending.resize(RUN_MIN, value);
                self.run = true;
            } else {
                self.pending.push(value);
                if self.pending.len() == LITERALS_MAX {
                    self.flush();
                }
            }
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            if self.run {
                self.out.push((self.pending.len() - RUN_MIN) as u8);
                self.out.push(self.pending[0]);
            } else {
                self.out.push((self.pending.len() as i8).wrapping_neg() as u8);
                self.out.extend_from_slice(&self.pending);
            }
        }
        self.pending.clear();
        self.run = false;
        self.tail = 0;
    }

    /// Bytes so far, roughly: what a stripe's size is judged by.
    pub(crate) fn len(&self) -> usize {
        self.out.len() + self.pending.len()
    }

    /// The stream's bytes; the encoder starts afresh.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.flush();
        std::mem::take(&mut self.out)
    }
}

/// Booleans, eight to a byte with the first in the most significant bit, then the
/// byte RLE. `PRESENT` streams and `boolean` data.
#[derive(Default)]
pub(crate) struct BoolRle {
    bytes: ByteRle,
    current: u8,
    bits: u8,
    /// Whether a `false` was pushed since the last `finish` (for `PRESENT`: a null).
    any_false: bool,
}

impl BoolRle {
    pub(crate) fn push(&mut self, value: bool) {
        self.current |= (value as u8) << (7 - self.bits);
        self.any_false |= !value;
        self.bits += 1;
        if self.bits == 8 {
            self.bytes.push(self.current);
            (self.current, self.bits) = (0, 0);
        }
    }

    pub(crate) fn any_false(&self) -> bool {
        self.any_false
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The stream's bytes (a last partial byte padded with zero bits).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        if self.bits > 0 {
            self.bytes.push(self.current);
            (self.current, self.bits) = (0, 0);
        }
        self.any_false = false;
        self.bytes.finish()
    }
}

/// The integer RLE version 1, signed (zigzag varints) or unsigned (lengths).
pub(crate) struct IntRle {
    signed: bool,
    out: Vec<u8>,
    pending: Vec<i64>,
    /// `pending` is a run from its first value by `step` (else literals).
    run: bool,
    step: i64,
    /// How many values at the end of the literals are `step` apart.
    tail: usize,
}

impl IntRle {
    pub(crate) fn signed() -> IntRle {
        IntRle::new(true)
    }

    pub(crate) fn unsigned() -> IntRle {
        IntRle::new(false)
    }

    fn new(signed: bool) -> IntRle {
        IntRle { signed, out: Vec::new(), pending: Vec::with_capacity(LITERALS_MAX), run: false, step: 0, tail: 0 }
    }

    /// The step from `from` to `to`, if a run can take it.
    fn step_between(from: i64, to: i64) -> Option<i64> {
        let step = to as i128 - from as i128;
        (-128..=127).contains(&step).then_some(step as i64)
    }

    pub(crate) fn push(&mut self, value: i64) {
        let Some(&last) = self.pending.last() else {
            self.pending.push(value);
            self.tail = 1;
            return;
        };
        if self.run {
            if value as i128 == last as i128 + self.step as i128 {
                self.pending.push(value);
                if self.pending.len() == RUN_MAX {
                    self.flush();
                }
            } else {
                self.flush();
                self.pending.push(value);
                self.tail = 1;
            }
            return;
        }
        match Self::step_between(last, value) {
            Some(step) if self.tail >= 2 && step == self.step => self.tail += 1,
            Some(step) => {
                self.step = step;
                self.tail = 2;
            }
            None => self.tail = 1,
        }
        if self.tail == RUN_MIN {
            // The last two literals and this value start a run.
            let start = self.pending[self.pending.len() - (RUN_MIN - 1)];
            let step = self.step;
            self.pending.truncate(self.pending.len() - (RUN_MIN - 1));
            self.flush();
            self.pending.extend([start, start + step, value]);
            self.step = step;
            self.run = true;
        } else {
            self.pending.push(value);
            if self.pending.len() == LITERALS_MAX {
                self.flush();
            }
        }
    }

    fn put(&mut self, value: i64) {
        if self.signed {
            put_signed_varint(&mut self.out, value as i128);
        } else {
            put_varint(&mut self.out, value as u64 as u128);
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if self.run {
                self.out.push((pending.len() - RUN_MIN) as u8);
                self.out.push(self.step as i8 as u8);
                self.put(pending[0]);
            } else {
                self.out.push((pending.len() as i8).wrapping_neg() as u8);
                for &value in &pending {
                    self.put(value);
                }
            }
            self.pending = pending;
            self.pending.clear();
        }
        self.run = false;
        self.tail = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.out.len() + self.pending.len() * 2
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        self.flush();
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Decoders written from the specification, to check the encoders against.
    fn varint(bytes: &[u8], at: &mut usize) -> u128 {
        let (mut value, mut shift) = (0u128, 0);
        loop {
            let b = bytes[*at];
            *at += 1;
            value |= ((b & 0x7f) as u128) << shift;
            if b < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    fn unzigzag(v: u128) -> i128 {
        (v >> 1) as i128 ^ -((v & 1) as i128)
    }

    fn decode_bytes(bytes: &[u8]) -> Vec<u8> {
        let (mut out, mut at) = (Vec::new(), 0);
        while at < bytes.len() {
            let header = bytes[at] as i8;
            at += 1;
            if header >= 0 {
                out.extend(std::iter::repeat_n(bytes[at], header as usize + 3));
                at += 1;
            } else {
                let n = -(header as isize) as usize;
                out.extend_from_slice(&bytes[at..at + n]);
                at += n;
            }
        }
        out
    }

    fn decode_ints(bytes: &[u8], signed: bool) -> Vec<i64> {
        let (mut out, mut at) = (Vec::new(), 0);
        let read = |at: &mut usize| {
            let v = varint(bytes, at);
            if signed {
                unzigzag(v) as i64
            } else {
                v as u64 as i64
            }
        };
        while at < bytes.len() {
            let header = bytes[at] as i8;
            at += 1;
            if header >= 0 {
                let step = bytes[at] as i8 as i64;
                at += 1;
                let base = read(&mut at);
                out.extend((0..header as i64 + 3).map(|i| base + i * step));
            } else {
                for _ in 0..-(header as i64) {
                    out.push(read(&mut at));
                }
            }
        }
        out
    }

    fn ints(values: &[i64], signed: bool) -> Vec<u8> {
        let mut rle = if signed { IntRle::signed() } else { IntRle::unsigned() };
        values.iter().for_each(|&v| rle.push(v));
        rle.finish()
    }

    #[test]
    fn the_specifications_examples_encode_as_it_shows() {
        // From the ORC specification's byte RLE and integer RLE v1 sections.
        let mut rle = ByteRle::default();
        (0..100).for_each(|_| rle.push(0));
        assert_eq!(rle.finish(), [0x61, 0x00]);
        let mut rle = ByteRle::default();
        [0x44, 0x45].iter().for_each(|&b| rle.push(b));
        assert_eq!(rle.finish(), [0xfe, 0x44, 0x45]);
        assert_eq!(ints(&[7; 100], false), [0x61, 0x00, 0x07]);
        assert_eq!(ints(&(1..=100).rev().collect::<Vec<_>>(), false), [0x61, 0xff, 0x64]);
        assert_eq!(ints(&[2, 3, 6, 7, 11], false), [0xfb, 0x02, 0x03, 0x06, 0x07, 0x0b]);
    }

    #[test]
    fn every_value_comes_back_from_runs_literals_and_extremes() {
        let mut values: Vec<i64> = vec![i64::MIN, i64::MAX, i64::MIN, 0, -1, 1];
        values.extend((0..300).map(|i| i / 7));
        values.extend((0..500).map(|i| (i * 2654435761i64) % 1000 - 500));
        values.extend([5, 5, 5, 9, 9, 9, 9, 9, 2, 4, 6, 8, 10, 127, 254, 381]);
        values.extend((0..200).map(|i| 1_000_000 - i * 128));
        assert_eq!(decode_ints(&ints(&values, true), true), values);
        let lengths: Vec<i64> = values.iter().map(|v| v.unsigned_abs() as i64 & i64::MAX).collect();
        assert_eq!(decode_ints(&ints(&lengths, false), false), lengths);
        let bytes: Vec<u8> = values.iter().map(|v| (*v % 3) as u8).collect();
        let mut rle = ByteRle::default();
        bytes.iter().for_each(|&b| rle.push(b));
        assert_eq!(decode_bytes(&rle.finish()), bytes);
    }

    #[test]
    fn booleans_are_packed_first_bit_highest() {
        let mut rle = BoolRle::default();
        [true, false, true, true, false, false, false, false, true].iter().for_each(|&b| rle.push(b));
        assert!(rle.any_false());
        assert_eq!(decode_bytes(&rle.finish()), [0b1011_0000, 0b1000_0000]);
        assert!(!rle.any_false(), "a finished encoder starts afresh");
    }

    #[test]
    fn decimals_use_unbounded_zigzag_varints() {
        let mut out = Vec::new();
        put_signed_varint(&mut out, -1);
        put_signed_varint(&mut out, i128::MAX / 7);
        let mut at = 0;
        assert_eq!(unzigzag(varint(&out, &mut at)), -1);
        assert_eq!(unzigzag(varint(&out, &mut at)), i128::MAX / 7);
    }
}
