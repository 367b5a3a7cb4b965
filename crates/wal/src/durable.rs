//! Making file system changes durable: directory syncs, and whole small files
//! replaced atomically (the stream's definition, a new checkpoint file).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Fsyncs a directory so that creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `dir/name` with `bytes` atomically and durably: written to
/// `name.tmp`, fsynced, renamed over `name`, then the directory is fsynced (which is
/// what makes the rename itself survive a power loss). A failure removes the
/// temporary file; recovery removes any `.tmp` a crash leaves.
pub(crate) fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).at(&tmp);
    }
    let path = dir.join(name);
    fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)
}
