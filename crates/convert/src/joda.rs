//! Joda-Time patterns, as the Hive JSON SerDe's `TimestampFormats` give them
//! (`yyyy-MM-dd'T'HH:mm:ss.SSSZZ`), translated once, when the stream's conversion
//! is set up, into a `jiff` parsing format. A pattern without a zone reads times
//! as UTC, as Firehose does.
//!
//! Supported letters: `y` (`yy`: two-digit year), `M` (`MMM` and `MMMM`: month
//! names), `d`, `D`, `H`, `h` with `a`, `m`, `s`, `S` (any count: the fraction of a
//! second), `E` (day names), `Z` (`Z`: `+0100`, `ZZ`: `+01:00`, `ZZZ`: a zone id);
//! quoted text and any other non-letter are literal. Other letters are refused
//! when the stream is created rather than misread later.

use std::fmt;

/// A parsed pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As given.
    joda: String,
    /// The `jiff::fmt::strtime` format.
    strtime: String,
    /// The format for text ending in `Z` (read as `+00:00`), if the pattern
    /// reads a zone: Joda's zone letters also read `Z` for UTC.
    strtime_utc: Option<String>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.joda)
    }
}

impl Pattern {
    /// Translates a Joda pattern; the error names what is not supported.
    pub fn new(joda: &str) -> Result<Pattern, String> {
        let mut strtime = String::new();
        let mut strtime_utc = String::new();
        let mut zoned = false;
        let chars: Vec<char> = joda.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let run = chars[i..].iter().take_while(|&&x| x == c).count();
            if c == '\'' {
                // Quoted text; '' is a quote.
                if run >= 2 && run % 2 == 0 {
                    strtime.push_str(&"'".repeat(run / 2));
                    strtime_utc.push_str(&"'".repeat(run / 2));
                    i += run;
                    continue;
                }
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or_else(|| format!("timestamp format {joda:?}: unterminated quote"))?;
                for &x in &chars[i + 1..i + 1 + end] {
                    push_literal(&mut strtime, x);
                    push_literal(&mut strtime_utc, x);
                }
                i += end + 2;
                continue;
            }
            if !c.is_ascii_alphabetic() {
                push_literal(&mut strtime, c);
                push_literal(&mut strtime_utc, c);
                i += 1;
                continue;
            }
            let directive = match (c, run) {
                ('y', 2) => "%y",
                ('y', _) => "%Y",
                ('M', 1 | 2) => "%m",
                ('M', 3) => "%b",
                ('M', _) => "%B",
                ('d', _) => "%d",
                ('D', _) => "%j",
                ('H', _) => "%H",
                ('h', _) => "%I",
                ('a', _) => "%p",
                ('m', _) => "%M",
                ('s', _) => "%S",
                ('S', _) => "%f",
                ('E', 1..=3) => "%a",
                ('E', _) => "%A",
                ('Z', 1) => "%z",
                ('Z', 2) => "%:z",
                ('Z', _) => "%Q",
                _ => {
                    return Err(format!(
                        "timestamp format {joda:?}: the pattern letter {c:?} is not supported (y M d D H h a m s S E Z are)"
                    ))
                }
            };
            zoned |= c == 'Z';
            strtime.push_str(directive);
            strtime_utc.push_str(if c == 'Z' { "%:z" } else { directive });
            i += run;
        }
        Ok(Pattern { joda: joda.to_string(), strtime, strtime_utc: zoned.then_some(strtime_utc) })
    }

    /// Reads `text` with the pattern; a time without a zone is UTC.
    pub fn parse(&self, text: &str) -> Result<jiff::Timestamp, String> {
        let text = text.trim();
        let not = || format!("{text:?} does not match the timestamp format {:?}", self.joda);
        let (format, text) = match (&self.strtime_utc, text.strip_suffix('Z')) {
            (Some(utc), Some(body)) => (utc.as_str(), std::borrow::Cow::Owned(format!("{body}+00:00"))),
            _ => (self.strtime.as_str(), std::borrow::Cow::Borrowed(text)),
        };
        let parsed = jiff::fmt::strtime::parse(format, text.as_ref()).map_err(|_| not())?;
        if parsed.offset().is_some() || parsed.iana_time_zone().is_some() {
            parsed.to_timestamp().map_err(|_| not())
        } else {
            let local = parsed.to_datetime().map_err(|_| not())?;
            local.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|_| not())
        }
    }
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(pattern: &str, text: &str) -> i64 {
        Pattern::new(pattern).unwrap().parse(text).unwrap().as_millisecond()
    }

    #[test]
    fn common_patterns_read_as_joda_does() {
        // 2021-03-04T05:06:07.089Z
        let expected = 1_614_834_367_089;
        assert_eq!(ms("yyyy-MM-dd'T'HH:mm:ss.SSSZZ", "2021-03-04T05:06:07.089Z"), expected);
        assert_eq!(ms("yyyy-MM-dd'T'HH:mm:ss.SSSZZ", "2021-03-04T06:06:07.089+01:00"), expected);
        assert_eq!(ms("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2021-03-04T05:06:07.089+0000"), expected);
        assert_eq!(ms("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2021-03-04T05:06:07.089Z"), expected);
        assert_eq!(ms("dd/MM/yyyy HH:mm:ss.SSS", "04/03/2021 05:06:07.089"), expected);
        assert_eq!(ms("MMM d, yyyy h:mm:ss.SSS a", "Mar 4, 2021 5:06:07.089 AM"), expected);
        assert_eq!(ms("EEE, dd MMM yyyy HH:mm:ss.SSS", "Thu, 04 Mar 2021 05:06:07.089"), expected);
        assert_eq!(ms("yyyyMMdd'x'HHmmss.SSS", "20210304x050607.089"), expected);
    }

    #[test]
    fn unsupported_letters_and_bad_quotes_are_refused() {
        assert!(Pattern::new("yyyy-ww").unwrap_err().contains("'w'"));
        assert!(Pattern::new("yyyy 'oops").unwrap_err().contains("unterminated"));
        assert!(Pattern::new("yyyy''MM").is_ok());
    }

    #[test]
    fn text_that_does_not_match_is_an_error() {
        let p = Pattern::new("yyyy-MM-dd HH:mm:ss").unwrap();
        assert!(p.parse("2021-03-04T05:06:07").is_err());
        assert!(p.parse("2021-02-30 00:00:00").is_err());
    }
}
