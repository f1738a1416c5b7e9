//! HTTP basic authentication against argon2 or bcrypt password hashes.

use std::collections::HashMap;

use argon2::{Argon2, PasswordVerifier};
use base64::Engine;

use super::{AuthError, Principal};

/// A route's basic-auth users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicAuth {
    pub realm: String,
    /// Password hash (PHC `$argon2id$...` or bcrypt `$2b$...`) by user name.
    pub users: HashMap<String, String>,
}

/// Whether `hash` is a password hash this module can check.
pub fn is_supported_hash(hash: &str) -> bool {
    hash.starts_with("$argon2") || hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$")
}

/// Decodes the `user:password` of a `Basic` credential.
pub fn decode(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    /// Checks a user's password. Slow on purpose (the hash's work factor):
    /// run it off the async workers.
    pub fn verify(&self, user: &str, password: &str) -> Result<Principal, AuthError> {
        let refuse = |reason: &str| AuthError::Unauthorized {
            challenge: self.challenge(),
            reason: reason.into(),
        };
        let Some(hash) = self.users.get(user) else {
            return Err(refuse("unknown user or wrong password"));
        };
        let ok = if hash.starts_with("$argon2") {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        } else {
            bcrypt::verify(password, hash).unwrap_or(false)
        };
        if !ok {
            return Err(refuse("unknown user or wrong password"));
        }
        Ok(Principal {
            method: "basic",
            identity: user.to_owned(),
            claims: Default::default(),
        })
    }

    /// `Basic realm="..."`.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_hashes_verify() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth {
            realm: "api".into(),
            users: HashMap::from([("alice".to_owned(), hash)]),
        };
        assert_eq!(auth.verify("alice", "s3cret").unwrap().identity, "alice");
        assert!(auth.verify("alice", "wrong").is_err());
        assert!(auth.verify("bob", "s3cret").is_err());
        assert_eq!(decode("YWxpY2U6czNjcmV0"), Some(("alice".into(), "s3cret".into())));
        assert_eq!(decode("!!"), None);
        assert!(is_supported_hash("$argon2id$v=19$m=19456,t=2,p=1$abc$def"));
        assert!(!is_supported_hash("plain"));
    }
}
