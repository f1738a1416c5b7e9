//! Route authentication with real tokens, keys and password hashes: the JWT
//! accept/reject matrix (expired, wrong audience, wrong key, `alg: none`,
//! HS-with-the-RSA-public-key confusion), ES256 and EdDSA keys, JWK-set
//! rotation, API keys, basic auth, authorization rules, claims forwarded
//! upstream, and rate limits keyed by the authenticated identity.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::client::{client, get, Proto, Reply};
use support::{Backend, GatewayProcess};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://id.example", "aud": "api", "exp": now() + 300, "role": "admin", "tenant": "t1"})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa1.key")).unwrap()
}

fn config(backend: &Backend, auth: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "protected"
cluster = "api"
auth = {auth}
{extra}
"#,
        backend.addr
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn refusal(reply: &Reply) -> (u16, String) {
    let challenge = reply
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ");
    (reply.status.as_u16(), challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_accept_reject_matrix_with_an_rsa_public_key() {
    let backend = Backend::start("b").await;
    let auth = format!(
        r#"{{ jwt = {{ issuer = "https://id.example", audiences = ["api"], public_key_file = "{}", forward_claims = {{ sub = "x-user-id", role = "x-user-role" }} }}, identity_header = "x-auth-identity" }}"#,
        fixture("rsa1.pub").display()
    );
    let gw = GatewayProcess::start(&config(&backend, &auth, ""));
    let client = client(Proto::H1);
    let url = gw.url("/orders");
    let call = |token: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            get(
                &client,
                &url,
                &[("authorization", &bearer(&token)), ("x-user-id", "forged")],
            )
            .await
        }
    };

    let ok = call(sign(Algorithm::RS256, &rsa1(), None, &claims())).await;
    assert_eq!(ok.status, 200);
    let seen = backend.seen().pop().unwrap();
    assert_eq!(seen.headers["x-user-id"], "alice", "the forged header was replaced");
    assert_eq!(seen.headers["x-user-role"], "admin");
    assert_eq!(seen.headers["x-auth-identity"], "alice");
    assert_eq!(
        call(sign(Algorithm::PS256, &rsa1(), None, &claims())).await.status,
        200,
        "PS256"
    );

    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let (status, challenge) = refusal(&call(sign(Algorithm::RS256, &rsa1(), None, &expired)).await);
    assert_eq!(status, 401);
    assert!(challenge.contains("token expired"), "{challenge}");

    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("billing");
    let (status, challenge) = refusal(&call(sign(Algorithm::RS256, &rsa1(), None, &wrong_aud)).await);
    assert_eq!(
        (status, challenge.contains("wrong audience")),
        (401, true),
        "{challenge}"
    );

    let other_key = EncodingKey::from_rsa_pem(&read("rsa2.key")).unwrap();
    let (status, challenge) = refusal(&call(sign(Algorithm::RS256, &other_key, None, &claims())).await);
    assert_eq!(
        (status, challenge.contains("bad signature")),
        (401, true),
        "{challenge}"
    );

    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims().to_string())
    );
    assert_eq!(call(none).await.status, 401, "alg none");

    // Algorithm confusion: an HS256 token whose HMAC key is the RSA public key.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&read("rsa1.pub")),
        None,
        &claims(),
    );
    let (status, challenge) = refusal(&call(confused).await);
    assert_eq!((status, challenge.contains("not allowed")), (401, true), "{challenge}");

    let missing = get(&client, &url, &[]).await;
    let (status, challenge) = refusal(&missing);
    assert_eq!((status, challenge.as_str()), (401, "Bearer"));
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    assert_eq!(
        backend.seen().len(),
        2,
        "only the two valid tokens reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_keys_and_claim_rules() {
    let backend = Backend::start("b").await;
    let ec = format!(
        r#"{{ jwt = {{ public_key_file = "{}" }}, require = {{ claims = {{ role = "admin" }} }} }}"#,
        fixture("ec.pub").display()
    );
    let ed = format!(
        r#"{{ jwt = {{ public_key_file = "{}" }} }}"#,
        fixture("ed.pub").display()
    );
    let ec_gw = GatewayProcess::start(&config(&backend, &ec, ""));
    let ed_gw = GatewayProcess::start(&config(&backend, &ed, ""));
    let client = client(Proto::H1);

    let ec_key = EncodingKey::from_ec_pem(&read("ec.key")).unwrap();
    let token = sign(Algorithm::ES256, &ec_key, None, &claims());
    assert_eq!(
        get(&client, &ec_gw.url("/"), &[("authorization", &bearer(&token))])
            .await
            .status,
        200
    );
    let mut viewer = claims();
    viewer["role"] = json!("viewer");
    let token = sign(Algorithm::ES256, &ec_key, None, &viewer);
    let forbidden = get(&client, &ec_gw.url("/"), &[("authorization", &bearer(&token))]).await;
    assert_eq!(forbidden.status, 403, "authenticated but not allowed");
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");

    let ed_key = EncodingKey::from_ed_pem(&read("ed.key")).unwrap();
    let token = sign(Algorithm::EdDSA, &ed_key, None, &claims());
    assert_eq!(
        get(&client, &ed_gw.url("/"), &[("authorization", &bearer(&token))])
            .await
            .status,
        200
    );
    // An ES256 token is refused by the Ed25519 route.
    let token = sign(Algorithm::ES256, &ec_key, None, &claims());
    assert_eq!(
        get(&client, &ed_gw.url("/"), &[("authorization", &bearer(&token))])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwk_set_is_picked_up() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, read("jwks-k1.json")).unwrap();
    let auth = format!(
        r#"{{ jwt = {{ jwks_file = "{}", jwks_refresh = "1h", audiences = ["api"] }} }}"#,
        jwks.display()
    );
    let gw = GatewayProcess::start(&config(&backend, &auth, ""));
    let client = client(Proto::H1);
    let k1 = sign(Algorithm::RS256, &rsa1(), Some("k1"), &claims());
    assert_eq!(
        get(&client, &gw.url("/"), &[("authorization", &bearer(&k1))])
            .await
            .status,
        200
    );
    let rsa2 = EncodingKey::from_rsa_pem(&read("rsa2.key")).unwrap();
    let k2 = sign(Algorithm::RS256, &rsa2, Some("k2"), &claims());
    let (status, challenge) = refusal(&get(&client, &gw.url("/"), &[("authorization", &bearer(&k2))]).await);
    assert_eq!(
        (status, challenge.contains("unknown key id k2")),
        (401, true),
        "{challenge}"
    );

    // The issuer rotates: k2 appears. A token naming it triggers a re-read
    // (the periodic one is an hour away).
    std::fs::write(&jwks, read("jwks-k1-k2.json")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&client, &gw.url("/"), &[("authorization", &bearer(&k2))])
            .await
            .status;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never picked up:\n{}",
            gw.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&client, &gw.url("/"), &[("authorization", &bearer(&k1))])
            .await
            .status,
        200
    );
    assert!(gw.count_logs(|v| v["message"] == "JWK set reloaded") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_basic_auth_rules_and_identity_rate_limits() {
    let backend = Backend::start("b").await;
    let sha = |key: &str| hex::encode(Sha256::digest(key.as_bytes()));
    let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
    let argon_hash = {
        use argon2::PasswordHasher;
        argon2::Argon2::default().hash_password(b"hunter2").unwrap().to_string()
    };
    let auth = format!(
        r#"{{ api_keys = {{ header = "x-api-key", query = "api_key", keys = [{{ id = "ci", sha256 = "{}" }}, {{ id = "intern", sha256 = "{}" }}] }}, basic = {{ realm = "ops", users = [{{ name = "alice", hash = "{bcrypt_hash}" }}, {{ name = "bob", hash = "{argon_hash}" }}] }}, require = {{ identities = ["ci", "alice", "bob"] }}, identity_header = "x-auth-identity" }}"#,
        sha("key-ci"),
        sha("key-intern"),
    );
    let gw = GatewayProcess::start(&config(
        &backend,
        &auth,
        r#"rate_limit = { key = "api_key", rate = 3, per = "1m" }"#,
    ));
    let client = client(Proto::H1);
    let url = gw.url("/");

    assert_eq!(get(&client, &url, &[("x-api-key", "key-ci")]).await.status, 200);
    assert_eq!(backend.seen().pop().unwrap().headers["x-auth-identity"], "ci");
    assert_eq!(
        get(&client, &gw.url("/?api_key=key-ci"), &[]).await.status,
        200,
        "by query"
    );
    let (status, _) = refusal(&get(&client, &url, &[("x-api-key", "key-nope")]).await);
    assert_eq!(status, 401);
    assert_eq!(
        get(&client, &url, &[("x-api-key", "key-intern")]).await.status,
        403,
        "not in require"
    );

    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    assert_eq!(
        get(&client, &url, &[("authorization", &basic("alice", "s3cret"))])
            .await
            .status,
        200,
        "bcrypt"
    );
    assert_eq!(
        get(&client, &url, &[("authorization", &basic("bob", "hunter2"))])
            .await
            .status,
        200,
        "argon2"
    );
    let wrong = get(&client, &url, &[("authorization", &basic("alice", "guess"))]).await;
    let (status, challenge) = refusal(&wrong);
    assert_eq!(status, 401);
    assert!(challenge.contains("Basic realm=\"ops\""), "{challenge}");
    // Without credentials, every accepted method is offered.
    let (status, challenge) = refusal(&get(&client, &url, &[]).await);
    assert_eq!(status, 401);
    assert!(
        challenge.contains("Basic realm") && challenge.contains("ApiKey"),
        "{challenge}"
    );

    // The rate limit counts per identity: ci has used 2 of 3.
    assert_eq!(get(&client, &url, &[("x-api-key", "key-ci")]).await.status, 200);
    assert_eq!(get(&client, &url, &[("x-api-key", "key-ci")]).await.status, 429);
    assert_eq!(
        get(&client, &url, &[("authorization", &basic("alice", "s3cret"))])
            .await
            .status,
        200,
        "alice has her own bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwk_set_is_fetched_from_a_url_and_refetched_on_rotation() {
    use std::sync::{Arc, Mutex};
    let served = Arc::new(Mutex::new(read("jwks-k1.json")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (served, fetches) = (served.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (served, fetches) = (served.clone(), fetches.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let body = served.lock().unwrap().clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    }
    let backend = Backend::start("b").await;
    let auth = format!(r#"{{ jwt = {{ jwks_url = "http://{jwks_addr}/jwks.json", jwks_refresh = "1h" }} }}"#);
    let gw = GatewayProcess::start(&config(&backend, &auth, ""));
    let client = client(Proto::H1);
    let k1 = sign(Algorithm::RS256, &rsa1(), Some("k1"), &claims());
    let until_ok = |token: String, what: &'static str| {
        let (client, url) = (client.clone(), gw.url("/"));
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while get(&client, &url, &[("authorization", &bearer(&token))]).await.status != 200 {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until_ok(k1.clone(), "the first fetch made k1 usable").await;

    let rsa2 = EncodingKey::from_rsa_pem(&read("rsa2.key")).unwrap();
    let k2 = sign(Algorithm::RS256, &rsa2, Some("k2"), &claims());
    assert_eq!(
        get(&client, &gw.url("/"), &[("authorization", &bearer(&k2))])
            .await
            .status,
        401
    );
    *served.lock().unwrap() = read("jwks-k1-k2.json");
    until_ok(k2, "the unknown kid made the gateway fetch the rotated set").await;
    assert!(fetches.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}
