//! Object keys of delivered batches, in Firehose's layout, derived only from facts
//! fixed when the batch was decided (stream, destination version, first sequence
//! number, arrival of the oldest record). An upload repeated after a crash or a
//! timeout therefore writes the same key and overwrites instead of duplicating.

use sluice_protocol::destination::S3Settings;
use std::collections::BTreeMap;

use sluice_protocol::s3_key::{self, KeySource, PrefixContext, PrefixKind, PrefixTemplate};
use uuid::Uuid;

use super::encode::Compression;

/// Namespace of Sluice's deterministic batch UUIDs (a fixed, random UUID). Batches
/// recorded before installation ids existed keep using it directly.
pub const LEGACY_NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_7a4e_93b2_4f0e_8a61_2d9e_b7c3_f105);

/// The namespace of an installation's batch UUIDs: derived from its installation
/// id, so two installations never give a batch the same uuid.
pub fn installation_namespace(installation_id: &Uuid) -> Uuid {
    Uuid::new_v5(&LEGACY_NAMESPACE, installation_id.as_bytes())
}

/// The lane whose keys predate lanes (kept, so batches recorded by earlier versions
/// are redone under the same key).
pub const DESTINATION_LANE: &str = "destination";

/// What identifies a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIdentity<'a> {
    /// The installation's namespace ([`installation_namespace`]), as recorded when
    /// the batch was decided.
    pub namespace: Uuid,
    /// The stream's name (first part of the suffix).
    pub stream_name: &'a str,
    /// The stream's log id: names are reused after delete and create, ids are not.
    pub stream_id: u64,
    /// The stream's `VersionId` when the batch was decided.
    pub version: u64,
    /// Which of the stream's deliveries the batch belongs to (`destination`,
    /// `backup`): the backup of a batch is another object, even in the same place.
    pub lane: &'a str,
    /// Sequence number of the batch's first record.
    pub first_seq: u64,
    /// Arrival time of the batch's oldest record, Unix ms: prefixes and the suffix
    /// timestamp are evaluated on it.
    pub oldest_arrival_ms: u64,
}

impl BatchIdentity<'_> {
    /// The batch's UUID: a name-based (v5) UUID, in the installation's namespace, of
    /// stream id, version, first sequence number and, except for the destination
    /// itself, the lane.
    pub fn uuid(&self) -> Uuid {
        let mut name = Vec::with_capacity(24 + self.lane.len());
        name.extend_from_slice(&self.stream_id.to_be_bytes());
        name.extend_from_slice(&self.version.to_be_bytes());
        name.extend_from_slice(&self.first_seq.to_be_bytes());
        if self.lane != DESTINATION_LANE {
            name.extend_from_slice(self.lane.as_bytes());
        }
        Uuid::new_v5(&self.namespace, &name)
    }
}

/// The key of a batch's object. With `error_output_type` (`processing-failed`, ...),
/// the key of its error object: under `ErrorOutputPrefix`, or when that is unset
/// under `<Prefix><error-output-type>/yyyy/MM/dd/HH/`.
pub fn object_key(
    settings: &S3Settings,
    batch: &BatchIdentity<'_>,
    error_output_type: Option<&str>,
) -> Result<String, String> {
    key(settings, batch, error_output_type, None)
}

/// A record's partition keys (dynamic partitioning).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PartitionKeys {
    /// From the MetadataExtraction query.
    pub query: BTreeMap<String, String>,
    /// From the Lambda function's `metadata.partitionKeys`.
    pub lambda: BTreeMap<String, String>,
}

/// The key of the object holding one partition of a batch: the prefix evaluated
/// with the partition's keys, and a uuid derived from the batch's and the evaluated
/// prefix, so every partition's object is distinct and the same on a retry.
pub fn partition_key(settings: &S3Settings, batch: &BatchIdentity<'_>, keys: &PartitionKeys) -> Result<String, String> {
    key(settings, batch, None, Some(keys))
}

fn key(
    settings: &S3Settings,
    batch: &BatchIdentity<'_>,
    error_output_type: Option<&str>,
    partition_keys: Option<&PartitionKeys>,
) -> Result<String, String> {
    let template = match error_output_type {
        None => PrefixTemplate::parse(&settings.prefix, PrefixKind::Data, settings.dynamic_partitioning)?,
        Some(_) => {
            let default_error_prefix =
                format!("{}!{{firehose:error-output-type}}/!{{timestamp:yyyy/MM/dd/HH/}}", settings.prefix);
            let prefix = settings.error_output_prefix.as_deref().unwrap_or(&default_error_prefix);
            PrefixTemplate::parse(prefix, PrefixKind::Error, settings.dynamic_partitioning)?
        }
    };
    let zone = s3_key::time_zone(settings.custom_time_zone.as_deref())?;
    let time = s3_key::zoned(batch.oldest_arrival_ms, &zone);
    let uuid = batch.uuid();
    // `!{firehose:random-string}` must be random-looking yet the same on a retry:
    // derived from the batch's UUID and the expression's position.
    let mut n_random = 0u32;
    let mut random_string = || {
        n_random += 1;
        let derived = Uuid::new_v5(&uuid, &n_random.to_be_bytes());
        derived.simple().to_string()[..11].to_string()
    };
    let mut context = PrefixContext { time: &time, random_string: &mut random_string, error_output_type };
    let prefix = template.render(&mut context, &|source, name| {
        let keys = partition_keys?;
        match source {
            KeySource::Query => keys.query.get(name).cloned(),
            KeySource::Lambda => keys.lambda.get(name).cloned(),
        }
    })?;
    let uuid = match partition_keys {
        Some(_) => Uuid::new_v5(&uuid, prefix.as_bytes()),
        None => uuid,
    };
    let compression = Compression::from_api(&settings.compression)
        .ok_or_else(|| format!("Unknown CompressionFormat {}", settings.compression))?;
    // A converted object is Parquet (or ORC), its errors JSON lines.
    let format = if error_output_type.is_none() { settings.format_extension } else { None };
    let extension = settings.file_extension.as_deref().or(format).unwrap_or(compression.extension());
    let suffix = s3_key::suffix(batch.stream_name, batch.version, &time, &uuid.hyphenated().to_string(), extension);
    Ok(prefix + &suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-07-13 14:05:09.123 UTC.
    const ARRIVAL_MS: u64 = 1_783_951_509_123;

    fn settings(prefix: &str) -> S3Settings {
        S3Settings {
            bucket: "b".into(),
            prefix: prefix.into(),
            error_output_prefix: None,
            buffer_mib: 5,
            buffer_interval_s: 300,
            compression: "UNCOMPRESSED".into(),
            file_extension: None,
            format_extension: None,
            custom_time_zone: None,
            dynamic_partitioning: false,
        }
    }

    fn batch(first_seq: u64) -> BatchIdentity<'static> {
        BatchIdentity {
            namespace: LEGACY_NAMESPACE,
            stream_name: "orders",
            stream_id: 3,
            version: 2,
            lane: DESTINATION_LANE,
            first_seq,
            oldest_arrival_ms: ARRIVAL_MS,
        }
    }

    #[test]
    fn keys_follow_firehose_layout() {
        let key = object_key(&settings(""), &batch(1), None).unwrap();
        let uuid = batch(1).uuid().hyphenated().to_string();
        assert_eq!(key, format!("2026/07/13/14/orders-2-2026-07-13-14-05-09-{uuid}"));
        let key = object_key(&settings("legacy"), &batch(1), None).unwrap();
        assert!(key.starts_with("legacy2026/07/13/14/orders-2-"), "{key}");
        let gz = S3Settings { compression: "GZIP".into(), custom_time_zone: Some("Asia/Tokyo".into()), ..settings("") };
        let key = object_key(&gz, &batch(1), None).unwrap();
        assert!(key.starts_with("2026/07/13/23/orders-2-2026-07-13-23-05-09-") && key.ends_with(".gz"), "{key}");
        let custom = S3Settings { compression: "GZIP".into(), file_extension: Some(".json.gz".into()), ..settings("") };
        assert!(object_key(&custom, &batch(1), None).unwrap().ends_with(".json.gz"));
        let error = object_key(&settings("data/"), &batch(1), Some("processing-failed")).unwrap();
        assert!(error.starts_with("data/processing-failed/2026/07/13/14/orders-2-"), "{error}");
    }

    #[test]
    fn the_same_batch_always_gets_the_same_key() {
        let s = settings("r=!{firehose:random-string}/!{firehose:random-string}/");
        let s = S3Settings { error_output_prefix: Some("!{firehose:error-output-type}/".into()), ..s };
        let a = object_key(&s, &batch(7), None).unwrap();
        assert_eq!(a, object_key(&s, &batch(7), None).unwrap());
        assert_ne!(a, object_key(&s, &batch(8), None).unwrap());
        let parts: Vec<&str> = a.split('/').collect();
        assert_eq!(parts[0].len(), "r=".len() + 11);
        assert_ne!(parts[0], format!("r={}", parts[1]), "each use of random-string differs");
        let moved = BatchIdentity { version: 3, ..batch(7) };
        assert_ne!(batch(7).uuid(), moved.uuid(), "a new destination version is a new batch");
        let partitioned = S3Settings {
            dynamic_partitioning: true,
            error_output_prefix: Some("e/!{firehose:error-output-type}/".into()),
            ..settings("c=!{partitionKeyFromQuery:c}/l=!{partitionKeyFromLambda:c}/")
        };
        let keys = |q: &str, l: &str| PartitionKeys {
            query: [("c".to_string(), q.to_string())].into(),
            lambda: [("c".to_string(), l.to_string())].into(),
        };
        let a = partition_key(&partitioned, &batch(7), &keys("x", "y")).unwrap();
        let b = partition_key(&partitioned, &batch(7), &keys("z", "y")).unwrap();
        assert!(a.starts_with("c=x/l=y/orders-2-") && b.starts_with("c=z/l=y/"), "{a} {b}");
        assert_ne!(a.rsplit('-').next(), b.rsplit('-').next(), "each partition's object has its own uuid");
        assert_eq!(a, partition_key(&partitioned, &batch(7), &keys("x", "y")).unwrap(), "and the same on a retry");
        assert!(object_key(&partitioned, &batch(7), None).is_err(), "a partitioned prefix needs keys");
        let backup = BatchIdentity { lane: "backup", ..batch(7) };
        assert_ne!(batch(7).uuid(), backup.uuid(), "a batch's backup is another object");
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let here = BatchIdentity { namespace: installation_namespace(&a), ..batch(7) };
        let there = BatchIdentity { namespace: installation_namespace(&b), ..batch(7) };
        assert_ne!(here.uuid(), there.uuid(), "two installations name the same batch differently");
        assert_ne!(object_key(&s, &here, None).unwrap(), object_key(&s, &there, None).unwrap());
        let again = BatchIdentity { namespace: installation_namespace(&a), ..batch(7) };
        assert_eq!(here.uuid(), again.uuid(), "and one installation always the same way");
    }
}
