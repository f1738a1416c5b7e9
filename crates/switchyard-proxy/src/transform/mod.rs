//! Body transforms of forwarding routes (`transform`): JSON edits by JSON
//! pointer, XML read into JSON and written back, and response status
//! mapping.
//!
//! A body is read whole, up to `max_body`, only when its edits need it (a
//! status mapping alone streams). A larger body passes untransformed (with
//! a log line) or is refused, as `on_oversize` says. A response that cannot
//! be read as what the transform expects (an HTML error page, say) passes
//! untransformed and is logged; a request that cannot is refused with 400.

pub mod json;
pub mod xml;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use switchyard_config::{BodyTransform, Oversize, Transform};

use crate::body::{collect_limited, Collected, ProxyBody};
use crate::error::ProxyError;

/// Transforms a whole body: read it (JSON, or XML with `from_xml`), edit
/// it, write it (JSON, or XML with `to_xml`). Returns the body and its
/// content type.
pub fn body(edits: &BodyTransform, input: &[u8]) -> Result<(Bytes, HeaderValue), String> {
    let value = if input.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else if edits.from_xml {
        xml::to_json(input)?
    } else {
        serde_json::from_slice(input).map_err(|e| format!("not JSON: {e}"))?
    };
    let value = json::apply(edits, value);
    match &edits.to_xml {
        Some(root) => Ok((
            xml::from_json(&value, root)?.into(),
            HeaderValue::from_static("application/xml; charset=utf-8"),
        )),
        None => Ok((
            serde_json::to_vec(&value).expect("JSON serialises").into(),
            HeaderValue::from_static("application/json"),
        )),
    }
}

/// Whether a body with these headers can be read as text at all (not
/// compressed).
pub fn readable(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The head of a transformed body: its type and length; validators of the
/// old body go.
pub fn retarget(headers: &mut HeaderMap, body: &Bytes, content_type: HeaderValue) {
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::ETAG);
    // Ranges of the upstream's body would not match this one.
    headers.remove(header::ACCEPT_RANGES);
}

/// The response side: status mapping, then body edits.
/// `head`: the request was a HEAD (the response has no body to edit).
pub async fn response(
    transform: &Transform,
    route: &str,
    head: bool,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(edits) = &transform.response else {
        return Ok(response);
    };
    let (mut parts, streamed) = response.into_parts();
    if let Some((_, to)) = edits.status.iter().find(|(from, _)| *from == parts.status) {
        parts.status = *to;
        // RFC 9110: these carry no content.
        if matches!(to.as_u16(), 204 | 304) {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
    }
    let bodyless = head || matches!(parts.status.as_u16(), 204 | 304) || parts.status.is_informational();
    if !edits.edits_body() || bodyless {
        return Ok(Response::from_parts(parts, streamed));
    }
    if !readable(&parts.headers) {
        tracing::info!(
            route,
            reason = "compressed by the upstream",
            "transform: response passed untransformed"
        );
        return Ok(Response::from_parts(parts, streamed));
    }
    let input = match collect_limited(streamed, transform.max_body).await {
        Ok(Collected::Complete(input)) => input,
        Ok(Collected::TooLarge(whole)) => {
            return match transform.on_oversize {
                Oversize::Pass => {
                    tracing::info!(
                        route,
                        limit = transform.max_body,
                        reason = "larger than max_body",
                        "transform: response passed untransformed"
                    );
                    Ok(Response::from_parts(parts, whole))
                }
                Oversize::Refuse => Err(ProxyError::TransformTooLarge {
                    side: "response",
                    limit: transform.max_body,
                }),
            };
        }
        Err(error) => {
            return Err(ProxyError::Upstream {
                endpoint: route.to_owned(),
                source: Box::new(error),
            })
        }
    };
    if input.is_empty() {
        // Nothing to edit (the request side leaves empty bodies alone too).
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    match body(edits, &input) {
        Ok((output, content_type)) => {
            retarget(&mut parts.headers, &output, content_type);
            Ok(Response::from_parts(parts, ProxyBody::full(output)))
        }
        Err(why) => {
            tracing::info!(route, reason = %why, "transform: response passed untransformed");
            Ok(Response::from_parts(parts, ProxyBody::full(input)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example of docs/aggregation.md, both ways.
    #[test]
    fn the_documented_quote_example() {
        let request = BodyTransform {
            set: vec![("/channel".into(), json!("mobile"))],
            to_xml: Some("QuoteRequest".into()),
            ..BodyTransform::default()
        };
        let (xml, content_type) = body(&request, br#"{"@currency": "EUR", "item": [{"sku": "a", "qty": 2}]}"#).unwrap();
        assert_eq!(content_type, "application/xml; charset=utf-8");
        assert_eq!(
            std::str::from_utf8(&xml).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><QuoteRequest currency="EUR"><item><sku>a</sku><qty>2</qty></item><channel>mobile</channel></QuoteRequest>"#
        );
        let response = BodyTransform {
            from_xml: true,
            unwrap: Some("/QuoteResponse".into()),
            moves: vec![("/Total".into(), "/total".into())],
            ..BodyTransform::default()
        };
        let (json, content_type) = body(
            &response,
            b"<QuoteResponse><Total>42.50</Total><Valid>true</Valid></QuoteResponse>",
        )
        .unwrap();
        assert_eq!(content_type, "application/json");
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"total":"42.50","Valid":"true"}"#
        );
    }
}
