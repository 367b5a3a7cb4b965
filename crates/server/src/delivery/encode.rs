//! Object bodies as Firehose writes them: the batch's records concatenated byte for
//! byte (Firehose adds no delimiter), then compressed with the destination's
//! `CompressionFormat`, each readable by the standard tool for it.

use std::io::Write;

/// `CompressionFormat` of an S3 destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `UNCOMPRESSED`: the bytes as they are.
    Uncompressed,
    /// `GZIP`: one gzip member (`gzip -d`).
    Gzip,
    /// `ZIP`: an archive with one entry (`unzip`).
    Zip,
    /// `Snappy`: the Snappy framing format (`python -m snappy -d`, `snzip`).
    Snappy,
    /// `HADOOP_SNAPPY`: Hadoop's block framing around raw Snappy (Hadoop's codec).
    HadoopSnappy,
}

/// Hadoop's `BlockCompressorStream` compresses input in blocks of this many bytes
/// (`io.compression.codec.snappy.buffersize`, 256 KiB by default).
const HADOOP_BLOCK_BYTES: usize = 256 << 10;

impl Compression {
    /// Parses the API's value (note the mixed case of `Snappy`).
    pub fn from_api(value: &str) -> Option<Compression> {
        Some(match value {
            "UNCOMPRESSED" => Compression::Uncompressed,
            "GZIP" => Compression::Gzip,
            "ZIP" => Compression::Zip,
            "Snappy" => Compression::Snappy,
            "HADOOP_SNAPPY" => Compression::HadoopSnappy,
            _ => return None,
        })
    }

    /// The extension Firehose appends when `FileExtension` is not set. HADOOP_SNAPPY
    /// objects also end in `.snappy`, as observed on AWS (some sources say `.hsnappy`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Uncompressed => "",
            Compression::Gzip => ".gz",
            Compression::Zip => ".zip",
            Compression::Snappy | Compression::HadoopSnappy => ".snappy",
        }
    }

    /// Encodes a batch. `entry_name` names the one file inside a ZIP archive (the
    /// object's key without its directory and `.zip`).
    pub fn encode(self, data: Vec<u8>, entry_name: &str) -> Vec<u8> {
        match self {
            Compression::Uncompressed => data,
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&data).expect("writing to memory cannot fail");
                encoder.finish().expect("writing to memory cannot fail")
            }
            Compression::Zip => {
                let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let options =
                    zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
                archive.start_file(entry_name, options).expect("writing to memory cannot fail");
                archive.write_all(&data).expect("writing to memory cannot fail");
                archive.finish().expect("writing to memory cannot fail").into_inner()
            }
            Compression::Snappy => {
                let mut encoder = snap::write::FrameEncoder::new(Vec::new());
                encoder.write_all(&data).expect("writing to memory cannot fail");
                encoder.into_inner().expect("writing to memory cannot fail")
            }
            Compression::HadoopSnappy => hadoop_snappy(&data),
        }
    }
}

/// Hadoop's block format: for each block of at most 256 KiB, its uncompressed length
/// (4 bytes, big-endian), then the compressed chunk's length (4 bytes, big-endian)
/// and the raw Snappy chunk.
fn hadoop_snappy(data: &[u8]) -> Vec<u8> {
    let mut encoder = snap::raw::Encoder::new();
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    for block in data.chunks(HADOOP_BLOCK_BYTES) {
        let compressed = encoder.compress_vec(block).expect("blocks are far below Snappy's limit");
        out.extend_from_slice(&(block.len() as u32).to_be_bytes());
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::Command;

    use super::*;

    fn batch() -> Vec<u8> {
        (0..20_000)
            .flat_map(|i| format!("{{\"record\":{i},\"pad\":\"{}\"}}", "z".repeat(i % 37)).into_bytes())
            .collect()
    }

    fn all() -> [Compression; 5] {
        [Compression::Uncompressed, Compression::Gzip, Compression::Zip, Compression::Snappy, Compression::HadoopSnappy]
    }

    #[test]
    fn api_names_and_extensions() {
        for (name, c) in ["UNCOMPRESSED", "GZIP", "ZIP", "Snappy", "HADOOP_SNAPPY"].iter().zip(all()) {
            assert_eq!(Compression::from_api(name), Some(c));
        }
        assert_eq!(Compression::from_api("SNAPPY"), None);
        assert_eq!(Compression::Gzip.extension(), ".gz");
    }

    #[test]
    fn every_format_round_trips_through_a_decoder() {
        let data = batch();
        for c in all() {
            let body = c.encode(data.clone(), "entry");
            let decoded = match c {
                Compression::Uncompressed => body.clone(),
                Compression::Gzip => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
                    out
                }
                Compression::Zip => {
                    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&body)).unwrap();
                    assert_eq!(archive.len(), 1);
                    let mut out = Vec::new();
                    archive.by_name("entry").unwrap().read_to_end(&mut out).unwrap();
                    out
                }
                Compression::Snappy => {
                    let mut out = Vec::new();
                    snap::read::FrameDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
                    out
                }
                Compression::HadoopSnappy => {
                    let (mut at, mut out) = (0, Vec::new());
                    while at < body.len() {
                        let raw_len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
                        let chunk_len = u32::from_be_bytes(body[at + 4..at + 8].try_into().unwrap()) as usize;
                        let chunk =
                            snap::raw::Decoder::new().decompress_vec(&body[at + 8..at + 8 + chunk_len]).unwrap();
                        assert_eq!(chunk.len(), raw_len);
                        out.extend(chunk);
                        at += 8 + chunk_len;
                    }
                    out
                }
            };
            assert_eq!(decoded, data, "{c:?}");
            if c != Compression::Uncompressed {
                assert!(body.len() < data.len() / 2, "{c:?} did not compress");
            }
        }
    }

    /// The standard tools read what Sluice writes.
    #[test]
    fn gzip_and_unzip_read_the_objects() {
        let dir = tempfile::tempdir().unwrap();
        let data = batch();
        let gz = dir.path().join("object.gz");
        std::fs::write(&gz, Compression::Gzip.encode(data.clone(), "")).unwrap();
        let out = Command::new("gzip").arg("-dc").arg(&gz).output().expect("gzip is installed (.ci/run installs it)");
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
        let zip_path = dir.path().join("object.zip");
        std::fs::write(&zip_path, Compression::Zip.encode(data.clone(), "object")).unwrap();
        let out =
            Command::new("unzip").arg("-p").arg(&zip_path).output().expect("unzip is installed (.ci/run installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn python_snappy_reads_both_snappy_formats() {
        let dir = tempfile::tempdir().unwrap();
        let data = batch();
        let framed = dir.path().join("framed.snappy");
        let hadoop = dir.path().join("hadoop.snappy");
        std::fs::write(&framed, Compression::Snappy.encode(data.clone(), "")).unwrap();
        std::fs::write(&hadoop, Compression::HadoopSnappy.encode(data.clone(), "")).unwrap();
        let script = "import sys, io, snappy.snappy_formats as f\n\
            framed, hadoop = sys.argv[1], sys.argv[2]\n\
            out = io.BytesIO(); f.stream_decompress(open(framed, 'rb'), out); a = out.getvalue()\n\
            out = io.BytesIO(); f.hadoop_stream_decompress(open(hadoop, 'rb'), out); b = out.getvalue()\n\
            sys.stdout.buffer.write(a); sys.stdout.buffer.write(b)\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&framed)
            .arg(&hadoop)
            .output()
            .expect("python3 with python-snappy is installed (.ci/run installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.stdout, [data.clone(), data].concat());
    }
}
