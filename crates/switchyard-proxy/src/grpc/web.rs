//! gRPC-Web (for browsers) translated to gRPC towards the upstream.
//!
//! A gRPC-Web request is a gRPC request over any HTTP version whose response
//! carries the trailers in the body, as a last length-prefixed frame with the
//! flag `0x80`. In the text variant (`application/grpc-web-text`) both bodies
//! are base64. Upstream the call is plain gRPC over HTTP/2: the content type
//! loses its `-web`, `te: trailers` is added, a text request body is decoded
//! (browsers cannot stream request bodies, so it is read whole first), and
//! on the way back the trailers become that last frame (base64 too in text
//! mode, encoded as bytes arrive, three at a time).

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which gRPC-Web encoding a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Text,
}

/// The gRPC-Web mode of a request, from its content type.
pub fn mode(headers: &HeaderMap) -> Option<Mode> {
    let content_type = headers.get(header::CONTENT_TYPE)?.as_bytes();
    if content_type.starts_with(b"application/grpc-web-text") {
        Some(Mode::Text)
    } else if content_type.starts_with(b"application/grpc-web") {
        Some(Mode::Binary)
    } else {
        None
    }
}

/// Rewrites the request head for a gRPC upstream.
pub fn prepare_request(headers: &mut HeaderMap, mode: Mode) {
    let suffix = suffix(headers.get(header::CONTENT_TYPE), mode);
    let grpc = format!("application/grpc{suffix}");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&grpc).unwrap_or(HeaderValue::from_static("application/grpc")),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(http::HeaderName::from_static("x-grpc-web"));
}

/// The response head for the browser: its own content type back, no length
/// (the body changes).
pub fn prepare_response(headers: &mut HeaderMap, request_content_type: &HeaderValue) {
    headers.insert(header::CONTENT_TYPE, request_content_type.clone());
    headers.remove(header::CONTENT_LENGTH);
}

/// `+proto` (or whatever follows the base type), kept across the rewrite.
fn suffix(content_type: Option<&HeaderValue>, mode: Mode) -> String {
    let base: &[u8] = match mode {
        Mode::Text => b"application/grpc-web-text",
        Mode::Binary => b"application/grpc-web",
    };
    content_type
        .and_then(|v| v.as_bytes().strip_prefix(base))
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .unwrap_or_default()
        .to_owned()
}

/// Decodes a whole text-mode request body: base64, possibly in several
/// pieces each with its own padding.
pub fn decode_text(chunks: &[Bytes]) -> Result<Bytes, &'static str> {
    let mut text: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    text.retain(|b| !b.is_ascii_whitespace());
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut rest = &text[..];
    while !rest.is_empty() {
        // A piece ends after its padding, or at the end of the body.
        let end = match rest.iter().position(|&b| b == b'=') {
            Some(first_pad) => {
                let pads = rest[first_pad..].iter().take_while(|&&b| b == b'=').count();
                first_pad + pads
            }
            None => rest.len(),
        };
        BASE64
            .decode_vec(&rest[..end], &mut out)
            .map_err(|_| "the grpc-web-text body is not base64")?;
        rest = &rest[end..];
    }
    Ok(out.into())
}

/// The trailers as gRPC-Web's last frame: flag `0x80`, length, `name:value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    frame.freeze()
}

pin_project! {
    /// A gRPC response body as gRPC-Web: data as it comes (base64 in text
    /// mode), trailers as the last frame.
    pub struct WebBody<B> {
        #[pin]
        inner: B,
        mode: Mode,
        // Text mode: up to two bytes waiting for a whole base64 group.
        carry: Vec<u8>,
        done: bool,
        // Counts the status in the trailers (which become body bytes here,
        // out of sight of the response's own counter).
        metrics: Option<std::sync::Arc<super::GrpcMetrics>>,
    }
}

impl<B> WebBody<B> {
    pub fn new(inner: B, mode: Mode) -> Self {
        Self {
            inner,
            mode,
            carry: Vec::new(),
            done: false,
            metrics: None,
        }
    }

    /// Also counts the call's `grpc-status` trailer in `metrics`.
    pub fn counting(mut self, metrics: std::sync::Arc<super::GrpcMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Base64 of `carry` + `data` in whole groups, leaving the rest in `carry`;
/// with `last`, everything, padded.
fn encode(carry: &mut Vec<u8>, data: &[u8], last: bool) -> Bytes {
    carry.extend_from_slice(data);
    let whole = if last { carry.len() } else { carry.len() / 3 * 3 };
    let encoded = BASE64.encode(&carry[..whole]);
    carry.drain(..whole);
    Bytes::from(encoded)
}

impl<B> Body for WebBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    *this.done = true;
                    if *this.mode == Mode::Text && !this.carry.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(encode(this.carry, &[], true)))));
                    }
                    return Poll::Ready(None);
                }
            };
            let out = match frame.into_data() {
                Ok(data) => match this.mode {
                    Mode::Binary => data,
                    Mode::Text => encode(this.carry, &data, false),
                },
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else { continue };
                    *this.done = true;
                    if let (Some(metrics), Some(status)) = (this.metrics.as_ref(), trailers.get(&super::GRPC_STATUS)) {
                        metrics.count(status);
                    }
                    let block = trailer_frame(&trailers);
                    match this.mode {
                        Mode::Binary => block,
                        Mode::Text => encode(this.carry, &block, true),
                    }
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn upstream(frames: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok)))
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("ok"));
        t
    }

    fn frames() -> Vec<Frame<Bytes>> {
        // Data split at awkward places: the carried bytes keep groups whole.
        vec![
            Frame::data(Bytes::from_static(b"\0\0\0\0")),
            Frame::data(Bytes::from_static(b"\x05hello")),
            Frame::trailers(trailers()),
        ]
    }

    #[tokio::test]
    async fn binary_mode_appends_the_trailers_as_a_frame() {
        let out = WebBody::new(upstream(frames()), Mode::Binary)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let block = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        let mut expected = b"\0\0\0\0\x05hello\x80".to_vec();
        expected.extend_from_slice(&(block.len() as u32).to_be_bytes());
        expected.extend_from_slice(block);
        assert_eq!(&out[..], &expected[..]);
    }

    #[tokio::test]
    async fn text_mode_is_base64_of_the_binary_stream() {
        let text = WebBody::new(upstream(frames()), Mode::Text)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let binary = WebBody::new(upstream(frames()), Mode::Binary)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(BASE64.decode(&text).unwrap(), binary.to_vec());
    }

    #[test]
    fn text_requests_decode_whole_or_in_padded_pieces() {
        let one = BASE64.encode(b"\0\0\0\0\x03abc");
        assert_eq!(&decode_text(&[Bytes::from(one)]).unwrap()[..], b"\0\0\0\0\x03abc");
        let pieces = format!("{}{}", BASE64.encode(b"ab"), BASE64.encode(b"cde"));
        assert_eq!(&decode_text(&[Bytes::from(pieces)]).unwrap()[..], b"abcde");
        assert!(decode_text(&[Bytes::from_static(b"!!!")]).is_err());
    }

    #[test]
    fn content_types_map_both_ways() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web-text+proto"),
        );
        assert_eq!(mode(&headers), Some(Mode::Text));
        prepare_request(&mut headers, Mode::Text);
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(headers[header::TE], "trailers");
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc-web"));
        assert_eq!(mode(&headers), Some(Mode::Binary));
    }
}
