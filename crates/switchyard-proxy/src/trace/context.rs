//! W3C Trace Context (`traceparent`, `tracestate`): read from a request or
//! started afresh, and written on each upstream attempt with that attempt's
//! own span id as the parent.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// A request's place in a trace.
#[derive(Debug, Clone)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span (`None`: this request starts the trace).
    pub parent: Option<SpanId>,
    /// The gateway's span for this request.
    pub span_id: SpanId,
    /// Whether spans of this trace are recorded (the caller's flag, or the
    /// sampler's decision for a new trace).
    pub sampled: bool,
    /// Whether the caller's `traceparent` was unusable (its `tracestate`,
    /// if any, is then dropped too).
    pub restarted: bool,
}

impl TraceContext {
    /// The context of a request with these headers. A valid `traceparent`
    /// is continued with its sampled flag; a missing or invalid one starts a
    /// new trace, sampled with probability `ratio`.
    pub fn from_headers(headers: &HeaderMap, ratio: f64) -> Self {
        let given = headers.get(&TRACEPARENT);
        if let Some((trace_id, parent, flags)) = given.and_then(|v| parse(v.as_bytes())) {
            return Self {
                trace_id,
                parent: Some(parent),
                span_id: new_span_id(),
                sampled: flags & 1 == 1,
                restarted: false,
            };
        }
        let trace_id = new_trace_id();
        Self {
            trace_id,
            parent: None,
            span_id: new_span_id(),
            sampled: sample(&trace_id, ratio),
            restarted: given.is_some(),
        }
    }

    /// The trace id as 32 lowercase hex digits (access log, exports).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` an upstream attempt with span `span` carries.
    pub fn header_for(&self, span: &SpanId) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, span);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::from_str(&text).expect("hex digits and dashes are a valid header value")
    }
}

/// `version-traceid-parentid-flags` (version 00, or a later version's
/// first four fields); all-zero ids are invalid.
fn parse(value: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version = from_hex::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = from_hex::<16>(&value[3..35])?;
    let parent = from_hex::<8>(&value[36..52])?;
    let flags = from_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// Lowercase hex only, as the specification requires.
fn from_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
}

pub fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// Whether a new trace is recorded: the trace id's random low 8 bytes
/// against the ratio, so every node decides the same for one trace.
fn sample(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    (low as f64) < ratio * u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, traceparent.parse().unwrap());
        headers
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let ctx = TraceContext::from_headers(&headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), 0.0);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        assert!(ctx.sampled, "the caller's flag wins over the ratio");
        let next = ctx.header_for(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(next, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
        let unsampled =
            TraceContext::from_headers(&headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), 1.0);
        assert!(!unsampled.sampled);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let ctx = TraceContext::from_headers(&headers(bad), 1.0);
            assert!(ctx.restarted, "{bad}");
            assert_eq!(ctx.parent, None, "{bad}");
            assert_ne!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // A later version may append fields after the four it shares.
        let future = TraceContext::from_headers(
            &headers("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"),
            1.0,
        );
        assert!(!future.restarted);
    }

    #[test]
    fn new_traces_are_sampled_by_ratio() {
        let none = HeaderMap::new();
        let sampled = (0..10_000)
            .filter(|_| TraceContext::from_headers(&none, 0.25).sampled)
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled} of 10000 at 0.25");
        assert!(!TraceContext::from_headers(&none, 0.0).sampled);
        assert!(TraceContext::from_headers(&none, 1.0).sampled);
    }
}
