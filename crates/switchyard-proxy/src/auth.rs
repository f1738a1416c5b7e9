//! Route authentication at run time: the verifiers built from a route's
//! `auth`, the JWK-set refresher, and what an authenticated request carries
//! upstream (the identity and chosen claims as headers, never the client's own
//! versions of those headers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchyard_config::{Auth, JwtKey};
use switchyard_security::auth::api_key::ApiKeys;
use switchyard_security::auth::basic::BasicAuth;
use switchyard_security::auth::jwt::{Expectations, JwtVerifier, KeySet, VerifyKey};
use switchyard_security::auth::{credential, AuthError, Credential, Principal, Require};
use tokio::sync::Notify;

use crate::error::ProxyError;

/// How long a verified basic-auth password is remembered (argon2 and bcrypt
/// cost milliseconds of CPU per check, by design).
const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
const BASIC_CACHE_MAX: usize = 10_000;

/// A route's authentication, kept across reloads while its settings stay.
#[derive(Debug)]
pub struct RouteAuth {
    pub config: Auth,
    jwt: Option<Arc<JwtVerifier>>,
    /// Where the JWK set comes from, when keys come from one.
    jwks: Option<(JwksSource, Duration)>,
    /// Wakes the refresher early (a token named an unknown key id).
    jwks_wanted: Arc<Notify>,
    api_keys: Option<ApiKeys>,
    basic: Option<Arc<BasicAuth>>,
    /// SHA-256 of `user:password` → (user, verified at), for passwords that
    /// passed recently.
    basic_cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    require: Require,
}

impl RouteAuth {
    /// Builds the verifiers (keys were checked when the configuration loaded).
    pub fn new(config: &Auth) -> Arc<Self> {
        let jwt = config.jwt.as_ref().map(|j| {
            let keys = match &j.key {
                JwtKey::Secret(secret) => KeySet {
                    anonymous: vec![VerifyKey::secret(secret.as_bytes())],
                    ..Default::default()
                },
                JwtKey::PublicKey { pem, .. } => KeySet {
                    anonymous: VerifyKey::pem(pem).into_iter().collect(),
                    ..Default::default()
                },
                // Filled by the refresher's first read, at once.
                JwtKey::Jwks { path, .. } => std::fs::read(path)
                    .ok()
                    .and_then(|json| KeySet::from_jwks(&json).ok())
                    .unwrap_or_default(),
                // Empty until the refresher's first fetch, started at once.
                JwtKey::JwksUrl { .. } => KeySet::default(),
            };
            Arc::new(JwtVerifier::new(
                Expectations {
                    issuers: j.issuer.iter().cloned().collect(),
                    audiences: j.audiences.clone(),
                    leeway: j.leeway,
                    required_claims: j.required_claims.clone(),
                },
                keys,
            ))
        });
        let jwks = config.jwt.as_ref().and_then(|j| match &j.key {
            JwtKey::Jwks { path, refresh } => Some((JwksSource::File(path.clone()), *refresh)),
            JwtKey::JwksUrl { url, refresh } => Some((JwksSource::Url(url.clone()), *refresh)),
            _ => None,
        });
        let api_keys = config.api_keys.as_ref().map(|a| ApiKeys {
            header: a.header.clone(),
            query: a.query.clone(),
            keys: a.keys.iter().map(|(id, hash)| (*hash, id.clone())).collect(),
        });
        let basic = config.basic.as_ref().map(|b| {
            Arc::new(BasicAuth {
                realm: b.realm.clone(),
                users: b.users.iter().cloned().collect(),
            })
        });
        let auth = Arc::new(Self {
            config: config.clone(),
            jwt,
            jwks,
            jwks_wanted: Arc::new(Notify::new()),
            api_keys,
            basic,
            basic_cache: Mutex::new(HashMap::new()),
            require: Require {
                identities: config.require_identities.clone(),
                claims: config.require_claims.clone(),
            },
        });
        if auth.jwks.is_some() {
            tokio::spawn(refresh_jwks(Arc::downgrade(&auth)));
        }
        auth
    }

    /// Authenticates a request and checks the route's rules.
    pub async fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Principal, ProxyError> {
        let unauthorized = |e: AuthError| match e {
            AuthError::Unauthorized { challenge, reason } => ProxyError::Unauthorized {
                challenges: vec![challenge],
                reason,
            },
            AuthError::Forbidden { reason } => ProxyError::Forbidden { reason },
        };
        let presented = credential(headers, query, self.api_keys.as_ref());
        let principal = match presented {
            Some(Credential::Bearer(token)) if self.jwt.is_some() => {
                let jwt = self.jwt.as_ref().expect("checked");
                match jwt.verify(token) {
                    Ok(principal) => principal,
                    Err((error, unknown_key)) => {
                        if unknown_key {
                            self.jwks_wanted.notify_one();
                        }
                        return Err(unauthorized(error));
                    }
                }
            }
            Some(Credential::Basic { user, password }) if self.basic.is_some() => {
                self.verify_basic(user, password).await.map_err(unauthorized)?
            }
            Some(Credential::ApiKey(key)) if self.api_keys.is_some() => self
                .api_keys
                .as_ref()
                .expect("checked")
                .verify(key)
                .map_err(unauthorized)?,
            _ => {
                return Err(ProxyError::Unauthorized {
                    challenges: self.challenges(),
                    reason: "no credentials this route accepts".into(),
                })
            }
        };
        self.require.check(&principal).map_err(unauthorized)?;
        Ok(principal)
    }

    /// Every method's `WWW-Authenticate` challenge.
    fn challenges(&self) -> Vec<String> {
        let mut challenges = Vec::new();
        if self.jwt.is_some() {
            challenges.push("Bearer".to_owned());
        }
        if let Some(basic) = &self.basic {
            challenges.push(basic.challenge());
        }
        if let Some(keys) = &self.api_keys {
            challenges.push(keys.challenge());
        }
        challenges
    }

    /// Checks a basic-auth password off the async workers (it is slow on
    /// purpose), remembering recent successes.
    async fn verify_basic(&self, user: String, password: String) -> Result<Principal, AuthError> {
        let fingerprint: [u8; 32] = Sha256::digest(format!("{user}:{password}").as_bytes()).into();
        let now = Instant::now();
        {
            let cache = self.basic_cache.lock().expect("basic cache lock is never poisoned");
            if let Some((cached, at)) = cache.get(&fingerprint) {
                if now.duration_since(*at) < BASIC_CACHE_TTL && *cached == user {
                    return Ok(Principal {
                        method: "basic",
                        identity: user,
                        claims: Default::default(),
                    });
                }
            }
        }
        let basic = self.basic.clone().expect("basic auth is configured");
        let principal = tokio::task::spawn_blocking(move || basic.verify(&user, &password))
            .await
            .map_err(|_| AuthError::Unauthorized {
                challenge: "Basic".into(),
                reason: "password check failed".into(),
            })??;
        let mut cache = self.basic_cache.lock().expect("basic cache lock is never poisoned");
        if cache.len() >= BASIC_CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < BASIC_CACHE_TTL);
            if cache.len() >= BASIC_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(fingerprint, (principal.identity.clone(), now));
        Ok(principal)
    }

    /// Sets the identity and forwarded-claim headers for the upstream,
    /// replacing whatever the client sent under those names.
    pub fn forward(&self, principal: &Principal, headers: &mut HeaderMap) {
        self.strip(headers);
        if let Some(name) = &self.config.identity_header {
            if let Ok(value) = HeaderValue::from_str(&principal.identity) {
                headers.insert(name.clone(), value);
            }
        }
        for (claim, name) in self.forwarded_claims() {
            let text = match principal.claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(name.clone(), value);
            }
        }
    }

    /// Removes the headers this route sets from authentication, so that a
    /// client cannot supply them itself.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if let Some(name) = &self.config.identity_header {
            headers.remove(name);
        }
        for (_, name) in self.forwarded_claims() {
            headers.remove(name);
        }
    }

    fn forwarded_claims(&self) -> impl Iterator<Item = &(String, HeaderName)> {
        self.config.jwt.iter().flat_map(|j| j.forward_claims.iter())
    }
}

/// Where a route's JWK set is read from.
#[derive(Debug, Clone)]
enum JwksSource {
    File(String),
    /// Fetched with a GET (HTTPS verified against the system's roots).
    Url(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => f.write_str(path),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

/// Largest JWK set accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;

impl JwksSource {
    async fn read(&self, client: &JwksClient) -> Result<Vec<u8>, String> {
        match self {
            JwksSource::File(path) => tokio::fs::read(path).await.map_err(|e| e.to_string()),
            JwksSource::Url(url) => {
                use http_body_util::BodyExt;
                let request = http::Request::get(url.as_str())
                    .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let fetch = async {
                    let response = client.request(request).await.map_err(|e| e.to_string())?;
                    if !response.status().is_success() {
                        return Err(format!("status {}", response.status()));
                    }
                    http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map(|body| body.to_bytes().to_vec())
                        .map_err(|e| e.to_string())
                };
                tokio::time::timeout(Duration::from_secs(10), fetch)
                    .await
                    .map_err(|_| "no answer within 10s".to_owned())?
            }
        }
    }
}

type JwksClient = crate::upstream::WebClient<http_body_util::Empty<bytes::Bytes>>;

fn jwks_client() -> Result<JwksClient, String> {
    crate::upstream::web_client()
}

/// Re-reads a route's JWK set (a file, or a URL) every `refresh`, and soon
/// after a token names an unknown key id (at most once a second for a file,
/// every 5 seconds for a URL), until the route's auth is dropped. A set that
/// cannot be read or parsed keeps the previous keys. A URL is fetched at once.
async fn refresh_jwks(auth: Weak<RouteAuth>) {
    let (source, refresh, wanted, jwt) = {
        let Some(auth) = auth.upgrade() else { return };
        let Some((source, refresh)) = auth.jwks.clone() else {
            return;
        };
        let Some(jwt) = auth.jwt.as_ref().map(Arc::downgrade) else {
            return;
        };
        (source, refresh, auth.jwks_wanted.clone(), jwt)
    };
    let client = match jwks_client() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot make an HTTPS client for JWK sets");
            return;
        }
    };
    // What the verifier holds is not known here (a file may have changed
    // between its first read and this task's start): the first read after a
    // wake-up is always applied.
    let mut last: Option<Vec<u8>> = None;
    let pause = match &source {
        JwksSource::File(_) => Duration::from_secs(1),
        JwksSource::Url(_) => Duration::from_secs(5),
    };
    let mut first = matches!(source, JwksSource::Url(_));
    loop {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(refresh) => {}
                () = wanted.notified() => {}
            }
        }
        first = false;
        let Some(verifier) = jwt.upgrade() else { return };
        match source.read(&client).await {
            Ok(json) if last.as_deref() != Some(json.as_slice()) => match KeySet::from_jwks(&json) {
                Ok(keys) => {
                    let count = keys.by_id.len() + keys.anonymous.len();
                    verifier.set_keys(keys);
                    tracing::info!(source = %source, keys = count, "JWK set reloaded");
                    last = Some(json);
                }
                Err(error) => {
                    tracing::warn!(source = %source, %error, "JWK set not reloaded: keeping the previous keys")
                }
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(source = %source, %error, "JWK set not readable: keeping the previous keys"),
        }
        drop(verifier);
        // Bound the re-reads an attacker can cause with made-up key ids.
        tokio::time::sleep(pause).await;
    }
}
