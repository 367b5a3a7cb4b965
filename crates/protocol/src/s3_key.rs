//! S3 object keys exactly as Firehose writes them (reference §3.2–3.3): a prefix
//! (default `yyyy/MM/dd/HH/`, static prefixes get the time path appended with no
//! slash, `!{...}` expressions evaluated), then the fixed suffix
//! `<stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid><extension>`. Pure functions: the
//! caller supplies the instant (arrival of the batch's oldest record), the zone, the
//! uuid and the random strings, so the same batch always gets the same key.

use std::fmt::Write;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Longest prefix after evaluation.
pub const EVALUATED_PREFIX_CHARS_MAX: usize = 512;

/// Which prefix a template is for: they allow different expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixKind {
    /// `Prefix`.
    Data,
    /// `ErrorOutputPrefix`.
    Error,
}

/// One piece of a parsed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Timestamp(Vec<Pattern>),
    RandomString,
    ErrorOutputType,
    PartitionKeyFromQuery(String),
    PartitionKeyFromLambda(String),
}

/// A piece of a Java `DateTimeFormatter` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Literal(String),
    /// A pattern letter and how many times it was repeated.
    Field(char, usize),
}

/// A parsed `Prefix` or `ErrorOutputPrefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTemplate {
    parts: Vec<Part>,
}

/// Where a partition key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `!{partitionKeyFromQuery:…}`: the MetadataExtraction query.
    Query,
    /// `!{partitionKeyFromLambda:…}`: the Lambda function's `metadata.partitionKeys`.
    Lambda,
}

/// What the expressions of a prefix evaluate against.
pub struct PrefixContext<'a> {
    /// The instant, already in the stream's zone (UTC or `CustomTimeZone`).
    pub time: &'a Zoned,
    /// Produces an 11-character `!{firehose:random-string}` for each use.
    pub random_string: &'a mut dyn FnMut() -> String,
    /// `processing-failed`, `http-endpoint-failed`, ... for error prefixes.
    pub error_output_type: Option<&'a str>,
}

impl PrefixTemplate {
    /// Parses a prefix, applying Firehose's rules: `!{` only opens a known
    /// expression, `error-output-type` only in an error prefix, partition keys only
    /// in a data prefix with dynamic partitioning. An empty data prefix becomes the
    /// default `yyyy/MM/dd/HH/`; a non-empty one without expressions gets that time
    /// path appended with no slash, as observed on AWS.
    pub fn parse(prefix: &str, kind: PrefixKind, dynamic_partitioning: bool) -> Result<PrefixTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = prefix;
        let mut has_expressions = false;
        while let Some(start) = rest.find("!{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let end = rest[start..].find('}').ok_or_else(|| format!("Unclosed expression in prefix: {prefix}"))?;
            let expression = &rest[start + 2..start + end];
            parts.push(parse_expression(expression, kind, dynamic_partitioning)?);
            has_expressions = true;
            rest = &rest[start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if !has_expressions && kind == PrefixKind::Data {
            parts.push(Part::Timestamp(parse_pattern("yyyy/MM/dd/HH/")?));
        }
        Ok(PrefixTemplate { parts })
    }

    /// Whether the template contains `!{firehose:error-output-type}`.
    pub fn uses_error_output_type(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::ErrorOutputType))
    }

    /// Whether the template contains a `partitionKeyFrom...` expression.
    pub fn uses_partition_keys(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::PartitionKeyFromQuery(_) | Part::PartitionKeyFromLambda(_)))
    }

    /// Evaluates the prefix. Fails when the result is longer than 512 characters.
    pub fn render(
        &self,
        context: &mut PrefixContext<'_>,
        partition_keys: &dyn Fn(KeySource, &str) -> Option<String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Timestamp(pattern) => format_pattern(&mut out, pattern, context.time),
                Part::RandomString => out.push_str(&(context.random_string)()),
                Part::ErrorOutputType => out.push_str(context.error_output_type.unwrap_or("")),
                Part::PartitionKeyFromQuery(key) => out.push_str(
                    &partition_keys(KeySource::Query, key)
                        .ok_or_else(|| format!("The record has no partition key {key} from the query"))?,
                ),
                Part::PartitionKeyFromLambda(key) => out.push_str(
                    &partition_keys(KeySource::Lambda, key)
                        .ok_or_else(|| format!("The record has no partition key {key} from Lambda"))?,
                ),
            }
        }
        if out.chars().count() > EVALUATED_PREFIX_CHARS_MAX {
            return Err(format!("The evaluated prefix is longer than {EVALUATED_PREFIX_CHARS_MAX} characters"));
        }
        Ok(out)
    }
}

fn parse_expression(expression: &str, kind: PrefixKind, dynamic_partitioning: bool) -> Result<Part, String> {
    let (namespace, value) =
        expression.split_once(':').ok_or_else(|| format!("Invalid expression !{{{expression}}}"))?;
    match (namespace, value) {
        ("timestamp", pattern) => Ok(Part::Timestamp(parse_pattern(pattern)?)),
        ("firehose", "random-string") => Ok(Part::RandomString),
        ("firehose", "error-output-type") if kind == PrefixKind::Error => Ok(Part::ErrorOutputType),
        ("firehose", "error-output-type") => {
            Err("The expression !{firehose:error-output-type} is only allowed in ErrorOutputPrefix".into())
        }
        ("partitionKeyFromQuery" | "partitionKeyFromLambda", _) if kind == PrefixKind::Error => {
            Err(format!("The expression !{{{expression}}} is not allowed in ErrorOutputPrefix"))
        }
        ("partitionKeyFromQuery" | "partitionKeyFromLambda", _) if !dynamic_partitioning => {
            Err(format!("The expression !{{{expression}}} requires dynamic partitioning to be enabled"))
        }
        ("partitionKeyFromQuery", key) if !key.is_empty() => Ok(Part::PartitionKeyFromQuery(key.to_string())),
        ("partitionKeyFromLambda", key) if !key.is_empty() => Ok(Part::PartitionKeyFromLambda(key.to_string())),
        _ => Err(format!("Invalid expression !{{{expression}}}")),
    }
}

/// Parses the subset of Java `DateTimeFormatter` patterns that makes sense in an
/// object key: `y M d H h m s S D a E`, text in single quotes, `''` for a quote, and
/// punctuation as literals. Other letters are refused, not silently mis-rendered.
fn parse_pattern(pattern: &str) -> Result<Vec<Pattern>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut literal = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("Unclosed quote in timestamp pattern {pattern}")),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        literal.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        literal.push(*other);
                        i += 1;
                    }
                }
            }
            out.push(Pattern::Literal(if literal.is_empty() { "'".into() } else { literal }));
        } else if c.is_ascii_alphabetic() {
            if !"yMdHhmsSDaE".contains(c) {
                return Err(format!("Unsupported pattern letter '{c}' in timestamp pattern {pattern}"));
            }
            let n = chars[i..].iter().take_while(|x| **x == c).count();
            out.push(Pattern::Field(c, n));
            i += n;
        } else {
            out.push(Pattern::Literal(c.to_string()));
            i += 1;
        }
    }
    Ok(out)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn format_pattern(out: &mut String, pattern: &[Pattern], time: &Zoned) {
    for piece in pattern {
        let (letter, n) = match piece {
            Pattern::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Pattern::Field(letter, n) => (*letter, *n),
        };
        let number = |out: &mut String, value: i64| {
            let _ = write!(out, "{value:0n$}");
        };
        match letter {
            // Java: "yy" is the two-digit year; any other count pads the full year.
            'y' if n == 2 => number(out, i64::from(time.year()).rem_euclid(100)),
            'y' => number(out, i64::from(time.year())),
            'M' if n >= 4 => out.push_str(MONTHS[time.month() as usize - 1]),
            'M' if n == 3 => out.push_str(&MONTHS[time.month() as usize - 1][..3]),
            'M' => number(out, i64::from(time.month())),
            'd' => number(out, i64::from(time.day())),
            'D' => number(out, i64::from(time.day_of_year())),
            'H' => number(out, i64::from(time.hour())),
            'h' => number(out, (i64::from(time.hour()) + 11) % 12 + 1),
            'm' => number(out, i64::from(time.minute())),
            's' => number(out, i64::from(time.second())),
            'S' => {
                let nanos = format!("{:09}", time.subsec_nanosecond());
                out.push_str(&nanos[..n.min(9)]);
            }
            'a' => out.push_str(if time.hour() < 12 { "AM" } else { "PM" }),
            'E' => {
                let day = DAYS[time.weekday().to_monday_zero_offset() as usize];
                out.push_str(if n >= 4 { day } else { &day[..3] });
            }
            other => unreachable!("parse_pattern refuses pattern letter {other}"),
        }
    }
}

/// The zone of `CustomTimeZone` (empty means UTC).
pub fn time_zone(custom: Option<&str>) -> Result<TimeZone, String> {
    match custom.filter(|z| !z.is_empty()) {
        None | Some("UTC") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|_| format!("Unknown CustomTimeZone {name}")),
    }
}

/// `arrival_ms` in `zone`.
pub fn zoned(arrival_ms: u64, zone: &TimeZone) -> Zoned {
    Timestamp::from_millisecond(arrival_ms as i64).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned(zone.clone())
}

/// The key suffix: `<stream>-<version>-<yyyy-MM-dd-HH-mm-ss>-<uuid><extension>`.
pub fn suffix(stream: &str, version: u64, time: &Zoned, uuid: &str, extension: &str) -> String {
    format!(
        "{stream}-{version}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{uuid}{extension}",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Firehose's creation-time rules for a destination's two prefixes.
pub fn validate_prefixes(
    prefix: &str,
    error_output_prefix: Option<&str>,
    dynamic_partitioning: bool,
) -> Result<(), String> {
    let data = PrefixTemplate::parse(prefix, PrefixKind::Data, dynamic_partitioning)?;
    let data_has_expressions = prefix.contains("!{");
    let error = match error_output_prefix.filter(|p| !p.is_empty()) {
        Some(p) => Some((PrefixTemplate::parse(p, PrefixKind::Error, dynamic_partitioning)?, p.contains("!{"))),
        None => None,
    };
    if (data_has_expressions || dynamic_partitioning) && error.is_none() {
        return Err("ErrorOutputPrefix cannot be null or empty when Prefix contains expressions or dynamic partitioning is enabled".into());
    }
    if let Some((template, has_expressions)) = &error {
        if *has_expressions && !template.uses_error_output_type() {
            return Err(
                "ErrorOutputPrefix must contain !{firehose:error-output-type} when it contains expressions".into()
            );
        }
    }
    if dynamic_partitioning && !data.uses_partition_keys() {
        return Err("Prefix must contain a partitionKeyFromQuery or partitionKeyFromLambda expression when dynamic partitioning is enabled".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-07-13 14:05:09.123 UTC.
    const ARRIVAL_MS: u64 = 1_783_951_509_123;

    fn render(prefix: &str, kind: PrefixKind, zone: Option<&str>) -> Result<String, String> {
        let time = zoned(ARRIVAL_MS, &time_zone(zone)?);
        let mut n = 0;
        let mut random = || {
            n += 1;
            format!("rand{n:07}")
        };
        let mut context =
            PrefixContext { time: &time, random_string: &mut random, error_output_type: Some("processing-failed") };
        PrefixTemplate::parse(prefix, kind, true)?.render(&mut context, &|_, k| Some(format!("<{k}>")))
    }

    #[test]
    fn default_static_and_expression_prefixes() {
        assert_eq!(render("", PrefixKind::Data, None).unwrap(), "2026/07/13/14/");
        assert_eq!(render("legacy", PrefixKind::Data, None).unwrap(), "legacy2026/07/13/14/");
        assert_eq!(render("logs/", PrefixKind::Data, None).unwrap(), "logs/2026/07/13/14/");
        assert_eq!(
            render("year=!{timestamp:yyyy}/month=!{timestamp:MM}/!{firehose:random-string}/", PrefixKind::Data, None)
                .unwrap(),
            "year=2026/month=07/rand0000001/"
        );
        assert_eq!(
            render("!{timestamp:'y='yyyy'/m='M'/'EEE dd.MMM HH:mm:ss.SSS a}", PrefixKind::Data, None).unwrap(),
            "y=2026/m=7/Mon 13.Jul 14:05:09.123 PM"
        );
        assert_eq!(
            render("!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/", PrefixKind::Error, None).unwrap(),
            "processing-failed/2026/07/13/"
        );
        assert_eq!(render("!{partitionKeyFromQuery:customer}/", PrefixKind::Data, None).unwrap(), "<customer>/");
    }

    #[test]
    fn custom_time_zone_applies_to_prefix_and_suffix() {
        assert_eq!(render("", PrefixKind::Data, Some("Asia/Tokyo")).unwrap(), "2026/07/13/23/");
        let time = zoned(ARRIVAL_MS, &time_zone(Some("America/New_York")).unwrap());
        assert_eq!(
            suffix("orders", 3, &time, "6f1a2b3c-0000-4000-8000-000000000001", ".gz"),
            "orders-3-2026-07-13-10-05-09-6f1a2b3c-0000-4000-8000-000000000001.gz"
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn firehose_prefix_rules() {
        assert!(PrefixTemplate::parse("!{firehose:error-output-type}", PrefixKind::Data, false).is_err());
        assert!(PrefixTemplate::parse("!{partitionKeyFromQuery:k}", PrefixKind::Error, true).is_err());
        assert!(PrefixTemplate::parse("!{partitionKeyFromQuery:k}", PrefixKind::Data, false).is_err());
        assert!(PrefixTemplate::parse("!{nope:x}", PrefixKind::Data, false).is_err());
        assert!(PrefixTemplate::parse("!{timestamp:yyyy", PrefixKind::Data, false).is_err());
        assert!(PrefixTemplate::parse("!{timestamp:QQ}", PrefixKind::Data, false).is_err());
        assert!(validate_prefixes("", None, false).is_ok());
        assert!(validate_prefixes("static/", None, false).is_ok());
        assert!(validate_prefixes("!{timestamp:yyyy}/", None, false).is_err(), "expressions need an error prefix");
        assert!(validate_prefixes("!{timestamp:yyyy}/", Some("errors/"), false).is_ok());
        assert!(validate_prefixes("!{timestamp:yyyy}/", Some("errors/!{timestamp:yyyy}/"), false).is_err());
        assert!(validate_prefixes("!{timestamp:yyyy}/", Some("!{firehose:error-output-type}/"), false).is_ok());
        assert!(validate_prefixes("static/", Some("e/"), true).is_err(), "dynamic partitioning needs a partition key");
        assert!(validate_prefixes("!{partitionKeyFromQuery:k}/", Some("e/"), true).is_ok());
        let long = "x".repeat(600);
        assert!(render(&format!("{long}!{{timestamp:yyyy}}"), PrefixKind::Data, None).is_err());
    }
}
