//! Static file routes: content types, index files and the `/dir` redirect,
//! validators and conditional requests, single and multipart byte ranges,
//! HEAD, precompressed siblings, listings, and every traversal attempt
//! (`..`, encoded `%2e%2e`, symlinks out of the root) refused.

mod support;

use std::path::Path;

use support::client::{client, get, raw, Proto};
use support::GatewayProcess;

/// A directory tree to serve, and a secret next to it (outside the root).
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("public");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("open")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(root.join("app.js"), "console.log('hi');").unwrap();
    std::fs::write(root.join("style.css"), "body{}").unwrap();
    std::fs::write(root.join("data.json"), "{\"a\":1}").unwrap();
    let digits: String = (0..100).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
    std::fs::write(root.join("digits.txt"), &digits).unwrap();
    std::fs::write(root.join("open/one.txt"), "1").unwrap();
    std::fs::write(root.join("open/two words.txt"), "2").unwrap();
    // A precompressed sibling (its bytes only need to differ).
    std::fs::write(root.join("big.txt"), "plain ".repeat(1000)).unwrap();
    std::fs::write(root.join("big.txt.gz"), b"\x1f\x8bgzip-bytes").unwrap();
    std::fs::write(root.join("big.txt.br"), b"brotli-bytes").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("app.js"), root.join("alias.js")).unwrap();
    dir
}

fn gateway(root: &Path) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "listed"
match = {{ path_prefix = "/open/" }}
static = {{ root = "{root}", listing = true }}

[[routes]]
name = "site"
static = {{ root = "{root}" }}
"#,
        root = root.display()
    ))
}

#[tokio::test]
async fn files_come_with_their_type_and_validators() {
    let dir = tree();
    let gw = gateway(&dir.path().join("public"));
    let c = client(Proto::H1);

    for (path, content_type, body) in [
        ("/app.js", "text/javascript; charset=utf-8", "console.log('hi');"),
        ("/style.css", "text/css; charset=utf-8", "body{}"),
        ("/data.json", "application/json", "{\"a\":1}"),
        ("/", "text/html; charset=utf-8", "<h1>home</h1>"),
        ("/docs/", "text/html; charset=utf-8", "<h1>docs</h1>"),
        // A symlink inside the root is followed.
        ("/alias.js", "text/javascript; charset=utf-8", "console.log('hi');"),
    ] {
        let reply = get(&c, &gw.url(path), &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(reply.text(), body, "{path}");
        assert!(reply.header("etag").is_some_and(|e| e.starts_with('"')), "{path}");
        assert!(reply.header("last-modified").is_some(), "{path}");
        assert_eq!(reply.header("content-length"), Some(body.len().to_string().as_str()));
    }

    // A directory without its slash is redirected to it (query kept).
    let reply = get(&c, &gw.url("/docs?x=1"), &[]).await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("/docs/?x=1"));

    // Conditional requests.
    let first = get(&c, &gw.url("/app.js"), &[]).await;
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    let reply = get(&c, &gw.url("/app.js"), &[("if-none-match", &etag)]).await;
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("etag"), Some(etag.as_str()));
    let reply = get(&c, &gw.url("/app.js"), &[("if-modified-since", &modified)]).await;
    assert_eq!(reply.status, 304);
    let reply = get(&c, &gw.url("/app.js"), &[("if-none-match", "\"stale\"")]).await;
    assert_eq!(reply.status, 200);
    let reply = get(&c, &gw.url("/app.js"), &[("if-match", "\"stale\"")]).await;
    assert_eq!(reply.status, 412);
    assert_eq!(reply.json()["error"]["code"], "precondition_failed");

    // HEAD: the headers, no body.
    let request = http::Request::head(gw.url("/digits.txt"))
        .body(support::client::empty())
        .unwrap();
    let reply = support::client::send(&c, request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("100"));
    assert!(reply.body.is_empty());

    // A file changed on disk is served changed once the small-file cache's
    // second has passed.
    std::fs::write(dir.path().join("public/app.js"), "console.log('changed');").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let reply = get(&c, &gw.url("/app.js"), &[]).await;
    assert_eq!(reply.text(), "console.log('changed');");
    assert_ne!(reply.header("etag"), Some(etag.as_str()));

    // Other methods are refused with the allowed ones.
    let request = http::Request::post(gw.url("/app.js"))
        .body(support::client::empty())
        .unwrap();
    let reply = support::client::send(&c, request).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn byte_ranges_single_multiple_and_unsatisfiable() {
    let dir = tree();
    let gw = gateway(&dir.path().join("public"));
    let c = client(Proto::H2);
    let url = gw.url("/digits.txt");

    let reply = get(&c, &url, &[("range", "bytes=10-14")]).await;
    assert_eq!(reply.status, 206);
    assert_eq!(reply.header("content-range"), Some("bytes 10-14/100"));
    assert_eq!(reply.text(), "01234");
    let reply = get(&c, &url, &[("range", "bytes=-3")]).await;
    assert_eq!(reply.text(), "789");
    assert_eq!(reply.header("content-range"), Some("bytes 97-99/100"));

    // Two ranges: a multipart/byteranges body with each part's range.
    let reply = get(&c, &url, &[("range", "bytes=0-1, 95-")]).await;
    assert_eq!(reply.status, 206);
    let content_type = reply.header("content-type").unwrap().to_owned();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("a multipart answer");
    let body = reply.text();
    assert_eq!(reply.header("content-length"), Some(body.len().to_string().as_str()));
    let parts: Vec<&str> = body
        .split(&format!("--{boundary}"))
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "--")
        .collect();
    assert_eq!(parts.len(), 2, "{body}");
    assert!(parts[0].contains("content-range: bytes 0-1/100") && parts[0].ends_with("\r\n\r\n01"));
    assert!(parts[1].contains("content-range: bytes 95-99/100") && parts[1].ends_with("\r\n\r\n56789"));

    // Beyond the end: 416 naming the length.
    let reply = get(&c, &url, &[("range", "bytes=200-300")]).await;
    assert_eq!(reply.status, 416);
    assert_eq!(reply.header("content-range"), Some("bytes */100"));

    // If-Range with a stale validator: the whole file instead.
    let reply = get(&c, &url, &[("range", "bytes=0-4"), ("if-range", "\"old\"")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 100);
}

#[tokio::test]
async fn precompressed_siblings_and_listings() {
    let dir = tree();
    let gw = gateway(&dir.path().join("public"));
    let c = client(Proto::H1);

    let reply = get(&c, &gw.url("/big.txt"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(reply.header("content-encoding"), Some("br"), "br is preferred");
    assert_eq!(&reply.body[..], b"brotli-bytes");
    assert_eq!(reply.header("vary"), Some("accept-encoding"));
    assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
    let reply = get(&c, &gw.url("/big.txt"), &[("accept-encoding", "gzip, br;q=0")]).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let reply = get(&c, &gw.url("/big.txt"), &[]).await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(reply.body.len(), 6000);
    assert_eq!(reply.header("vary"), Some("accept-encoding"));

    // Listing is on for /open/ only, with names escaped and linked.
    let reply = get(&c, &gw.url("/open/"), &[]).await;
    assert_eq!(reply.status, 200);
    let html = reply.text();
    assert!(html.contains("<a href=\"one.txt\">one.txt</a>"), "{html}");
    assert!(html.contains("<a href=\"two%20words.txt\">two words.txt</a>"), "{html}");
    let reply = get(&c, &gw.url("/open/two%20words.txt"), &[]).await;
    assert_eq!(reply.text(), "2");
    // Elsewhere a directory without an index is not listed.
    std::fs::create_dir(dir.path().join("public/empty")).unwrap();
    assert_eq!(get(&c, &gw.url("/empty/"), &[]).await.status, 404);
}

#[tokio::test]
async fn nothing_outside_the_root_is_served() {
    let dir = tree();
    let gw = gateway(&dir.path().join("public"));
    let c = client(Proto::H1);
    // Through the HTTP client (which keeps these paths as written)...
    for path in [
        "/leak.txt",
        "/%2e%2e/secret.txt",
        "/docs/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/missing.txt",
    ] {
        let reply = get(&c, &gw.url(path), &[]).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(!reply.text().contains("top secret"), "{path}");
    }
    // ...and raw, with a literal `..` no client library would send.
    let answer = raw(
        gw.addr(),
        b"GET /../secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("top secret"), "{answer}");
}
