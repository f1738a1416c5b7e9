//! Malformed and hostile requests get the right status, reach no upstream when
//! they should not, and leave the gateway serving.

mod support;

use std::time::Duration;

use support::client::{client, get, raw, Proto};
use support::{Backend, GatewayProcess};

async fn setup() -> (Backend, GatewayProcess) {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
max_header_size = "16KiB"

[[clusters]]
name = "up"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "all"
cluster = "up"
"#,
        backend.addr
    ));
    (backend, gw)
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_and_the_gateway_keeps_serving() {
    let (backend, gw) = setup().await;
    let huge = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(32 * 1024));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "control byte in a header value",
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in a header name",
            b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n".to_vec(),
            400,
        ),
        ("oversized headers", huge.into_bytes(), 431),
        (
            "non-numeric Content-Length",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting Content-Length values",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
        ),
        ("garbage request line", b"HELLO\r\n\r\n".to_vec(), 400),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "chunk size overflowing 64 bits",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n".to_vec(),
            400,
        ),
        (
            "negative Content-Length",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "Content-Length with a sign",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            "space before the colon",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "obsolete line folding",
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bare CR inside a header line",
            b"GET / HTTP/1.1\r\nHost: t\rX-Injected: 1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space inside the request target",
            b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "NUL inside the request target",
            b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "unknown HTTP version",
            b"GET / HTTP/1.7\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
    ];
    assert!(cases.len() >= 15, "a corpus of at least 15 requests");
    for (what, request, want) in cases {
        let answer = raw(gw.addr(), &request, Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), want, "{what}: {answer:?}");
    }
    assert!(
        backend.seen().is_empty(),
        "no malformed request reached the upstream: {:?}",
        backend.seen()
    );
    assert_eq!(
        get(&client(Proto::H1), &gw.url("/"), &[]).await.status,
        200,
        "still serving"
    );
}

/// RFC 9112 section 6.3: with both Content-Length and Transfer-Encoding, the
/// message is framed by Transfer-Encoding alone, the Content-Length is removed
/// before forwarding, and the connection is closed after the response, so
/// bytes hidden behind the chunked body can never be read as a second request
/// (request smuggling) and the upstream never sees both framings. (hyper drops
/// the Content-Length while parsing, so the gateway cannot answer 400 instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let (backend, gw) = setup().await;
    let attack = b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let answer = raw(gw.addr(), attack, Duration::from_secs(5)).await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response, then close: {answer}"
    );
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.path_and_query).collect();
    assert!(
        !paths.iter().any(|p| p.contains("smuggled")),
        "smuggled request reached the upstream: {paths:?}"
    );
    for seen in backend.seen() {
        assert!(
            !seen.headers.contains_key("content-length") || !seen.headers.contains_key("transfer-encoding"),
            "the upstream got both framings: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        get(&client(Proto::H1), &gw.url("/"), &[]).await.status,
        200,
        "still serving"
    );
}
