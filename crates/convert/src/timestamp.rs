//! Timestamps in the input forms Firehose's deserializers accept, read from the
//! text of a JSON value (a string's content or a number's literal). Each result is
//! an instant in UTC; the writers store it in their own unit.
//!
//! The OpenX JSON SerDe (Firehose's documentation, and the SerDe's own rules):
//! - text with a `:` is a date and time: `yyyy-MM-dd'T'HH:mm:ss[.S]` with `Z` or an
//!   offset (`+hh:mm` or `+hhmm`), converted to UTC; or `yyyy-[M]M-[d]d HH:mm:ss[.S]`
//!   taken as UTC; fractions up to 9 digits;
//! - else text with a `.` is floating-point epoch seconds, kept to the millisecond;
//! - else an integer: epoch milliseconds with 13 digits or more, epoch seconds below.
//!
//! The Hive JSON SerDe's default is the second date-and-time form only; its
//! `TimestampFormats` may add `millis` (epoch milliseconds) and Joda patterns.
//!
//! Where the SerDes would wrap an out-of-range value to an unrelated date (AWS was
//! seen doing so), Sluice refuses the value instead: the record goes to the error
//! output rather than into the table wrong.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;

/// Parses `text` as the OpenX JSON SerDe does.
pub fn openx(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if text.contains(':') {
        return date_time(text);
    }
    if text.contains('.') {
        let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a timestamp"))?;
        let millis = seconds * 1000.0;
        if !millis.is_finite() || millis.abs() >= i64::MAX as f64 {
            return Err(format!("{text:?} is out of range for a timestamp"));
        }
        return epoch_millis(millis.trunc() as i64, text);
    }
    let value: i64 = text.parse().map_err(|_| format!("{text:?} is not a timestamp"))?;
    // The SerDe tells milliseconds from seconds by the digits written: 13 or more
    // (a sign counts, as it does there) are milliseconds.
    if text.len() >= 13 {
        epoch_millis(value, text)
    } else {
        Timestamp::from_second(value).map_err(|_| format!("{text:?} is out of range for a timestamp"))
    }
}

/// Parses `text` as the Hive JSON SerDe does by default: `yyyy-[M]M-[d]d HH:mm:ss[.S]`.
pub fn hive(text: &str) -> Result<Timestamp, String> {
    local(text.trim()).and_then(|dt| to_utc(dt, Offset::UTC, text))
}

/// Parses `text` as epoch milliseconds (`millis` in the Hive SerDe's `TimestampFormats`).
pub fn millis(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    let value: i64 = text.parse().map_err(|_| format!("{text:?} is not epoch milliseconds"))?;
    epoch_millis(value, text)
}

fn epoch_millis(value: i64, text: &str) -> Result<Timestamp, String> {
    Timestamp::from_millisecond(value).map_err(|_| format!("{text:?} is out of range for a timestamp"))
}

/// The OpenX date-and-time forms: with a zone (ISO 8601) or without (taken as UTC).
fn date_time(text: &str) -> Result<Timestamp, String> {
    let (body, offset) = match text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        Some(body) => (body, Some(Offset::UTC)),
        None => match zone_offset(text) {
            Some((body, offset)) => (body, Some(offset)),
            None => (text, None),
        },
    };
    match offset {
        Some(offset) => {
            let (date, time) = body.split_once(['T', 't']).ok_or_else(|| format!("{text:?} is not a timestamp"))?;
            to_utc(civil(date, time, true, text)?, offset, text)
        }
        None => to_utc(local(text)?, Offset::UTC, text),
    }
}

/// A trailing `+hh:mm`, `-hh:mm`, `+hhmm` or `-hhmm` after a time, and the text before it.
fn zone_offset(text: &str) -> Option<(&str, Offset)> {
    let (body, sign, digits) = [6usize, 5].iter().find_map(|&n| {
        let at = text.len().checked_sub(n)?;
        let tail = text.get(at..)?;
        let sign = match tail.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let digits: String = tail[1..].chars().filter(|c| *c != ':').collect();
        let shaped = if n == 6 { tail.as_bytes()[3] == b':' } else { true };
        (shaped && digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| (&text[..at], sign, digits))
    })?;
    // A date's own `-dd` is not an offset: an offset follows a time.
    if !body.contains(['T', 't']) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if hours > 18 || minutes > 59 {
        return None;
    }
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok().map(|offset| (body, offset))
}

/// `yyyy-[M]M-[d]d HH:mm:ss[.S]`, as `java.sql.Timestamp.valueOf` reads it.
fn local(text: &str) -> Result<DateTime, String> {
    let (date, time) = text.split_once(' ').ok_or_else(|| format!("{text:?} is not a timestamp"))?;
    civil(date, time.trim_start(), false, text)
}

/// A date and a time of day; `strict` (ISO 8601) wants two-digit months and days
/// and allows the seconds to be left out.
fn civil(date: &str, time: &str, strict: bool, text: &str) -> Result<DateTime, String> {
    let bad = || format!("{text:?} is not a timestamp");
    let number = |part: &str, min: usize, max: usize| -> Result<i64, String> {
        if part.len() < min || part.len() > max || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let mut ymd = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (ymd.next(), ymd.next(), ymd.next(), ymd.next()) else {
        return Err(bad());
    };
    let (short, long) = if strict { (2, 2) } else { (1, 2) };
    let (year, month, day) = (number(y, 4, 4)?, number(m, short, long)?, number(d, short, long)?);
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut hms = clock.split(':');
    let (Some(h), Some(mi)) = (hms.next(), hms.next()) else { return Err(bad()) };
    let s = hms.next();
    if hms.next().is_some() || (s.is_none() && (!strict || fraction.is_some())) {
        return Err(bad());
    }
    let (hour, minute) = (number(h, short, 2)?, number(mi, 2, 2)?);
    let second = s.map(|s| number(s, 2, 2)).transpose()?.unwrap_or(0);
    let nanos = match fraction {
        None => 0,
        Some(f) => number(f, 1, 9)? * 10i64.pow(9 - f.len() as u32),
    };
    DateTime::new(year as i16, month as i8, day as i8, hour as i8, minute as i8, second as i8, nanos as i32)
        .map_err(|e| format!("{text:?} is not a valid date and time: {e}"))
}

fn to_utc(dt: DateTime, offset: Offset, text: &str) -> Result<Timestamp, String> {
    offset
        .to_timestamp(dt)
        .or_else(|_| dt.to_zoned(TimeZone::UTC).map(|z| z.timestamp()))
        .map_err(|e| format!("{text:?} is out of range for a timestamp: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{hive, millis, openx};

    fn at(text: &str) -> String {
        openx(text).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    #[test]
    fn the_forms_firehose_documents_for_openx_are_read() {
        assert_eq!(at("2017-02-07T15:13:01.39256Z"), "2017-02-07T15:13:01.39256Z");
        assert_eq!(at("2017-02-07 15:13:01.14"), "2017-02-07T15:13:01.14Z");
        assert_eq!(at("2017-2-7 15:13:01"), "2017-02-07T15:13:01Z");
        assert_eq!(at("1518033528"), "2018-02-07T19:58:48Z");
        assert_eq!(at("1518033528123"), "2018-02-07T19:58:48.123Z");
        assert_eq!(at("1518033528.123"), "2018-02-07T19:58:48.123Z");
        assert_eq!(at("2017-02-07T15:13:01.123456789Z"), "2017-02-07T15:13:01.123456789Z");
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        assert_eq!(at("2017-02-07T15:13:01+02:00"), "2017-02-07T13:13:01Z");
        assert_eq!(at("2017-02-07T15:13:01.5-0630"), "2017-02-07T21:43:01.5Z");
        assert_eq!(at("2017-02-07T15:13Z"), "2017-02-07T15:13:00Z");
    }

    #[test]
    fn twelve_digits_are_seconds_and_thirteen_milliseconds() {
        assert_eq!(at("100000000000"), "5138-11-16T09:46:40Z");
        assert_eq!(at("1000000000000"), "2001-09-09T01:46:40Z");
        // Twelve digits past the range are seconds out of range, not milliseconds.
        assert!(openx("999999999999").is_err());
    }

    #[test]
    fn what_is_not_a_timestamp_is_refused_never_wrapped() {
        for text in [
            "",
            "yesterday",
            "2017-02-07",
            "2017-02-07T15:13:01",
            "2017-13-07 15:13:01",
            "2017-02-30 15:13:01",
            "2017-02-07 25:13:01",
            "2017-02-07 15:13:01.1234567891",
            "17-02-07 15:13:01",
            "99999999999999999999",
            "1e400.5",
            "9223372036854775807",
        ] {
            assert!(openx(text).is_err(), "{text:?} was read as {:?}", openx(text));
        }
    }

    #[test]
    fn the_hive_serde_reads_its_default_form_and_millis() {
        assert_eq!(hive("2017-02-07 15:13:01.14").unwrap().to_string(), "2017-02-07T15:13:01.14Z");
        assert!(hive("2017-02-07T15:13:01Z").is_err());
        assert!(hive("1518033528").is_err());
        assert_eq!(millis("1518033528123").unwrap().to_string(), "2018-02-07T19:58:48.123Z");
        assert!(millis("2017-02-07 15:13:01").is_err());
    }
}
