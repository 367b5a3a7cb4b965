//! `RecordDeAggregation` with `SubRecordType` JSON (consecutive JSON values, as in
//! `{..}{..}` or one per line) or DELIMITED (split on the configured delimiter).

use serde::de::IgnoredAny;

/// The JSON values one after another in `data`, each without surrounding whitespace.
pub(crate) fn json(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut values = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<IgnoredAny>();
    let mut start = 0;
    while let Some(value) = stream.next() {
        value.map_err(|e| format!("The record is not a sequence of JSON values: {e}"))?;
        let end = stream.byte_offset();
        values.push(data[start..end].trim_ascii().to_vec());
        start = end;
    }
    Ok(values)
}

/// The parts of `data` between occurrences of `delimiter`; a delimiter at the end
/// closes the last part rather than starting an empty one.
pub(crate) fn delimited(data: &[u8], delimiter: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, delimiter) {
        parts.push(rest[..at].to_vec());
        rest = &rest[at + delimiter.len()..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest.to_vec());
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|window| window == needle)
}
