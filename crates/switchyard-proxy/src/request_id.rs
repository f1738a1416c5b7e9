//! `X-Request-Id`: passed through when the client (or a proxy before us) sent a
//! sane one, generated otherwise, and sent both upstream and back to the client.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming request id that is passed through unchanged.
const MAX_LEN: usize = 200;

/// The request's id: the incoming one if acceptable, else a new random one.
pub fn from_request_or_new(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if is_acceptable(id) => id.clone(),
        _ => generate(),
    }
}

/// Visible ASCII only and bounded, so it is safe to log and echo.
fn is_acceptable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// 128 random bits as 32 lower-case hex digits (thread-local PRNG: no syscall).
fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_good_id_through() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(from_request_or_new(&headers), "abc-123");
    }

    #[test]
    fn replaces_missing_or_unsafe_ids() {
        let mut headers = HeaderMap::new();
        let fresh = from_request_or_new(&headers);
        assert_eq!(fresh.len(), 32);
        assert!(fresh.as_bytes().iter().all(u8::is_ascii_hexdigit));
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(from_request_or_new(&headers), "has space");
        headers.insert(X_REQUEST_ID, HeaderValue::from_str(&"a".repeat(300)).unwrap());
        assert_eq!(from_request_or_new(&headers).len(), 32);
    }

    #[test]
    fn generated_ids_differ() {
        let headers = HeaderMap::new();
        assert_ne!(from_request_or_new(&headers), from_request_or_new(&headers));
    }
}
