//! TLS material: certificates and keys loaded from PEM and checked (the key
//! matches the certificate, the names it serves), SNI certificate selection
//! (exact names, then `*.` wildcards, then the first certificate), and the
//! rustls server settings the gateway's `https` listeners use: TLS 1.2 and
//! 1.3 only, ALPN `h2` and `http/1.1`, session resumption by cache and
//! tickets, and optional client-certificate verification (mTLS).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

/// A certificate chain with its key, and the names it serves.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate (subject alternative names, else the
    /// common name), lower case; wildcards as `*.example.com`.
    pub names: Vec<String>,
}

/// The crypto provider every TLS configuration of the gateway uses.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// Loads a PEM certificate chain and its PEM private key; errors say which
/// file and what is wrong.
pub fn load_cert(cert_path: &str, key_path: &str) -> Result<LoadedCert, String> {
    let (chain, key) = load_chain(cert_path, key_path)?;
    let names = names_of(&chain[0]).map_err(|e| format!("{cert_path}: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, &provider::default_provider())
        .map_err(|e| format!("{key_path} does not match {cert_path} ({e})"))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
    })
}

/// Reads a PEM certificate chain and key as rustls takes them for client
/// authentication (whether they match is checked by [`load_cert`], at load
/// time, and by rustls when the configuration is built).
pub fn load_chain(
    cert_path: &str,
    key_path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_path}: no PEM certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("{key_path}: no usable PEM private key ({e})"))?;
    Ok((chain, key))
}

/// Loads the CA certificates that client certificates must chain to.
pub fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))? {
        let cert = cert.map_err(|e| format!("{path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no PEM certificate in the file"));
    }
    Ok(roots)
}

/// The DNS names a certificate is for.
fn names_of(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    Ok(names)
}

/// The subject and SAN entries of a client certificate, for the upstream.
pub fn describe_client_cert(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    let mut sans = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => sans.push(format!("DNS:{dns}")),
                x509_parser::extensions::GeneralName::URI(uri) => sans.push(format!("URI:{uri}")),
                x509_parser::extensions::GeneralName::RFC822Name(mail) => sans.push(format!("email:{mail}")),
                _ => {}
            }
        }
    }
    Some((subject, sans))
}

/// Picks a certificate by SNI: an exact name, then a wildcard for the
/// name's parent domain, then the first certificate (clients without SNI,
/// or names no certificate covers).
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// A resolver over `certs` (at least one).
    pub fn new(certs: &[LoadedCert]) -> Option<Self> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert_with(|| cert.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| cert.key.clone()),
                };
            }
        }
        Some(Self {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for `server_name`.
    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

/// How a listener treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    None,
    /// Verified against these roots when presented; optional or required.
    Verify {
        roots: Arc<RootCertStore>,
        required: bool,
    },
}

/// The rustls settings of an `https` listener.
pub fn server_config(certs: &[LoadedCert], client_auth: &ClientAuth) -> Result<ServerConfig, String> {
    let resolver = SniResolver::new(certs).ok_or("no certificate")?;
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Verify { roots, required } => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider);
            let verifier = if *required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    config.ticketer = provider::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(config)
}
