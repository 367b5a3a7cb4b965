//! The catalog as one file, `catalog.json` (format version 1: `format_version`,
//! `next_stream_id`, `streams`), replaced atomically after every change: temporary
//! file, fsync, rename, fsync of the directory. One node.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CatalogError, CatalogState, Conflict, StreamRecord};

/// Version of the `catalog.json` format.
const CATALOG_FORMAT_VERSION: u32 = 1;
const CATALOG_FILE: &str = "catalog.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct CatalogFile {
    format_version: u32,
    next_stream_id: u64,
    streams: Vec<StreamRecord>,
}

pub(super) fn exists(dir: &Path) -> bool {
    dir.join(CATALOG_FILE).exists()
}

/// Reads `catalog.json`, or an empty catalog when there is none.
pub(super) fn load(dir: &Path) -> Result<CatalogState, CatalogError> {
    let path = dir.join(CATALOG_FILE);
    let file = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<CatalogFile>(&bytes).map_err(|e| CatalogError::Format {
            path: path.clone(),
            reason: format!(
                "{e}. Sluice keeps each stream's definition beside its log: move the damaged file aside and start again to rebuild the catalog from them"
            ),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile { next_stream_id: 1, ..Default::default() },
        Err(source) => return Err(CatalogError::Io { path, source }),
    };
    if file.format_version > CATALOG_FORMAT_VERSION {
        return Err(CatalogError::Format {
            path,
            reason: format!("format version {} is newer than this build", file.format_version),
        });
    }
    let streams = file.streams.into_iter().map(|s| ((s.region.clone(), s.name.clone()), s.into())).collect();
    Ok(CatalogState { next_stream_id: file.next_stream_id.max(1), streams })
}

/// Writes the catalog durably. Blocking.
pub(super) fn persist(dir: &Path, state: &CatalogState) -> Result<(), Conflict> {
    let file = CatalogFile {
        format_version: CATALOG_FORMAT_VERSION,
        next_stream_id: state.next_stream_id,
        streams: state.streams.values().map(|s| (**s).clone()).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("the catalog always serialises");
    let path = dir.join(CATALOG_FILE);
    let tmp = dir.join("catalog.json.tmp");
    let io = |source| Conflict::Failed(CatalogError::Io { path: path.clone(), source });
    let mut out = fs::File::create(&tmp).map_err(io)?;
    out.write_all(&bytes).map_err(io)?;
    out.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}
