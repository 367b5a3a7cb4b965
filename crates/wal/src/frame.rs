//! Frame codec: one record as it sits in a segment. Encoding is used by the group
//! commit writer; decoding by readers and recovery. Decoding checks everything and
//! never panics on arbitrary bytes.

/// Bytes of a frame header before the payload.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Frames start at multiples of this, which makes resynchronising after a damaged
/// region an 8-byte stride instead of a byte-by-byte scan.
pub(crate) const FRAME_ALIGN_BYTES: usize = 8;

/// Flag bit: the payload is AES-256-GCM ciphertext followed by its tag.
pub(crate) const FLAG_ENCRYPTED: u32 = 1;

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) len: u32,
    pub(crate) seq: u64,
    pub(crate) arrival_ms: u64,
    pub(crate) flags: u32,
}

impl FrameHeader {
    /// The associated data authenticated with an encrypted payload.
    pub(crate) fn aad(&self) -> [u8; 20] {
        let mut aad = [0u8; 20];
        aad[0..8].copy_from_slice(&self.seq.to_le_bytes());
        aad[8..16].copy_from_slice(&self.arrival_ms.to_le_bytes());
        aad[16..20].copy_from_slice(&self.flags.to_le_bytes());
        aad
    }
}

/// Rounds `n` up to the frame alignment.
pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

/// Total bytes a frame with a `payload_len`-byte payload occupies, padding included.
pub(crate) fn frame_bytes(payload_len: usize) -> usize {
    align(FRAME_HEADER_BYTES + payload_len)
}

/// Appends one frame (header, payload, padding) to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, header: FrameHeader, payload: &[u8]) {
    encode_with(out, header, |out| out.extend_from_slice(payload));
}

/// Appends one frame whose payload `write_payload` appends to `out` in place (so an
/// encrypted payload is sealed straight into the write buffer, with no copy).
/// `write_payload` must append exactly `header.len` bytes.
pub(crate) fn encode_with(out: &mut Vec<u8>, header: FrameHeader, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]); // CRC, filled in below.
    out.extend_from_slice(&header.len.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.arrival_ms.to_le_bytes());
    out.extend_from_slice(&header.flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    write_payload(out);
    assert_eq!(out.len() - start - FRAME_HEADER_BYTES, header.len as usize, "payload length must match the header");
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + frame_bytes(header.len as usize), 0);
}

/// What is at a given offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A valid frame; `next` is the offset (relative to the input) after it.
    Frame { header: FrameHeader, payload: &'a [u8], next: usize },
    /// An all-zero header: the end of written data in a preallocated segment.
    Zeros,
    /// Fewer bytes than a header or the declared payload.
    Short,
    /// Bytes that are not a valid frame.
    Invalid,
}

/// Decodes the frame at the start of `buf`. `payload_bytes_max` bounds `len` so a
/// damaged length field cannot make the caller read far past the frame.
pub(crate) fn decode(buf: &[u8], payload_bytes_max: usize) -> Decoded<'_> {
    if buf.len() < FRAME_HEADER_BYTES {
        return if buf.iter().all(|b| *b == 0) { Decoded::Zeros } else { Decoded::Short };
    }
    let head = &buf[..FRAME_HEADER_BYTES];
    if head.iter().all(|b| *b == 0) {
        return Decoded::Zeros;
    }
    let crc = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let reserved = u32::from_le_bytes(head[28..32].try_into().expect("4 bytes"));
    if len as usize > payload_bytes_max || reserved != 0 {
        return Decoded::Invalid;
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < end {
        return Decoded::Short;
    }
    if crc32c::crc32c(&buf[4..end]) != crc {
        return Decoded::Invalid;
    }
    let header = FrameHeader {
        len,
        seq: u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")),
        arrival_ms: u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")),
        flags: u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")),
    };
    Decoded::Frame { header, payload: &buf[FRAME_HEADER_BYTES..end], next: align(end) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, len: usize) -> FrameHeader {
        FrameHeader { len: len as u32, seq, arrival_ms: 1_700_000_000_000, flags: 0 }
    }

    #[test]
    fn round_trip_and_alignment() {
        for len in [0usize, 1, 7, 8, 9, 100, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode(&mut out, header(42, len), &payload);
            assert_eq!(out.len() % FRAME_ALIGN_BYTES, 0);
            assert_eq!(out.len(), frame_bytes(len));
            match decode(&out, 1 << 20) {
                Decoded::Frame { header: h, payload: p, next } => {
                    assert_eq!(h, header(42, len));
                    assert_eq!(p, &payload[..]);
                    assert_eq!(next, out.len());
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, header(7, 20), b"twenty bytes of data");
        let frame_len = FRAME_HEADER_BYTES + 20;
        for bit in 0..frame_len * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(!matches!(decode(&damaged, 1 << 20), Decoded::Frame { .. }), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_short_and_zeros_are_zeros() {
        let mut out = Vec::new();
        encode(&mut out, header(1, 64), &[0xAB; 64]);
        for cut in 1..FRAME_HEADER_BYTES + 64 {
            assert_eq!(decode(&out[..cut], 1 << 20), Decoded::Short, "cut at {cut}");
        }
        assert_eq!(decode(&[0u8; 64], 1 << 20), Decoded::Zeros);
        assert_eq!(decode(&[], 1 << 20), Decoded::Zeros);
    }

    #[test]
    fn oversized_length_is_invalid_without_reading_past_it() {
        let mut out = Vec::new();
        encode(&mut out, header(1, 64), &[1; 64]);
        assert_eq!(decode(&out, 63), Decoded::Invalid);
    }
}
