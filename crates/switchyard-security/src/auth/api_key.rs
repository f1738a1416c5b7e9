//! API keys, kept as SHA-256 hashes: the configuration never holds a usable
//! key, and a presented key is checked by hashing it and looking the hash up.

use std::collections::HashMap;

use http::HeaderName;
use sha2::{Digest, Sha256};

use super::{AuthError, Principal};

/// A route's API keys and where requests carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// The header carrying the key.
    pub header: Option<HeaderName>,
    /// The query parameter carrying the key.
    pub query: Option<String>,
    /// Key id by SHA-256 of the key.
    pub keys: HashMap<[u8; 32], String>,
}

/// SHA-256 of `key`, as stored in the configuration (hex).
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Parses a hex SHA-256.
pub fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text.trim()).ok()?;
    bytes.try_into().ok()
}

impl ApiKeys {
    /// The principal a presented key belongs to.
    pub fn verify(&self, key: &str) -> Result<Principal, AuthError> {
        match self.keys.get(&hash(key)) {
            Some(id) => Ok(Principal {
                method: "api_key",
                identity: id.clone(),
                claims: Default::default(),
            }),
            None => Err(AuthError::Unauthorized {
                challenge: self.challenge(),
                reason: "unknown API key".into(),
            }),
        }
    }

    /// What a client is told to present.
    pub fn challenge(&self) -> String {
        match (&self.header, &self.query) {
            (Some(header), _) => format!("ApiKey header=\"{header}\""),
            (None, Some(query)) => format!("ApiKey query=\"{query}\""),
            (None, None) => "ApiKey".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_hash() {
        let mut keys = ApiKeys {
            header: Some(HeaderName::from_static("x-api-key")),
            ..Default::default()
        };
        let stored = hex::encode(hash("k-123"));
        keys.keys.insert(parse_hash(&stored).unwrap(), "ci".into());
        assert_eq!(keys.verify("k-123").unwrap().identity, "ci");
        assert!(matches!(keys.verify("k-124"), Err(AuthError::Unauthorized { .. })));
        assert_eq!(parse_hash("zz"), None);
        assert_eq!(keys.challenge(), "ApiKey header=\"x-api-key\"");
    }
}
