//! Segment files: the header codec, creation (temp file, preallocate, fsync, rename,
//! fsync the directory), the recovery scan, and sequential frame reads. The format
//! itself is described in the crate documentation.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::frame::{self, Decoded, FRAME_ALIGN_BYTES};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SLUICWAL";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Fixed header bytes before the variable key fields.
const HEADER_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8 + 2 + 2;

/// The decoded header of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) stream_id: u64,
    pub(crate) base_seq: u64,
    pub(crate) created_ms: u64,
    /// Which key-encryption key wrapped `wrapped_key`; `None` when not encrypted.
    pub(crate) key_ref: Option<String>,
    pub(crate) wrapped_key: Vec<u8>,
}

pub(crate) fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// Parses `00000000000000000001.seg` back into its base sequence number.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

pub(crate) fn encode_header(header: &SegmentHeader) -> Vec<u8> {
    let key_ref = header.key_ref.as_deref().unwrap_or("").as_bytes();
    let unpadded = HEADER_FIXED_BYTES + key_ref.len() + header.wrapped_key.len() + 4;
    let header_len = frame::align(unpadded);
    let mut out = Vec::with_capacity(header_len);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    out.extend_from_slice(&header.stream_id.to_le_bytes());
    out.extend_from_slice(&header.base_seq.to_le_bytes());
    out.extend_from_slice(&header.created_ms.to_le_bytes());
    out.extend_from_slice(&(key_ref.len() as u16).to_le_bytes());
    out.extend_from_slice(&(header.wrapped_key.len() as u16).to_le_bytes());
    out.extend_from_slice(key_ref);
    out.extend_from_slice(&header.wrapped_key);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(header_len, 0);
    out
}

/// Decodes a header; returns it with the offset of the first frame.
pub(crate) fn decode_header(buf: &[u8], path: &Path) -> Result<(SegmentHeader, usize)> {
    let corrupt = |reason: &str| Error::Corrupt { path: path.to_path_buf(), reason: reason.to_string() };
    if buf.len() < HEADER_FIXED_BYTES + 4 || &buf[..8] != SEGMENT_MAGIC {
        return Err(corrupt("missing segment magic"));
    }
    let u16_at = |i: usize| u16::from_le_bytes([buf[i], buf[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { path: path.to_path_buf(), version });
    }
    let header_len = u32_at(12) as usize;
    let key_ref_len = u16_at(40);
    let wrapped_len = u16_at(42);
    let crc_at = HEADER_FIXED_BYTES + key_ref_len + wrapped_len;
    if crc_at + 4 > buf.len() || header_len < crc_at + 4 || !header_len.is_multiple_of(FRAME_ALIGN_BYTES) {
        return Err(corrupt("header length out of bounds"));
    }
    if crc32c::crc32c(&buf[..crc_at]) != u32_at(crc_at) {
        return Err(corrupt("header checksum mismatch"));
    }
    let key_ref = &buf[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + key_ref_len];
    let key_ref = match key_ref_len {
        0 => None,
        _ => Some(String::from_utf8(key_ref.to_vec()).map_err(|_| corrupt("key reference is not UTF-8"))?),
    };
    let header = SegmentHeader {
        stream_id: u64_at(16),
        base_seq: u64_at(24),
        created_ms: u64_at(32),
        key_ref,
        wrapped_key: buf[HEADER_FIXED_BYTES + key_ref_len..crc_at].to_vec(),
    };
    Ok((header, header_len))
}

/// Creates a segment durably: the header is written to a temporary file that is
/// preallocated and fsynced, renamed into place, and the directory is fsynced, so a
/// segment under its final name always has a valid header. On a nearly full disk
/// the preallocation is skipped (the file then grows by what each write needs);
/// any failure removes the temporary file.
pub(crate) fn create(dir: &Path, header: &SegmentHeader, preallocate_bytes: u64) -> Result<(File, PathBuf, u64)> {
    let path = dir.join(segment_file_name(header.base_seq));
    let tmp = path.with_extension("seg.tmp");
    let bytes = encode_header(header);
    let created = (|| {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).at(&tmp)?;
        file.write_all_at(&bytes, 0).at(&tmp)?;
        let allocated = match preallocate(&file, &tmp, bytes.len() as u64, preallocate_bytes) {
            Err(e) if e.is_no_space() => bytes.len() as u64,
            other => other?,
        };
        file.sync_all().at(&tmp)?;
        Ok((file, allocated))
    })();
    let (file, allocated) = match created {
        Ok(created) => created,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path).at(&path)?;
    durable::sync_dir(dir)?;
    Ok((file, path, allocated))
}

/// Reserves space up to `offset + step` with `fallocate`; returns the new size.
pub(crate) fn preallocate(file: &File, path: &Path, offset: u64, step: u64) -> Result<u64> {
    let target = offset + step;
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, target)
        .map_err(std::io::Error::from)
        .at(path)?;
    Ok(target)
}

/// A byte range recovery cut out of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRange {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// What recovery found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) header: SegmentHeader,
    pub(crate) header_len: u64,
    /// Sequence of the first valid frame, or `None` when the segment has no frames.
    pub(crate) first_seq: Option<u64>,
    /// Sequence of the last valid frame, or `None` when the segment has no frames.
    pub(crate) last_seq: Option<u64>,
    /// Consecutive valid frames whose sequence numbers are not consecutive (the
    /// frames between them were in a damaged region): `(before, after)`.
    pub(crate) jumps: Vec<(u64, u64)>,
    pub(crate) n_records: u64,
    /// Offset just past the last valid frame.
    pub(crate) valid_end: u64,
    /// Damaged regions followed by valid frames (mid-log corruption).
    pub(crate) bad_ranges: Vec<BadRange>,
    /// Non-zero bytes after the last valid frame with no valid frame after them.
    pub(crate) garbage_tail: Option<BadRange>,
}

/// Scans a whole segment held in `data`. `prev_seq` is the last sequence number of
/// the segments before it; frames must go above it.
pub(crate) fn scan(data: &[u8], path: &Path, prev_seq: u64, payload_bytes_max: usize) -> Result<Scan> {
    let (header, header_len) = decode_header(data, path)?;
    let mut scan = Scan {
        header,
        header_len: header_len as u64,
        first_seq: None,
        last_seq: None,
        jumps: Vec::new(),
        n_records: 0,
        valid_end: header_len as u64,
        bad_ranges: Vec::new(),
        garbage_tail: None,
    };
    let mut last = prev_seq;
    let mut offset = header_len;
    while offset < data.len() {
        match frame::decode(&data[offset..], payload_bytes_max) {
            Decoded::Frame { header, next, .. } if header.seq > last => {
                match scan.last_seq {
                    Some(before) if header.seq > before + 1 => scan.jumps.push((before, header.seq)),
                    Some(_) => {}
                    None => scan.first_seq = Some(header.seq),
                }
                last = header.seq;
                scan.last_seq = Some(last);
                scan.n_records += 1;
                offset += next;
                // A cut inside the final frame's padding leaves it whole but unpadded.
                scan.valid_end = offset.min(data.len()) as u64;
            }
            Decoded::Zeros if data[offset..].iter().all(|b| *b == 0) => break, // Unused preallocation.
            decoded => match find_next_frame(data, offset + FRAME_ALIGN_BYTES, last, payload_bytes_max) {
                Some(resume) => {
                    scan.bad_ranges.push(BadRange { start: offset as u64, end: resume as u64 });
                    offset = resume;
                }
                None => {
                    let rest = &data[offset..];
                    if decoded != Decoded::Zeros || !rest.iter().all(|b| *b == 0) {
                        scan.garbage_tail = Some(BadRange { start: offset as u64, end: data.len() as u64 });
                    }
                    break;
                }
            },
        }
    }
    Ok(scan)
}

/// Finds the next aligned offset at or after `from` holding a valid frame whose
/// sequence number is above `last`.
fn find_next_frame(data: &[u8], from: usize, last: u64, payload_bytes_max: usize) -> Option<usize> {
    let mut offset = from.next_multiple_of(FRAME_ALIGN_BYTES);
    while offset + frame::FRAME_HEADER_BYTES <= data.len() {
        if let Decoded::Frame { header, .. } = frame::decode(&data[offset..], payload_bytes_max) {
            if header.seq > last {
                return Some(offset);
            }
        }
        offset += FRAME_ALIGN_BYTES;
    }
    None
}

/// What a frame visitor wants next.
pub(crate) enum Visit {
    Continue,
    Stop,
}

/// Reads frames from `file` between `offset` and `end`, stepping over `skips`,
/// calling `visit` with each frame's offset, and stopping once `bytes_max` payload
/// bytes were visited. Returns the offset of the first frame not consumed (the one
/// `visit` stopped at, or the next one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_frames(
    file: &File,
    path: &Path,
    mut offset: u64,
    end: u64,
    skips: &[BadRange],
    payload_bytes_max: usize,
    bytes_max: usize,
    mut visit: impl FnMut(u64, frame::FrameHeader, &[u8]) -> Result<Visit>,
) -> Result<u64> {
    const CHUNK_BYTES: usize = 1 << 20;
    let mut buf = Vec::new();
    let mut n_bytes = 0usize;
    while offset < end && n_bytes < bytes_max {
        if let Some(skip) = skips.iter().find(|s| s.start <= offset && offset < s.end) {
            offset = skip.end;
            continue;
        }
        let stop = skips.iter().map(|s| s.start).filter(|s| *s > offset).min().unwrap_or(end).min(end);
        let want = ((stop - offset) as usize).min(CHUNK_BYTES.max(frame::frame_bytes(payload_bytes_max)));
        buf.resize(want, 0);
        file.read_exact_at(&mut buf, offset).at(path)?;
        let mut at = 0usize;
        while at < buf.len() && n_bytes < bytes_max {
            match frame::decode(&buf[at..], payload_bytes_max) {
                Decoded::Frame { header, payload, next } => {
                    if let Visit::Stop = visit(offset + at as u64, header, payload)? {
                        return Ok(offset + at as u64);
                    }
                    n_bytes += payload.len();
                    at += next;
                }
                Decoded::Short if at > 0 => break,
                other => {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        reason: format!("unexpected {other:?} at offset {} inside durable data", offset + at as u64),
                    })
                }
            }
        }
        offset += at as u64;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key_ref: Option<&str>) -> SegmentHeader {
        SegmentHeader {
            stream_id: 9,
            base_seq: 1234,
            created_ms: 1,
            key_ref: key_ref.map(str::to_string),
            wrapped_key: if key_ref.is_some() { vec![7; 60] } else { vec![] },
        }
    }

    #[test]
    fn header_round_trip() {
        for key_ref in [None, Some("arn:aws:kms:us-east-1:000000000000:key/abc")] {
            let bytes = encode_header(&header(key_ref));
            assert_eq!(bytes.len() % 8, 0);
            let (decoded, len) = decode_header(&bytes, Path::new("x")).unwrap();
            assert_eq!(decoded, header(key_ref));
            assert_eq!(len, bytes.len());
        }
    }

    #[test]
    fn header_damage_is_detected() {
        let h = header(Some("k"));
        let bytes = encode_header(&h);
        // Every byte up to and including the CRC is covered; the padding is not.
        let covered = HEADER_FIXED_BYTES + 1 + h.wrapped_key.len() + 4;
        for i in 0..covered {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(decode_header(&damaged, Path::new("x")).is_err(), "byte {i}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

        /// Recovery reads whatever is on disk: arbitrary bytes after a valid header,
        /// possibly with real frames mixed in, must never panic, and every frame it
        /// accepts must be one that was written.
        #[test]
        fn scanning_arbitrary_bytes_never_panics(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            n_frames in 0usize..5,
            cut in 0usize..4096,
        ) {
            let mut data = encode_header(&header(None));
            let mut written = Vec::new();
            for i in 0..n_frames {
                let payload = vec![i as u8; i * 13];
                crate::frame::encode(&mut data, crate::frame::FrameHeader { len: payload.len() as u32, seq: 1234 + i as u64, arrival_ms: 1, flags: 0 }, &payload);
                written.push(1234 + i as u64);
            }
            let start = data.len();
            data.extend_from_slice(&garbage);
            data.truncate(start + cut.min(garbage.len()));
            let scan = scan(&data, Path::new("x"), 1233, 1 << 20).unwrap();
            // The intact frames before the garbage are always recovered.
            proptest::prop_assert!(scan.n_records as usize >= n_frames);
            proptest::prop_assert_eq!(scan.last_seq.is_some(), scan.n_records > 0);
            if n_frames > 0 {
                proptest::prop_assert!(scan.last_seq.unwrap() >= *written.last().unwrap());
            }
            proptest::prop_assert!(scan.valid_end as usize <= data.len());
        }
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(52001)), Some(52001));
        assert_eq!(parse_segment_file_name("00000000000000000001.seg.tmp"), None);
        assert_eq!(parse_segment_file_name("checkpoint"), None);
    }
}
