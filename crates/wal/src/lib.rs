//! `sluice-wal`: the durable write-ahead log every accepted record lands in before
//! Sluice answers 200. It sits between the API (which appends) and delivery (which
//! reads from a cursor and acknowledges), and knows nothing of HTTP, JSON or AWS.
//!
//! # Model
//!
//! The log holds one independent *stream log* per delivery stream, named by a `u64`
//! [`StreamId`]. Each stream log is a sequence of records numbered by a dense,
//! increasing `u64` sequence number starting at 1. Three operations make up the
//! whole interface a replicated backend would also implement:
//!
//! * [`Wal::append`]: write records, wait until they are on stable storage, get
//!   back their sequence range. Appends from many callers are group-committed: all
//!   requests queued while a sync is running share the next `fdatasync`, and each
//!   caller is answered only after the sync that covers its records.
//! * [`Wal::reader`] / [`Reader::read`]: read durable records from a cursor.
//! * [`Wal::acknowledge`]: durably record that everything up to a sequence number has
//!   been delivered, so whole segments below it can be deleted. [`Wal::commit`] does
//!   the same and, in the same atomic write, replaces the consumer's state: an opaque
//!   blob in which the delivery engine describes the batches it is about to upload,
//!   so that after a crash it rebuilds the same batches.
//!
//! Each stream log also keeps its stream's *definition*, an opaque blob the
//! application writes at creation and on every change ([`Wal::define_stream`]), so a
//! log can be attributed to its stream without the application's catalog.
//!
//! # On-disk format (version 1)
//!
//! ```text
//! <wal dir>/
//!   <stream id as 16 hex digits>/
//!     meta                       the stream's definition (see `meta.rs`)
//!     checkpoint                 acknowledged sequence number (see below)
//!     00000000000000000001.seg   segment whose first record has sequence 1
//!     00000000000000052001.seg   ...
//!   quarantine/                  byte ranges cut out of the log by recovery
//!   set-aside/                   whole stream logs moved out of the way (`Wal::set_aside`)
//! ```
//!
//! All integers are little-endian. Every file starts with an 8-byte magic and a
//! `u32` format version, so a future format can be recognised and migrated.
//!
//! **Segment file.** A header, then frames, each starting at a multiple of 8 bytes:
//!
//! ```text
//! header:
//!   magic        [u8; 8]  "SLUICWAL"
//!   version      u32      1
//!   header_len   u32      bytes before the first frame (a multiple of 8)
//!   stream_id    u64
//!   base_seq     u64      sequence number of the first frame
//!   created_ms   u64      Unix time in milliseconds
//!   key_ref_len  u16      0 when the segment is not encrypted
//!   wrapped_len  u16
//!   key_ref      [u8; key_ref_len]   which key-encryption key wrapped the data key
//!   wrapped_key  [u8; wrapped_len]   the segment's data key, wrapped
//!   header_crc   u32      CRC32C of every header byte before this field
//!   zero padding up to header_len
//! frame:
//!   crc          u32      CRC32C of the frame from `len` to the end of `payload`
//!   len          u32      payload bytes
//!   seq          u64
//!   arrival_ms   u64      when the record was accepted (Unix ms)
//!   flags        u32      bit 0: payload is AES-256-GCM ciphertext + 16-byte tag
//!   reserved     u32      0
//!   payload      [u8; len]
//!   zero padding up to a multiple of 8
//! ```
//!
//! A record never spans segments. A segment is grown in `preallocate_bytes` steps
//! with `fallocate`, so its tail after a crash is usually zeros. A new segment is
//! started when the next frame would not fit in `segment_bytes_max`, when the
//! stream's encryption key changes, and on the first append after the log is opened
//! (so recovery never appends behind a repaired tail, and an encrypted segment's data
//! key never sees the same sequence number twice). The directory is fsynced after a
//! segment is created or deleted.
//!
//! **Encryption.** An encrypted segment has its own random 256-bit data key, stored
//! only wrapped by a key-encryption key that the embedding application supplies
//! through [`KeyWrapper`]. Each payload is sealed with AES-256-GCM; the nonce is the
//! record's sequence number (unique under one data key, see above) and the
//! associated data is the frame's `seq`, `arrival_ms` and `flags`, so frames cannot
//! be swapped undetected.
//!
//! **Checkpoint file** (version 3). Two slots of `slot_bytes` (a multiple of 4096),
//! each `magic "SLUICECP" | version u32 = 3 | slot_bytes u32 | generation u64 |
//! acked_seq u64 | state_len u32 | state [u8; state_len] | crc u32` (CRC32C of the
//! slot's preceding bytes). A commit overwrites the older slot in place and
//! `fdatasync`s: it allocates nothing, so it works on a full disk, and a torn write
//! leaves the other slot's checkpoint. The newest valid slot is read. Versions 1
//! and 2 (one checkpoint per file, replaced by rename) are still read.
//!
//! **Definition file** `meta`: `magic "SLUICEMD" | version u32 = 1 | len u32 |
//! blob [u8; len] | crc u32`, replaced atomically (temporary file, fsync, rename,
//! directory fsync).
//!
//! **Accounting.** Back-pressure counts the frames of records above the
//! acknowledged position only ([`Wal::undelivered_bytes`]). Segments whose records
//! are all acknowledged are deleted by the commit that acknowledges them; the
//! segment being appended to is deleted by its writer (a *release*) once everything
//! in it is acknowledged, so a fully delivered stream holds nothing on disk.
//!
//! **Descriptors.** A segment is open while it is written or read. Between uses a
//! file stays open only with a permit from a log-wide budget
//! ([`WalOptions::files_open_max`]): a busy writer keeps its segment open until it
//! has been idle for a second, a reader while its reads keep finding records. An
//! idle stream holds no file descriptor, and the log holds at most the budget plus
//! the files in use at one moment, whatever the number of streams.
//!
//! # Recovery
//!
//! On open, every segment is scanned. A frame is valid when its length is within
//! bounds, its CRC matches and its sequence number is above the previous one.
//!
//! * The first invalid or zero frame in the **last** segment, with no valid frame
//!   anywhere after it, is a torn or zero-filled tail: the file is truncated there.
//!   Only an unsynced (never acknowledged) write can leave such a tail.
//! * An invalid region **followed by** valid frames, in any segment, is mid-log
//!   corruption: its bytes are copied to `quarantine/`, it is reported in the
//!   [`RecoveryReport`] and logged, and the frames after it are kept. Nothing after
//!   a damaged frame is ever dropped with it.
//! * Sequence numbers are dense, so a jump above the acknowledged position (a
//!   segment file deleted, the first one above the checkpoint missing, frames lost
//!   in a damaged region) is reported as a [`Gap`] and logged at ERROR.
//! * Segments whose records are all acknowledged are deleted without being read.
//! * A stream whose log cannot be recovered (an unreadable checkpoint or definition,
//!   a file that cannot be read, an unknown format version) is left as it is on
//!   disk and reported in [`RecoveryReport::failed`]; it takes no appends or reads
//!   ([`Error::StreamUnavailable`]), and the other streams are served. A data key
//!   that cannot be unwrapped fails the whole open instead: the key is missing or
//!   wrong, which only the operator can fix.
//!
//! # Failure policy
//!
//! An `fdatasync` error is fatal: the log is poisoned, every later append fails
//! with [`Error::Poisoned`], and [`Wal::fatal`] fires so the process can exit. The
//! sync is never retried, because after a failed fsync the page cache may already
//! have dropped the dirty pages (the "fsyncgate" lesson). A failed write is not
//! fatal: the segment is cut back to its last synced byte and sealed, and the
//! append fails with [`Error::NoSpace`] (ENOSPC, EDQUOT) or [`Error::Io`]. On a
//! nearly full disk preallocation shrinks to what a write needs.

mod checkpoint;
mod crypto;
mod durable;
mod error;
mod frame;
mod meta;
mod segment;
mod stream_log;
mod wal;

pub use crypto::{KeyError, KeyWrapper, NoKeys, DATA_KEY_BYTES};
pub use error::{Error, Result};
pub use frame::FRAME_HEADER_BYTES;
pub use stream_log::{Appended, Reader, StoredRecord};
pub use wal::{Encryption, FailedStream, Gap, Quarantine, RecoveryReport, StreamId, Wal, WalOptions};

#[cfg(test)]
mod tests;
