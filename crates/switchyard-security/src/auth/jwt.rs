//! JWT bearer tokens (RFC 7519), verified with jsonwebtoken.
//!
//! Keys come from the configuration (an HMAC secret or a PEM public key) or
//! from a JWK set that the caller reloads as it changes ([`JwtVerifier::set_keys`]:
//! one atomic swap, so requests never see half a key set). Each key allows only
//! the algorithms of its own family: an RSA public key can never be used as an
//! HMAC secret (the classic algorithm-confusion attack), and `alg: none` is
//! never accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthError, Principal};

/// A verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// An HMAC secret (HS256, HS384, HS512).
    pub fn secret(secret: &[u8]) -> Self {
        Self::of(DecodingKey::from_secret(secret))
    }

    /// A PEM public key: RSA (RS*, PS*), EC (ES256, ES384) or Ed25519 (EdDSA).
    pub fn pem(pem: &[u8]) -> Result<Self, String> {
        DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map(Self::of)
            .map_err(|_| "not a PEM RSA, EC or Ed25519 public key".to_owned())
    }

    fn of(key: DecodingKey) -> Self {
        let algorithms = key.family().algorithms().to_vec();
        Self { key, algorithms }
    }
}

/// The keys a verifier tries.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Keys with an id (`kid`): a token naming one uses only that key.
    pub by_id: HashMap<String, VerifyKey>,
    /// Keys without an id: tried in turn for tokens without `kid`.
    pub anonymous: Vec<VerifyKey>,
}

impl KeySet {
    /// Parses a JWK set (`{"keys": [...]}`); keys of unsupported types are
    /// skipped, but a set with no usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let mut key = VerifyKey::of(key);
            if let Some(alg) = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            {
                key.algorithms.retain(|a| *a == alg);
            }
            match &jwk.common.key_id {
                Some(id) => {
                    keys.by_id.insert(id.clone(), key);
                }
                None => keys.anonymous.push(key),
            }
        }
        if keys.by_id.is_empty() && keys.anonymous.is_empty() {
            return Err("the JWK set has no usable key".into());
        }
        Ok(keys)
    }
}

/// What a valid token must say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    /// Accepted `iss` values (empty: any, and `iss` is optional).
    pub issuers: Vec<String>,
    /// Accepted `aud` values (empty: not checked).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
}

/// Verifies bearer tokens for one route.
#[derive(Debug)]
pub struct JwtVerifier {
    expectations: Expectations,
    keys: ArcSwap<KeySet>,
}

/// The result of [`JwtVerifier::verify`]: a principal, or a refusal and
/// whether it came from a key id the current key set does not know (worth
/// reloading the JWK set for: the issuer may have rotated its keys).
pub type Verified = Result<Principal, (AuthError, bool)>;

impl JwtVerifier {
    pub fn new(expectations: Expectations, keys: KeySet) -> Self {
        Self {
            expectations,
            keys: ArcSwap::from_pointee(keys),
        }
    }

    /// Replaces the key set (a reloaded JWK set).
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// `Bearer` with the error description.
    fn refuse(&self, error: &str, reason: impl Into<String>) -> AuthError {
        let reason = reason.into();
        AuthError::Unauthorized {
            challenge: format!("Bearer error=\"{error}\", error_description=\"{reason}\""),
            reason,
        }
    }

    /// Checks a token's signature, algorithm, times, issuer, audience and
    /// required claims.
    pub fn verify(&self, token: &str) -> Verified {
        let header = decode_header(token).map_err(|_| (self.refuse("invalid_token", "malformed token"), false))?;
        let keys = self.keys.load();
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => match keys.by_id.get(kid) {
                Some(key) => vec![key],
                None if keys.anonymous.is_empty() => {
                    return Err((self.refuse("invalid_token", format!("unknown key id {kid}")), true));
                }
                None => keys.anonymous.iter().collect(),
            },
            None => keys.anonymous.iter().chain(keys.by_id.values()).collect(),
        };
        let usable: Vec<&VerifyKey> = candidates
            .into_iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if usable.is_empty() {
            return Err((
                self.refuse("invalid_token", format!("algorithm {:?} is not allowed", header.alg)),
                false,
            ));
        }
        let mut last = None;
        for key in usable {
            let validation = self.validation(key);
            match decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.accept(data.claims).map_err(|e| (e, false)),
                Err(e) => last = Some(e),
            }
        }
        let reason = match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "token expired".to_owned(),
            Some(ErrorKind::ImmatureSignature) => "token not valid yet".to_owned(),
            Some(ErrorKind::InvalidAudience) => "wrong audience".to_owned(),
            Some(ErrorKind::InvalidIssuer) => "wrong issuer".to_owned(),
            Some(ErrorKind::InvalidSignature) => "bad signature".to_owned(),
            Some(ErrorKind::InvalidAlgorithm) => "algorithm not allowed for this key".to_owned(),
            Some(ErrorKind::MissingRequiredClaim(claim)) => format!("missing claim {claim}"),
            Some(ErrorKind::InvalidClaimFormat(claim)) => format!("invalid claim {claim}"),
            _ => "invalid token".to_owned(),
        };
        Err((self.refuse("invalid_token", reason), false))
    }

    fn validation(&self, key: &VerifyKey) -> Validation {
        let mut validation = Validation::new(key.algorithms[0]);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = self.expectations.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.expectations.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&self.expectations.issuers);
            required.push("iss");
        }
        if self.expectations.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.expectations.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn accept(&self, claims: Map<String, Value>) -> Result<Principal, AuthError> {
        if let Some(missing) = self
            .expectations
            .required_claims
            .iter()
            .find(|c| !claims.contains_key(c.as_str()))
        {
            return Err(self.refuse("invalid_token", format!("missing claim {missing}")));
        }
        let identity = claims.get("sub").and_then(Value::as_str).unwrap_or("-").to_owned();
        Ok(Principal {
            method: "jwt",
            identity,
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: Value, secret: &[u8], alg: Algorithm) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn verifier(keys: KeySet) -> JwtVerifier {
        JwtVerifier::new(
            Expectations {
                issuers: vec!["https://id.example".into()],
                audiences: vec!["api".into()],
                leeway: Duration::from_secs(5),
                required_claims: vec!["sub".into()],
            },
            keys,
        )
    }

    fn secret_keys() -> KeySet {
        KeySet {
            by_id: HashMap::new(),
            anonymous: vec![VerifyKey::secret(b"top-secret")],
        }
    }

    fn reason(result: Verified) -> String {
        match result {
            Err((AuthError::Unauthorized { reason, .. }, _)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_accept_reject_matrix() {
        let v = verifier(secret_keys());
        let good = json!({"sub": "alice", "iss": "https://id.example", "aud": "api", "exp": now() + 60});
        let principal = v.verify(&hs(good.clone(), b"top-secret", Algorithm::HS256)).unwrap();
        assert_eq!(principal.identity, "alice");
        assert!(v.verify(&hs(good.clone(), b"top-secret", Algorithm::HS512)).is_ok());

        let mut expired = good.clone();
        expired["exp"] = json!(now() - 60);
        assert_eq!(
            reason(v.verify(&hs(expired, b"top-secret", Algorithm::HS256))),
            "token expired"
        );
        let mut early = good.clone();
        early["nbf"] = json!(now() + 60);
        assert_eq!(
            reason(v.verify(&hs(early, b"top-secret", Algorithm::HS256))),
            "token not valid yet"
        );
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("other");
        assert_eq!(
            reason(v.verify(&hs(wrong_aud, b"top-secret", Algorithm::HS256))),
            "wrong audience"
        );
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil.example");
        assert_eq!(
            reason(v.verify(&hs(wrong_iss, b"top-secret", Algorithm::HS256))),
            "wrong issuer"
        );
        assert_eq!(
            reason(v.verify(&hs(good.clone(), b"wrong-key", Algorithm::HS256))),
            "bad signature"
        );
        let mut no_sub = good.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            reason(v.verify(&hs(no_sub, b"top-secret", Algorithm::HS256))),
            "missing claim sub"
        );
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            reason(v.verify(&hs(no_exp, b"top-secret", Algorithm::HS256))),
            "missing claim exp"
        );
        assert_eq!(reason(v.verify("not-a-token")), "malformed token");
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let v = verifier(secret_keys());
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":...} . (empty signature)
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"sub":"alice","iss":"https://id.example","aud":"api","exp":{}}}"#,
                now() + 60
            ))
        );
        assert!(v.verify(&token).is_err());
    }

    #[test]
    fn unknown_key_ids_ask_for_a_reload_and_a_new_set_is_used_at_once() {
        let jwks = |kid: &str, secret: &str| {
            let k = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret);
            format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{k}"}}]}}"#)
        };
        let v = verifier(KeySet::from_jwks(jwks("k1", "first").as_bytes()).unwrap());
        let claims = json!({"sub": "a", "iss": "https://id.example", "aud": "api", "exp": now() + 60});
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let token = encode(&header, &claims, &EncodingKey::from_secret(b"second")).unwrap();
        assert!(matches!(v.verify(&token), Err((_, true))), "unknown kid: reload wanted");
        v.set_keys(KeySet::from_jwks(jwks("k2", "second").as_bytes()).unwrap());
        assert!(v.verify(&token).is_ok(), "the rotated set is used");
        assert!(KeySet::from_jwks(b"{}").is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[]}"#).is_err());
    }
}
