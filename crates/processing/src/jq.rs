//! MetadataExtraction: a JQ query (`JsonParsingEngine` JQ-1.6), evaluated by jaq on
//! each JSON record, whose result object gives the record's partition keys for
//! `!{partitionKeyFromQuery:<key>}`. Strings are used as they are; numbers, booleans
//! and null as their JSON text. A record that is not JSON, a query that fails on it,
//! or a result that is not one object of scalars is an extraction failure.

use std::collections::BTreeMap;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;

/// Most partition keys one query may produce, as Firehose allows.
pub const PARTITION_KEYS_MAX: usize = 50;

/// A record's partition keys, or why it has none.
pub type Extracted = Result<BTreeMap<String, String>, String>;

/// Checks that `query` parses and compiles (at CreateDeliveryStream and
/// UpdateDestination).
pub fn check(query: &str) -> Result<(), String> {
    extract(query, std::iter::empty::<&[u8]>()).map(|_| ())
}

/// Runs `query` on each record; one result per record, in order. `Err` when the
/// query itself does not compile.
pub fn extract<'a>(query: &str, records: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<Extracted>, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code: query, path: () })
        .map_err(|errors| format!("The MetadataExtractionQuery cannot be parsed ({} error(s)).", errors.len()))?;
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errors| format!("The MetadataExtractionQuery cannot be compiled ({} error(s)).", errors.len()))?;
    let results = records
        .into_iter()
        .map(|record| {
            let input =
                jaq_json::read::parse_single(record).map_err(|e| format!("The record is not valid JSON: {e}"))?;
            let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
            let mut outputs = filter.id.run((ctx, input)).map(unwrap_valr);
            let first = match outputs.next() {
                Some(Ok(value)) => value,
                Some(Err(e)) => return Err(format!("The MetadataExtractionQuery failed on the record: {e}")),
                None => return Err("The MetadataExtractionQuery produced no value for the record.".into()),
            };
            keys(&first)
        })
        .collect();
    Ok(results)
}

/// The partition keys of a query's result.
fn keys(value: &Val) -> Result<BTreeMap<String, String>, String> {
    let text = value.to_string();
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("The query's result is not JSON: {e}"))?;
    let serde_json::Value::Object(object) = parsed else {
        return Err(format!("The MetadataExtractionQuery must produce an object, not {text}."));
    };
    if object.len() > PARTITION_KEYS_MAX {
        return Err(format!("The query produced {} partition keys; at most {PARTITION_KEYS_MAX}.", object.len()));
    }
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                Err(format!("The partition key {key} is not a scalar value."))
            }
            scalar => Ok((key, scalar.to_string())),
        })
        .collect()
}
