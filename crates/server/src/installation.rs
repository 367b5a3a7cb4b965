//! The installation id: a random UUID made once per data directory and mixed into
//! every batch's uuid (the last part of an object's key). Keys stay deterministic
//! across restarts of one installation (a batch redone after a crash overwrites its
//! own object), while two installations, or one whose data directory was wiped,
//! never name a batch alike: writing to one shared bucket they cannot overwrite
//! each other's objects.
//!
//! Format (version 1), `<data-dir>/installation`: the line `sluice-installation v1`,
//! then the id, hyphenated. Written atomically (temporary file, fsync, rename, fsync
//! of the directory).

use std::fs;
use std::io::Write;
use std::path::Path;

use uuid::Uuid;

use crate::ServerError;

const INSTALLATION_FILE: &str = "installation";
const INSTALLATION_HEADER: &str = "sluice-installation v1";

/// Reads the data directory's installation id, creating it on first start.
pub fn load_or_create(data_dir: &Path) -> Result<Uuid, ServerError> {
    let path = data_dir.join(INSTALLATION_FILE);
    let error = |reason: String| ServerError::Installation { path: path.display().to_string(), reason };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines();
            if lines.next() != Some(INSTALLATION_HEADER) {
                return Err(error(format!(
                    "not a version 1 installation file (expected the line {INSTALLATION_HEADER:?})"
                )));
            }
            let id = lines.next().unwrap_or("").trim();
            Uuid::parse_str(id).map_err(|e| error(format!("{id:?} is not a UUID: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            let tmp = data_dir.join(format!("{INSTALLATION_FILE}.tmp"));
            let written = fs::File::create(&tmp).and_then(|mut file| {
                writeln!(file, "{INSTALLATION_HEADER}\n{}", id.hyphenated())?;
                file.sync_all()
            });
            written
                .and_then(|()| fs::rename(&tmp, &path))
                .and_then(|()| fs::File::open(data_dir)?.sync_all())
                .map_err(|e| error(e.to_string()))?;
            tracing::info!(installation_id = %id, "Created this data directory's installation id.");
            Ok(id)
        }
        Err(e) => Err(error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::load_or_create(dir.path()).unwrap();
        assert_eq!(super::load_or_create(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(super::load_or_create(other.path()).unwrap(), first);
        std::fs::write(dir.path().join("installation"), "something else\n").unwrap();
        assert!(super::load_or_create(dir.path()).is_err(), "a damaged file is refused, not replaced");
    }
}
