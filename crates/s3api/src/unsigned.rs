//! Requests when no keys are configured: clients still sign (every SDK does, with
//! whatever fake credentials a test gives it), but there is no secret to check
//! the signature against, so it is removed and the request served as anonymous.
//! `s3s` decodes `aws-chunked` bodies only while it verifies their chunk
//! signatures with a known secret, so the framing of a streaming upload (the
//! SDKs' default, with a trailing checksum) is undone here, as the body streams:
//!
//! ```text
//! <hex size>[;chunk-signature=<sig>]\r\n<size bytes>\r\n ... 0[;...]\r\n[<trailer>\r\n]*\r\n
//! ```

use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};

use crate::{Body, HttpRequest};

/// The longest chunk header line (a size and a signature) or trailer line accepted.
const LINE_BYTES_MAX: usize = 4096;

/// The trailing headers of a body whose framing was undone here (its trailing
/// checksum), once the body is read; in the request's extensions.
#[derive(Clone, Default)]
pub(crate) struct Trailers(pub(crate) Arc<Mutex<Option<HeaderMap>>>);

/// Removes a request's signature, and undoes the `aws-chunked` framing of its body.
pub(crate) fn strip_signature(mut request: HttpRequest) -> HttpRequest {
    // A presigned URL carries its signature in the query (SigV4, or SigV2 as
    // boto3 still presigns S3 URLs by default).
    let signed_query = |q: &&str| q.contains("X-Amz-Signature") || q.contains("Signature=");
    if let Some(query) = request.uri().query().filter(signed_query) {
        let sigv2 = ["AWSAccessKeyId=", "Signature=", "Expires="];
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with("X-Amz-") && !sigv2.iter().any(|p| pair.starts_with(p)))
            .collect();
        let path_and_query = if kept.is_empty() {
            request.uri().path().to_string()
        } else {
            format!("{}?{}", request.uri().path(), kept.join("&"))
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(path_and_query) = path_and_query.parse() {
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    let headers = request.headers_mut();
    headers.remove(AUTHORIZATION);
    let streaming =
        headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("STREAMING-"));
    headers.remove("x-amz-content-sha256");
    if !streaming {
        return request;
    }
    if let Some(length) = headers.remove("x-amz-decoded-content-length") {
        headers.insert(CONTENT_LENGTH, length);
    }
    let encoding = headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| {
        v.split(',').map(str::trim).filter(|e| !e.is_empty() && *e != "aws-chunked").collect::<Vec<_>>().join(",")
    });
    match encoding {
        Some(rest) if !rest.is_empty() => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_str(&rest).expect("from a header value"));
        }
        _ => {
            headers.remove(CONTENT_ENCODING);
        }
    }
    let trailers = Trailers::default();
    request.extensions_mut().insert(trailers.clone());
    let body = std::mem::take(request.body_mut());
    *request.body_mut() = Body::from(s3s::dto::StreamingBlob::wrap(decode(body, trailers)));
    request
}

fn keep_trailer(trailers: &Trailers, line: &[u8]) {
    let Some(colon) = line.iter().position(|b| *b == b':') else { return };
    let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
    if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
        trailers.0.lock().expect("lock").get_or_insert_with(HeaderMap::new).insert(name, value);
    }
}

fn framing(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed aws-chunked body: {what}"))
}

enum State {
    /// Reading a chunk's header line.
    Header,
    /// Inside a chunk, with this many bytes left.
    Data(usize),
    /// After a chunk's data, expecting `\r\n`.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
    Done,
}

/// The body without its framing.
fn decode(
    body: Body,
    trailers: Trailers,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    futures_util::stream::try_unfold(
        (body, BytesMut::new(), State::Header, false, trailers),
        |(mut body, mut buffer, mut state, mut ended, trailers)| async move {
            loop {
                match state {
                    State::Done => return Ok(None),
                    State::Data(left) if !buffer.is_empty() => {
                        let n = left.min(buffer.len());
                        let data = buffer.split_to(n).freeze();
                        state = if n == left { State::DataEnd } else { State::Data(left - n) };
                        return Ok(Some((data, (body, buffer, state, ended, trailers))));
                    }
                    State::DataEnd if buffer.len() >= 2 => {
                        if &buffer[..2] != b"\r\n" {
                            return Err(framing("a chunk does not end with CRLF"));
                        }
                        buffer.advance(2);
                        state = State::Header;
                        continue;
                    }
                    State::Header | State::Trailer => {
                        if let Some(at) = buffer.windows(2).position(|w| w == b"\r\n") {
                            let line = buffer.split_to(at + 2);
                            let line = &line[..at];
                            state = match state {
                                State::Header => {
                                    let size = line.split(|b| *b == b';').next().unwrap_or_default();
                                    let size = std::str::from_utf8(size)
                                        .ok()
                                        .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                                        .ok_or_else(|| framing("a chunk size is not hexadecimal"))?;
                                    if size == 0 {
                                        State::Trailer
                                    } else {
                                        State::Data(size)
                                    }
                                }
                                _ if line.is_empty() => State::Done,
                                // A trailing checksum (or the trailer's signature).
                                _ => {
                                    keep_trailer(&trailers, line);
                                    State::Trailer
                                }
                            };
                            continue;
                        }
                        if buffer.len() > LINE_BYTES_MAX {
                            return Err(framing("a chunk header line is too long"));
                        }
                    }
                    _ => {}
                }
                if ended {
                    // A stream may end right after the last chunk's header and
                    // trailers, without the final empty line.
                    if matches!(state, State::Trailer) && buffer.is_empty() {
                        return Ok(None);
                    }
                    return Err(framing("the body ended inside a chunk"));
                }
                match body.next().await {
                    Some(bytes) => buffer.extend_from_slice(&bytes.map_err(std::io::Error::other)?),
                    None => ended = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decoded(parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        let body = Body::from(s3s::dto::StreamingBlob::wrap(futures_util::stream::iter(chunks)));
        let mut stream = Box::pin(decode(body, Trailers::default()));
        let mut out = Vec::new();
        while let Some(bytes) = stream.next().await {
            out.extend_from_slice(&bytes.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn signed_and_unsigned_framings_decode_across_any_split() {
        let signed =
            b"5;chunk-signature=abc\r\nhello\r\n6;chunk-signature=def\r\n world\r\n0;chunk-signature=ghi\r\n\r\n";
        let trailer = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n";
        let kept = Trailers::default();
        let body = Body::from(s3s::dto::StreamingBlob::wrap(futures_util::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from_static(trailer),
        )])));
        let mut stream = Box::pin(decode(body, kept.clone()));
        while stream.next().await.is_some() {}
        let value = kept.0.lock().unwrap().as_ref().and_then(|h| h.get("x-amz-checksum-crc32").cloned());
        assert_eq!(value.as_ref().map(|v| v.as_bytes()), Some(&b"DUoRhQ=="[..]), "the trailing checksum is kept");
        for framed in [&signed[..], &trailer[..]] {
            assert_eq!(decoded(&[framed]).await.unwrap(), b"hello world");
            for split in 1..framed.len() {
                let (a, b) = framed.split_at(split);
                assert_eq!(decoded(&[a, b]).await.unwrap(), b"hello world", "split at {split}");
            }
        }
    }

    #[tokio::test]
    async fn broken_framing_is_an_error_not_data() {
        assert!(decoded(&[b"zz\r\nhello\r\n0\r\n\r\n"]).await.is_err());
        assert!(decoded(&[b"5\r\nhel"]).await.is_err());
        assert!(decoded(&[b"5\r\nhelloXX0\r\n\r\n"]).await.is_err());
    }
}
