//! `https` listeners with real TLS clients: SNI picks the certificate (exact,
//! wildcard, default), ALPN offers h2 and http/1.1, only TLS 1.2 and 1.3 are
//! spoken, client certificates are verified (mTLS) and their subject reaches
//! the upstream, renewed certificates are served after SIGHUP, and bad
//! certificate files are refused at `check`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{Backend, GatewayProcess};
use tokio_rustls::TlsConnector;

/// A test CA and certificates it signs, written as PEM files into a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Switchyard Test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
            ca_params,
            ca_key,
        }
    }

    /// Issues a certificate for `names` (common name `cn`), writes
    /// `{file}.pem` and `{file}.key`, and returns its DER with its key.
    fn issue(&self, file: &str, cn: &str, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
        let der_key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.der().clone(), der_key)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting the test CA, optionally with a client certificate.
fn connector(
    pki: &Pki,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// What a handshake to `addr` as `name` got: the server's certificate and
/// the negotiated ALPN protocol.
async fn handshake(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// GET `path` over an established TLS stream (HTTP/1.1); status and the body.
async fn get_over(
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn config(backend: &Backend, tls: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
protocol = "https"
tls = {tls}

[[clusters]]
name = "api"
endpoints = [{{ address = "{}" }}]

[[routes]]
cluster = "api"
"#,
        backend.addr
    )
}

fn served_cert(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_offers_h2() {
    let pki = Pki::new();
    let (a_der, _) = pki.issue("a", "a.test", &["a.test"]);
    let (wild_der, _) = pki.issue("wild", "wild", &["*.b.test"]);
    let backend = Backend::start("b").await;
    let tls = format!(
        r#"{{ certificates = [{{ cert = "{}", key = "{}" }}, {{ cert = "{}", key = "{}" }}] }}"#,
        pki.path("a.pem"),
        pki.path("a.key"),
        pki.path("wild.pem"),
        pki.path("wild.key")
    );
    let gw = GatewayProcess::start(&config(&backend, &tls));
    let addr = gw.addr();

    let h1 = connector(&pki, None, &[b"http/1.1"]);
    let exact = handshake(&h1, addr, "a.test").await.unwrap();
    assert_eq!(served_cert(&exact), a_der, "exact name");
    let wildcard = handshake(&h1, addr, "api.b.test").await.unwrap();
    assert_eq!(served_cert(&wildcard), wild_der, "wildcard name");
    let (status, body) = get_over(wildcard, "api.b.test", "/hello").await;
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert!(echoed["headers"]["x-client-cert-subject"].is_null());
    // A name no certificate covers gets the first one (and the client, which
    // checks names, refuses it).
    assert!(handshake(&h1, addr, "other.test").await.is_err());

    let h2 = connector(&pki, None, &[b"h2", b"http/1.1"]);
    let stream = handshake(&h2, addr, "a.test").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // TLS 1.2 still works; nothing older is offered by rustls at all.
    let tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    let stream = handshake(&TlsConnector::from(Arc::new(tls12)), addr, "a.test")
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_verified_and_forwarded() {
    let pki = Pki::new();
    pki.issue("server", "gw.test", &["gw.test"]);
    let client_cert = pki.issue("client", "billing-service", &["billing.internal"]);
    let backend = Backend::start("b").await;
    let tls = format!(
        r#"{{ certificates = [{{ cert = "{}", key = "{}" }}], client_ca = "{}" }}"#,
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    );
    let gw = GatewayProcess::start(&config(&backend, &tls));
    let addr = gw.addr();

    // Without a certificate the handshake (or the first read) fails.
    let anonymous = connector(&pki, None, &[b"http/1.1"]);
    let refused = match handshake(&anonymous, addr, "gw.test").await {
        Err(_) => true,
        Ok(stream) => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = http::Request::get("/")
                .header("host", "gw.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(request).await.is_err()
        }
    };
    assert!(refused, "a client without a certificate is refused");
    assert!(backend.seen().is_empty());

    let with_cert = connector(&pki, Some(client_cert), &[b"http/1.1"]);
    let stream = handshake(&with_cert, addr, "gw.test").await.unwrap();
    let (status, body) = get_over(stream, "gw.test", "/").await;
    assert_eq!(status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        echoed["headers"]["x-client-cert-subject"]
            .as_str()
            .unwrap()
            .contains("billing-service"),
        "{echoed}"
    );
    assert_eq!(echoed["headers"]["x-client-cert-san"], "DNS:billing.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_after_sighup_and_open_connections_stay() {
    let pki = Pki::new();
    let (old_der, _) = pki.issue("site", "site.test", &["site.test"]);
    let backend = Backend::start("b").await;
    let tls = format!(
        r#"{{ certificates = [{{ cert = "{}", key = "{}" }}] }}"#,
        pki.path("site.pem"),
        pki.path("site.key")
    );
    let gw = GatewayProcess::start(&config(&backend, &tls));
    let addr = gw.addr();
    let client = connector(&pki, None, &[b"http/1.1"]);
    let open = handshake(&client, addr, "site.test").await.unwrap();
    assert_eq!(served_cert(&open), old_der);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(open)).await.unwrap();
    tokio::spawn(conn);

    let (new_der, _) = pki.issue("site", "site.test", &["site.test"]);
    assert_ne!(new_der, old_der);
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stream = handshake(&client, addr, "site.test").await.unwrap();
        if served_cert(&stream) == new_der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload still works.
    let request = http::Request::get("/")
        .header("host", "site.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
}

#[test]
fn check_refuses_missing_and_mismatched_certificates() {
    let pki = Pki::new();
    pki.issue("one", "one.test", &["one.test"]);
    pki.issue("two", "two.test", &["two.test"]);
    let file = pki.path("bad.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[listeners]]
name = "secure"
listen = "127.0.0.1:8443"
protocol = "https"
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}, {{ cert = "{}", key = "{}" }}] }}

[[listeners]]
name = "plain"
listen = "127.0.0.1:8444"
protocol = "https"
"#,
            pki.path("one.pem"),
            pki.path("two.key"),
            pki.path("missing.pem"),
            pki.path("one.key"),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", &file])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("two.key does not match") && text.contains("one.pem"),
        "{text}"
    );
    assert!(text.contains("missing.pem"), "{text}");
    assert!(text.contains("an https listener needs `tls"), "{text}");
    assert!(Path::new(&pki.path("one.pem")).exists());
}

/// A TLS upstream answering with the HTTP version it saw and whether a client
/// certificate was presented.
async fn tls_upstream(pki: &Pki, require_client_cert: bool) -> std::net::SocketAddr {
    let (cert, key) = pki.issue("upstream", "upstream.test", &["upstream.test"]);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(vec![cert], key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let client_cert = stream.get_ref().1.peer_certificates().is_some();
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("{:?} client_cert={client_cert}", req.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn upstream_config(upstream: std::net::SocketAddr, cluster_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "secure"
endpoints = [{{ address = "{upstream}" }}]
{cluster_extra}

[[routes]]
cluster = "secure"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_tls_with_a_ca_sni_http2_and_client_certificates() {
    let pki = Pki::new();
    let upstream = tls_upstream(&pki, false).await;
    let client = support::client::client(support::client::Proto::H1);
    let tls = format!(
        r#"tls = {{ ca = "{}", server_name = "upstream.test" }}"#,
        pki.path("ca.pem")
    );

    let h1 = GatewayProcess::start(&upstream_config(upstream, &tls));
    let reply = support::client::get(&client, &h1.url("/"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "HTTP/1.1 client_cert=false".to_owned())
    );

    let h2 = GatewayProcess::start(&upstream_config(upstream, &format!("protocol = \"http2\"\n{tls}")));
    let reply = support::client::get(&client, &h2.url("/"), &[]).await;
    assert_eq!(reply.text(), "HTTP/2.0 client_cert=false", "h2 negotiated by ALPN");

    // Verified against the system's roots, the test CA is unknown: 502.
    let system = GatewayProcess::start(&upstream_config(upstream, r#"tls = { server_name = "upstream.test" }"#));
    assert_eq!(support::client::get(&client, &system.url("/"), &[]).await.status, 502);
    // The wrong name fails verification too.
    let wrong = GatewayProcess::start(&upstream_config(
        upstream,
        &format!(
            r#"tls = {{ ca = "{}", server_name = "other.test" }}"#,
            pki.path("ca.pem")
        ),
    ));
    assert_eq!(support::client::get(&client, &wrong.url("/"), &[]).await.status, 502);

    // An upstream that requires client certificates (mTLS).
    let strict = tls_upstream(&pki, true).await;
    pki.issue("gateway", "gateway", &["gateway.internal"]);
    let without = GatewayProcess::start(&upstream_config(strict, &tls));
    assert_eq!(support::client::get(&client, &without.url("/"), &[]).await.status, 502);
    let with = GatewayProcess::start(&upstream_config(
        strict,
        &format!(
            r#"tls = {{ ca = "{}", server_name = "upstream.test", client_cert = "{}", client_key = "{}" }}"#,
            pki.path("ca.pem"),
            pki.path("gateway.pem"),
            pki.path("gateway.key")
        ),
    ));
    let reply = support::client::get(&client, &with.url("/"), &[]).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "HTTP/1.1 client_cert=true".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_can_match_on_the_verified_client_certificate() {
    let pki = Pki::new();
    pki.issue("server", "gw.test", &["gw.test"]);
    let billing_cert = pki.issue("billing", "billing-service", &["billing.internal"]);
    let billing = Backend::start("billing").await;
    let public = Backend::start("public").await;
    let config = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
protocol = "https"
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}], client_ca = "{}", client_auth = "optional" }}

[[clusters]]
name = "billing"
endpoints = [{{ address = "{}" }}]

[[clusters]]
name = "public"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "billing-only"
match = {{ headers = [{{ name = "x-client-cert-subject", regex = "CN=billing-service" }}] }}
cluster = "billing"

[[routes]]
name = "everyone"
cluster = "public"
"#,
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
        billing.addr,
        public.addr
    );
    let gw = GatewayProcess::start(&config);
    let addr = gw.addr();
    let with_cert = connector(&pki, Some(billing_cert), &[b"http/1.1"]);
    let (status, body) = get_over(handshake(&with_cert, addr, "gw.test").await.unwrap(), "gw.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"backend\":\"billing\""), "{body}");

    // No certificate (allowed: optional), and a forged header: the default route.
    let anonymous = connector(&pki, None, &[b"http/1.1"]);
    let stream = handshake(&anonymous, addr, "gw.test").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/")
        .header("host", "gw.test")
        .header("x-client-cert-subject", "CN=billing-service")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-backend"], "public");
    assert!(billing.seen().len() == 1);
    assert!(
        public.seen()[0].headers.get("x-client-cert-subject").is_none(),
        "the forged header is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_files_are_picked_up_without_a_signal() {
    let pki = Pki::new();
    let (old_der, _) = pki.issue("site", "site.test", &["site.test"]);
    let backend = Backend::start("b").await;
    let tls = format!(
        r#"{{ certificates = [{{ cert = "{}", key = "{}" }}] }}"#,
        pki.path("site.pem"),
        pki.path("site.key")
    );
    let gw = GatewayProcess::start(&config(&backend, &tls));
    let client = connector(&pki, None, &[b"http/1.1"]);
    assert_eq!(
        served_cert(&handshake(&client, gw.addr(), "site.test").await.unwrap()),
        old_der
    );
    let (new_der, _) = pki.issue("site", "site.test", &["site.test"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stream = handshake(&client, gw.addr(), "site.test").await.unwrap();
        if served_cert(&stream) == new_der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed files were not picked up:\n{}",
            gw.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gw.wait_log(Duration::from_secs(10), |v| v["trigger"] == "certificate change")
            .await,
        "{}",
        gw.dump_logs()
    );
}
