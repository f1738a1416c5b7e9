//! Route authentication and authorization.
//!
//! A route may accept several methods (JWT bearer tokens, API keys, basic
//! auth); the credential a request presents picks the method. The result is
//! a [`Principal`]; the route's [`Require`] rules then decide whether that
//! principal may pass (401 when no valid credential, 403 when authenticated
//! but not allowed).
//!
//! Checking is synchronous and pure except [`basic::BasicAuth::verify`],
//! which runs a password hash (milliseconds of CPU): callers run it off the
//! async workers.

pub mod api_key;
pub mod basic;
pub mod jwt;

use http::{header, HeaderMap};
use serde_json::{Map, Value};

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `jwt`, `api_key` or `basic`.
    pub method: &'static str,
    /// The token's `sub`, the key's id, or the user name.
    pub identity: String,
    /// The token's claims (empty for other methods).
    pub claims: Map<String, Value>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No valid credential: 401 with `WWW-Authenticate: {challenge}`.
    Unauthorized { challenge: String, reason: String },
    /// Authenticated, but the rules refuse this principal: 403.
    Forbidden { reason: String },
}

/// The credential a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    Basic { user: String, password: String },
    ApiKey(&'a str),
}

/// Authorization rules: all present ones must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Require {
    /// The identity must be one of these (empty: any).
    pub identities: Vec<String>,
    /// Each claim must equal the value, or, for an array claim (or a
    /// space-separated `scope`), contain it.
    pub claims: Vec<(String, String)>,
}

impl Require {
    /// Checks `principal` against the rules.
    pub fn check(&self, principal: &Principal) -> Result<(), AuthError> {
        if !self.identities.is_empty() && !self.identities.contains(&principal.identity) {
            return Err(AuthError::Forbidden {
                reason: format!("{} is not allowed on this route", principal.identity),
            });
        }
        for (claim, wanted) in &self.claims {
            let holds = match principal.claims.get(claim) {
                Some(Value::String(s)) => s == wanted || (claim == "scope" && s.split(' ').any(|p| p == wanted)),
                Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(wanted.as_str())),
                Some(Value::Bool(b)) => b.to_string() == *wanted,
                Some(Value::Number(n)) => n.to_string() == *wanted,
                _ => false,
            };
            if !holds {
                return Err(AuthError::Forbidden {
                    reason: format!("claim {claim} does not grant {wanted}"),
                });
            }
        }
        Ok(())
    }
}

/// Finds the credential in a request: `Authorization: Bearer`, then
/// `Authorization: Basic`, then the API key header or query parameter.
pub fn credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    api_key: Option<&'a api_key::ApiKeys>,
) -> Option<Credential<'a>> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, rest) = authorization.split_once(' ').unwrap_or((authorization, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Credential::Bearer(rest.trim()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            if let Some((user, password)) = basic::decode(rest.trim()) {
                return Some(Credential::Basic { user, password });
            }
        }
    }
    let keys = api_key?;
    if let Some(name) = &keys.header {
        if let Some(key) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(Credential::ApiKey(key));
        }
    }
    if let (Some(param), Some(query)) = (&keys.query, query) {
        for pair in query.split('&') {
            if let Some(value) = pair
                .strip_prefix(param.as_str())
                .and_then(|rest| rest.strip_prefix('='))
            {
                return Some(Credential::ApiKey(value));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(claims: Value) -> Principal {
        Principal {
            method: "jwt",
            identity: "alice".into(),
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn rules_check_identities_and_claims() {
        let p = principal(serde_json::json!({"role": "admin", "groups": ["ops", "dev"], "scope": "read write"}));
        let ok = |require: Require| require.check(&p).is_ok();
        assert!(ok(Require::default()));
        assert!(ok(Require {
            identities: vec!["alice".into()],
            claims: vec![("role".into(), "admin".into()), ("groups".into(), "ops".into())],
        }));
        assert!(ok(Require {
            identities: vec![],
            claims: vec![("scope".into(), "write".into())],
        }));
        assert!(!ok(Require {
            identities: vec!["bob".into()],
            claims: vec![],
        }));
        assert!(!ok(Require {
            identities: vec![],
            claims: vec![("groups".into(), "finance".into())],
        }));
        assert!(!ok(Require {
            identities: vec![],
            claims: vec![("missing".into(), "x".into())],
        }));
    }

    #[test]
    fn credentials_are_found_in_order() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(credential(&h, None, None), Some(Credential::Bearer("abc.def.ghi")));
        h.insert(header::AUTHORIZATION, "Basic YWxpY2U6czNjcmV0".parse().unwrap());
        assert_eq!(
            credential(&h, None, None),
            Some(Credential::Basic {
                user: "alice".into(),
                password: "s3cret".into()
            })
        );
        let keys = api_key::ApiKeys {
            header: Some(http::HeaderName::from_static("x-api-key")),
            query: Some("api_key".into()),
            keys: Default::default(),
        };
        let mut h = HeaderMap::new();
        assert_eq!(
            credential(&h, Some("a=1&api_key=k2"), Some(&keys)),
            Some(Credential::ApiKey("k2"))
        );
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(
            credential(&h, Some("api_key=k2"), Some(&keys)),
            Some(Credential::ApiKey("k1"))
        );
        assert_eq!(credential(&HeaderMap::new(), Some("api_keyx=1"), Some(&keys)), None);
    }
}
