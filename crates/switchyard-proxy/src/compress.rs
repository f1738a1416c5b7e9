//! Response compression per route (`compression = { ... }`): the encoding is
//! chosen from the client's `Accept-Encoding` (q-values, then the route's
//! order), and the body is compressed as it streams: input is gathered while
//! the upstream keeps sending and flushed (a sync flush, which every decoder
//! can read up to) whenever it pauses, so SSE events and long polls are not
//! held back. Responses already encoded are never compressed again; an
//! encoded response the client cannot read is decoded instead.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_compression::tokio::write as codec;
use async_compression::Level;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use switchyard_config::{Compression, Encoding};
use tokio::io::AsyncWrite;

use crate::body::{BodyError, ProxyBody};
use crate::error::Side;

/// Compressed output is sent once this much has gathered, even while the
/// upstream keeps sending.
const EMIT_AT: usize = 32 * 1024;

/// What a response needs done, decided from the request and the route.
pub(crate) struct Negotiated {
    /// The encoding the client prefers among the route's, if any.
    wanted: Option<Encoding>,
    /// Encodings the client reads (`*` counts as all).
    accepts: Vec<(String, f32)>,
}

impl Negotiated {
    /// Reads the request's `Accept-Encoding` against the route's settings.
    /// `None`: nothing to do for this request (HEAD).
    pub(crate) fn of(settings: &Compression, method: &Method, headers: &HeaderMap) -> Option<Self> {
        if method == Method::HEAD {
            return None;
        }
        let accepts = switchyard_cache::accepted_codings(headers);
        let q = |name: &str| switchyard_cache::coding_q(&accepts, name);
        // Highest q first; the route's order breaks ties.
        let wanted = settings
            .algorithms
            .iter()
            .map(|e| (*e, q(e.token())))
            .filter(|(_, q)| *q > 0.0)
            .fold(None::<(Encoding, f32)>, |best, (e, q)| match best {
                Some((_, bq)) if bq >= q => best,
                _ => Some((e, q)),
            })
            .map(|(e, _)| e);
        Some(Self { wanted, accepts })
    }

    fn reads(&self, token: &str) -> bool {
        switchyard_cache::coding_q(&self.accepts, token) > 0.0
    }
}

/// Compresses (or, for a client that cannot read its encoding, decodes)
/// `response` as the route and the request call for.
pub(crate) fn apply(
    settings: &Compression,
    negotiated: &Negotiated,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    let bodyless = status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        );
    if bodyless || body.is_end_stream() {
        return Response::from_parts(parts, body);
    }
    let headers = &mut parts.headers;
    let current = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v != "identity");
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform")));
    if no_transform {
        return Response::from_parts(parts, body);
    }
    // The representation depends on Accept-Encoding from here on.
    add_vary(headers);
    let transform = match current {
        // Already encoded: kept if the client reads it, else decoded.
        Some(encoding) => {
            if negotiated.reads(&encoding) {
                return Response::from_parts(parts, body);
            }
            match Encoding::from_token(&encoding) {
                Some(encoding) => Codec::decoder(encoding),
                None => return Response::from_parts(parts, body),
            }
        }
        None => {
            let Some(encoding) = negotiated.wanted else {
                return Response::from_parts(parts, body);
            };
            let length = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if length.is_some_and(|len| len < settings.min_size) || !compressible(settings, headers) {
                return Response::from_parts(parts, body);
            }
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
            Codec::encoder(encoding)
        }
    };
    if transform.decoding {
        headers.remove(header::CONTENT_ENCODING);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    // Another representation: a strong validator would lie.
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !etag.starts_with("W/") {
            if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
    let body = ProxyBody::translated(body, |b| Transcoded::new(b, transform));
    Response::from_parts(parts, body)
}

/// Whether the response's content type is on the route's list.
fn compressible(settings: &Compression, headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    settings
        .content_types
        .iter()
        .any(|pattern| match pattern.strip_suffix("/*") {
            Some(kind) => essence.split('/').next() == Some(kind),
            None => *pattern == essence,
        })
}

fn add_vary(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// A compressor or decompressor writing into a buffer the body drains.
trait Transcode: AsyncWrite + Send + Unpin {
    fn output(&mut self) -> &mut Vec<u8>;
}

macro_rules! transcode {
    ($($codec:ty),*) => {$(
        impl Transcode for $codec {
            fn output(&mut self) -> &mut Vec<u8> {
                self.get_mut()
            }
        }
    )*};
}

transcode!(
    codec::GzipEncoder<Vec<u8>>,
    codec::BrotliEncoder<Vec<u8>>,
    codec::ZstdEncoder<Vec<u8>>,
    codec::ZlibEncoder<Vec<u8>>,
    codec::GzipDecoder<Vec<u8>>,
    codec::BrotliDecoder<Vec<u8>>,
    codec::ZstdDecoder<Vec<u8>>,
    codec::ZlibDecoder<Vec<u8>>
);

/// The transcoder of one response.
struct Codec {
    inner: Box<dyn Transcode>,
    decoding: bool,
}

impl Codec {
    fn encoder(encoding: Encoding) -> Self {
        let out = Vec::new();
        let inner: Box<dyn Transcode> = match encoding {
            Encoding::Gzip => Box::new(codec::GzipEncoder::new(out)),
            // Brotli's default (11) is for offline compression; 4 keeps up with a network.
            Encoding::Brotli => Box::new(codec::BrotliEncoder::with_quality(out, Level::Precise(4))),
            Encoding::Zstd => Box::new(codec::ZstdEncoder::new(out)),
            // HTTP's `deflate` is the zlib format (RFC 9110 section 8.4.1.2).
            Encoding::Deflate => Box::new(codec::ZlibEncoder::new(out)),
        };
        Self { inner, decoding: false }
    }

    fn decoder(encoding: Encoding) -> Self {
        let out = Vec::new();
        let inner: Box<dyn Transcode> = match encoding {
            Encoding::Gzip => Box::new(codec::GzipDecoder::new(out)),
            Encoding::Brotli => Box::new(codec::BrotliDecoder::new(out)),
            Encoding::Zstd => Box::new(codec::ZstdDecoder::new(out)),
            Encoding::Deflate => Box::new(codec::ZlibDecoder::new(out)),
        };
        Self { inner, decoding: true }
    }
}

pin_project! {
    /// A body passed through a [`Codec`].
    struct Transcoded<B> {
        #[pin]
        inner: B,
        codec: Codec,
        // Input written since the last flush.
        unflushed: bool,
        // Trailers seen, sent after the last bytes.
        trailers: Option<HeaderMap>,
        finished: bool,
    }
}

impl<B> Transcoded<B> {
    fn new(inner: B, codec: Codec) -> Self {
        Self {
            inner,
            codec,
            unflushed: false,
            trailers: None,
            finished: false,
        }
    }
}

fn codec_error(error: std::io::Error) -> BodyError {
    BodyError::Failed {
        side: Side::Upstream,
        source: Box::new(error),
    }
}

/// The output gathered so far, as a frame (`None` if there is none).
fn take_output(codec: &mut Codec) -> Option<Frame<Bytes>> {
    let out = codec.inner.output();
    (!out.is_empty()).then(|| Frame::data(Bytes::from(std::mem::take(out))))
}

impl<B: Body<Data = Bytes, Error = BodyError>> Body for Transcoded<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        loop {
            if *this.finished {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        // The writer is a Vec: the codec never waits on it.
                        while !data.is_empty() {
                            let n =
                                ready!(Pin::new(&mut this.codec.inner).poll_write(cx, &data)).map_err(codec_error)?;
                            let _ = data.split_to(n);
                        }
                        *this.unflushed = true;
                        if this.codec.inner.output().len() >= EMIT_AT {
                            if let Some(frame) = take_output(this.codec) {
                                return Poll::Ready(Some(Ok(frame)));
                            }
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            *this.trailers = Some(trailers);
                        }
                    }
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => {
                    ready!(Pin::new(&mut this.codec.inner).poll_shutdown(cx)).map_err(codec_error)?;
                    *this.finished = true;
                    if let Some(frame) = take_output(this.codec) {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Pending => {
                    // The upstream paused: whatever it sent goes out now.
                    if *this.unflushed {
                        ready!(Pin::new(&mut this.codec.inner).poll_flush(cx)).map_err(codec_error)?;
                        *this.unflushed = false;
                    }
                    return match take_output(this.codec) {
                        Some(frame) => Poll::Ready(Some(Ok(frame))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Compression {
        Compression {
            algorithms: vec![Encoding::Brotli, Encoding::Zstd, Encoding::Gzip],
            min_size: 10,
            content_types: vec!["text/*".into(), "application/json".into()],
        }
    }

    fn negotiate(accept: &'static str) -> Option<Encoding> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(accept));
        Negotiated::of(&settings(), &Method::GET, &headers).unwrap().wanted
    }

    #[test]
    fn negotiation_weighs_q_values_then_the_routes_order() {
        assert_eq!(negotiate("gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate("gzip, br"), Some(Encoding::Brotli));
        assert_eq!(negotiate("gzip;q=1, br;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(negotiate("br;q=0, gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate("*"), Some(Encoding::Brotli));
        assert_eq!(negotiate("*;q=0.1, zstd"), Some(Encoding::Zstd));
        assert_eq!(negotiate("identity"), None);
        assert_eq!(negotiate("deflate"), None, "not on the route's list");
        assert_eq!(negotiate(""), None);
    }

    #[test]
    fn content_types_match_exactly_or_by_kind() {
        let mut headers = HeaderMap::new();
        for (content_type, expected) in [
            ("text/html; charset=utf-8", true),
            ("application/json", true),
            ("APPLICATION/JSON", true),
            ("image/png", false),
            ("application/octet-stream", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            assert_eq!(compressible(&settings(), &headers), expected, "{content_type}");
        }
    }
}
