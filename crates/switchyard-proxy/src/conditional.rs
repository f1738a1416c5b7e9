//! Answering a request from a representation the gateway holds (a file, a
//! stored response): preconditions (RFC 9110 section 13) and byte ranges
//! (section 14), shared by static files and the response cache.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::ProxyError;

/// More ranges than this in one request are answered with the whole body.
const MAX_RANGES: usize = 16;

/// What identifies the version of a representation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Validators<'a> {
    /// The entity tag, quoted, with its `W/` if weak.
    pub(crate) etag: Option<&'a str>,
    pub(crate) modified: Option<SystemTime>,
}

impl<'a> Validators<'a> {
    /// The validators a response head carries (`ETag`, `Last-Modified`).
    pub(crate) fn of(headers: &'a HeaderMap) -> Self {
        Self {
            etag: headers.get(header::ETAG).and_then(|v| v.to_str().ok()),
            modified: headers
                .get(header::LAST_MODIFIED)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok()),
        }
    }
}

/// What the preconditions say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// RFC 9110 section 13.2.2, in its order, for a `GET` or `HEAD`.
pub(crate) fn preconditions(headers: &HeaderMap, held: &Validators<'_>) -> Precondition {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let date = |name| text(name).and_then(|v| httpdate::parse_http_date(v).ok());
    if let Some(list) = text(header::IF_MATCH) {
        if !matches_list(list, held.etag, true) {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) = (date(header::IF_UNMODIFIED_SINCE), held.modified) {
        if secs(modified) > secs(since) {
            return Precondition::Failed;
        }
    }
    if let Some(list) = text(header::IF_NONE_MATCH) {
        if matches_list(list, held.etag, false) {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(modified)) = (date(header::IF_MODIFIED_SINCE), held.modified) {
        if secs(modified) <= secs(since) {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// Whole seconds: what HTTP dates can say.
fn secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether `etag` is in an entity-tag list (or the list is `*`); `strong`
/// comparison refuses weak tags.
fn matches_list(list: &str, etag: Option<&str>, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    let (held_weak, held) = match etag.strip_prefix("W/") {
        Some(tag) => (true, tag),
        None => (false, etag),
    };
    if strong && held_weak {
        return false;
    }
    list.split(',').map(str::trim).any(|tag| match tag.strip_prefix("W/") {
        Some(weak) => !strong && weak == held,
        None => tag == held,
    })
}

/// `If-Range`: the range applies only if the validator still matches
/// (strongly: a weak tag never does).
pub(crate) fn if_range_holds(headers: &HeaderMap, held: &Validators<'_>) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if value.starts_with('"') {
        return held.etag == Some(value);
    }
    match (httpdate::parse_http_date(value), held.modified) {
        (Ok(date), Some(modified)) => secs(date) == secs(modified),
        _ => false,
    }
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Not a byte range we serve (bad syntax, too many): the whole body.
    Whole,
    /// Byte ranges, none of which the body has.
    Unsatisfiable,
    /// Inclusive `(first, last)` offsets, in the order asked.
    Some(Vec<(u64, u64)>),
}

pub(crate) fn parse_ranges(header: &HeaderValue, len: u64) -> Ranges {
    let Some(spec) = header.to_str().ok().and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ranges::Whole;
    };
    let mut out = Vec::new();
    let mut asked = 0;
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        asked += 1;
        if asked > MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = item.split_once('-') else {
            return Ranges::Whole;
        };
        let range = match (first.trim(), last.trim()) {
            ("", suffix) => match suffix.parse::<u64>() {
                Ok(0) => None,
                Ok(n) if len > 0 => Some((len.saturating_sub(n), len - 1)),
                Ok(_) => None,
                Err(_) => return Ranges::Whole,
            },
            (first, last) => {
                let Ok(first) = first.parse::<u64>() else {
                    return Ranges::Whole;
                };
                let last = match last {
                    "" => len.saturating_sub(1),
                    last => match last.parse::<u64>() {
                        Ok(last) if last >= first => last.min(len.saturating_sub(1)),
                        _ => return Ranges::Whole,
                    },
                };
                (first < len).then_some((first, last))
            }
        };
        out.extend(range);
    }
    if asked == 0 {
        Ranges::Whole
    } else if out.is_empty() {
        Ranges::Unsatisfiable
    } else if out.iter().map(|(first, last)| last - first + 1).sum::<u64>() > len {
        // Overlapping ranges asking for more than the whole (`0-,0-,...`):
        // the whole, once, rather than many copies.
        Ranges::Whole
    } else {
        Ranges::Some(out)
    }
}

/// What the body of an answer carries.
pub(crate) enum Plan {
    Whole,
    One(u64, u64),
    Multipart(VecDeque<Part>, Bytes),
}

/// One stretch of the body, after its multipart head (empty for plain bodies).
pub(crate) struct Part {
    pub(crate) head: Bytes,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

impl Part {
    pub(crate) fn plain(start: u64, len: u64) -> Self {
        Self {
            head: Bytes::new(),
            start,
            len,
        }
    }
}

/// The status and body of the answer to `request` (its `Range` and
/// `If-Range`) from a representation of `len` bytes; sets `Content-Range`,
/// the multipart `Content-Type` and `Content-Length` in `headers`.
pub(crate) fn plan(
    request: &HeaderMap,
    held: &Validators<'_>,
    len: u64,
    headers: &mut HeaderMap,
) -> Result<(StatusCode, Plan), ProxyError> {
    let ranges = match request.get(header::RANGE) {
        Some(range) if if_range_holds(request, held) => parse_ranges(range, len),
        _ => Ranges::Whole,
    };
    let (status, body_len, plan) = match ranges {
        Ranges::Whole => (StatusCode::OK, len, Plan::Whole),
        Ranges::Unsatisfiable => return Err(ProxyError::RangeNotSatisfiable { len }),
        Ranges::Some(ranges) if ranges.len() == 1 => {
            let (start, end) = ranges[0];
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("digits are a valid value"),
            );
            (StatusCode::PARTIAL_CONTENT, end - start + 1, Plan::One(start, end))
        }
        Ranges::Some(ranges) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let boundary = format!("{:016x}", fastrand::u64(..));
            let parts: VecDeque<Part> = ranges
                .iter()
                .map(|&(start, end)| Part {
                    head: Bytes::from(format!(
                        "\r\n--{boundary}\r\ncontent-type: {content_type}\r\ncontent-range: bytes {start}-{end}/{len}\r\n\r\n"
                    )),
                    start,
                    len: end - start + 1,
                })
                .collect();
            let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
            let total = parts.iter().map(|p| p.head.len() as u64 + p.len).sum::<u64>() + tail.len() as u64;
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
                    .expect("hex digits are a valid value"),
            );
            (StatusCode::PARTIAL_CONTENT, total, Plan::Multipart(parts, tail))
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    Ok((status, plan))
}

/// The body `plan` makes of `contents`, held in memory.
pub(crate) fn sliced(contents: &Bytes, plan: Plan) -> ProxyBody {
    match plan {
        Plan::Whole => ProxyBody::full(contents.clone()),
        Plan::One(start, end) => ProxyBody::full(contents.slice(start as usize..=end as usize)),
        Plan::Multipart(parts, tail) => {
            let total = parts.iter().map(|p| p.head.len() + p.len as usize).sum::<usize>() + tail.len();
            let mut out = BytesMut::with_capacity(total);
            for part in parts {
                out.extend_from_slice(&part.head);
                out.extend_from_slice(&contents[part.start as usize..(part.start + part.len) as usize]);
            }
            out.extend_from_slice(&tail);
            ProxyBody::full(out.freeze())
        }
    }
}

/// A 304 for a representation with response head `headers`: the fields
/// RFC 9110 section 15.4.5 says it carries.
pub(crate) fn not_modified(headers: &HeaderMap) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        header::ETAG,
        header::LAST_MODIFIED,
        header::VARY,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::CONTENT_LOCATION,
        header::DATE,
    ] {
        for value in headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let parse = |v: &'static str| parse_ranges(&HeaderValue::from_static(v), 100);
        assert_eq!(parse("bytes=0-9"), Ranges::Some(vec![(0, 9)]));
        assert_eq!(parse("bytes=90-"), Ranges::Some(vec![(90, 99)]));
        assert_eq!(parse("bytes=-10"), Ranges::Some(vec![(90, 99)]));
        assert_eq!(parse("bytes=-500"), Ranges::Some(vec![(0, 99)]));
        assert_eq!(parse("bytes=95-200"), Ranges::Some(vec![(95, 99)]));
        assert_eq!(parse("bytes=0-0, 50-59"), Ranges::Some(vec![(0, 0), (50, 59)]));
        assert_eq!(parse("bytes=100-"), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=200-300, 150-"), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0"), Ranges::Unsatisfiable);
        // Not something to honour: the whole body.
        assert_eq!(parse("items=0-9"), Ranges::Whole);
        assert_eq!(parse("bytes=9-0"), Ranges::Whole);
        assert_eq!(parse("bytes=x-1"), Ranges::Whole);
        assert_eq!(parse("bytes=0-,0-"), Ranges::Whole);
        assert_eq!(parse("bytes=0-60,40-99"), Ranges::Whole);
        let many = HeaderValue::from_str(&format!("bytes={}", vec!["0-0"; 17].join(","))).unwrap();
        assert_eq!(parse_ranges(&many, 100), Ranges::Whole);
        assert_eq!(
            parse_ranges(&HeaderValue::from_static("bytes=0-"), 0),
            Ranges::Unsatisfiable
        );
    }

    #[test]
    fn preconditions_in_their_order() {
        let modified = UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let held = Validators {
            etag: Some("\"abc-10\""),
            modified: Some(modified),
        };
        let check = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            preconditions(&headers, &held)
        };
        assert_eq!(check(&[]), Precondition::Proceed);
        assert_eq!(check(&[("if-none-match", "\"abc-10\"")]), Precondition::NotModified);
        assert_eq!(check(&[("if-none-match", "W/\"abc-10\"")]), Precondition::NotModified);
        assert_eq!(check(&[("if-none-match", "\"other\"")]), Precondition::Proceed);
        assert_eq!(check(&[("if-match", "\"other\"")]), Precondition::Failed);
        assert_eq!(check(&[("if-match", "W/\"abc-10\"")]), Precondition::Failed);
        assert_eq!(check(&[("if-match", "*")]), Precondition::Proceed);
        let later = httpdate::fmt_http_date(modified + std::time::Duration::from_secs(60));
        let earlier = httpdate::fmt_http_date(modified - std::time::Duration::from_secs(60));
        let mut headers = HeaderMap::new();
        headers.insert("if-modified-since", HeaderValue::from_str(&later).unwrap());
        assert_eq!(preconditions(&headers, &held), Precondition::NotModified);
        headers.insert("if-modified-since", HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(preconditions(&headers, &held), Precondition::Proceed);
        // If-None-Match wins over If-Modified-Since.
        headers.insert("if-none-match", HeaderValue::from_static("\"other\""));
        headers.insert("if-modified-since", HeaderValue::from_str(&later).unwrap());
        assert_eq!(preconditions(&headers, &held), Precondition::Proceed);
        let mut headers = HeaderMap::new();
        headers.insert("if-unmodified-since", HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(preconditions(&headers, &held), Precondition::Failed);
    }

    #[test]
    fn missing_validators_never_match() {
        let none = Validators::default();
        let mut headers = HeaderMap::new();
        headers.insert("if-none-match", HeaderValue::from_static("\"abc\""));
        assert_eq!(preconditions(&headers, &none), Precondition::Proceed);
        headers.insert("if-none-match", HeaderValue::from_static("*"));
        assert_eq!(preconditions(&headers, &none), Precondition::NotModified);
        let mut headers = HeaderMap::new();
        headers.insert(
            "if-modified-since",
            HeaderValue::from_static("Sun, 22 Nov 2026 10:00:00 GMT"),
        );
        assert_eq!(preconditions(&headers, &none), Precondition::Proceed);
        let mut headers = HeaderMap::new();
        headers.insert("if-range", HeaderValue::from_static("\"abc\""));
        assert!(!if_range_holds(&headers, &none));
        // A weak tag never satisfies If-Range or If-Match.
        let weak = Validators {
            etag: Some("W/\"abc\""),
            modified: None,
        };
        headers.insert("if-range", HeaderValue::from_static("W/\"abc\""));
        assert!(!if_range_holds(&headers, &weak));
        let mut headers = HeaderMap::new();
        headers.insert("if-match", HeaderValue::from_static("\"abc\""));
        assert_eq!(preconditions(&headers, &weak), Precondition::Failed);
    }
}
