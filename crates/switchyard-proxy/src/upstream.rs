//! Upstream connection pools.
//!
//! One pooled hyper client per distinct set of pool settings; clusters with the
//! same settings share it (the pool is keyed by endpoint authority inside). The
//! clients live in the [`Registry`](crate::snapshot::Registry) so keep-alive
//! connections survive config reloads.

use std::time::Duration;

use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use switchyard_config::{Cluster, UpstreamProtocol, UpstreamTls};
use switchyard_security::tls::crypto_provider;

use crate::body::UpstreamRequestBody;

/// A pooled HTTP client for upstream requests (cleartext, or TLS for
/// `https://` targets of clusters with `tls`).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>;

/// Settings that make two pools different.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
    pub tls: Option<UpstreamTls>,
}

impl PoolSettings {
    /// The pool settings a cluster asks for.
    pub fn of(cluster: &Cluster) -> Self {
        Self {
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            max_idle_per_endpoint: cluster.pool_max_idle_per_endpoint,
            idle_timeout: cluster.pool_idle_timeout,
            tls: cluster.tls.clone(),
        }
    }

    /// A new client with these settings.
    pub fn build(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = self.tls.as_ref().map_or_else(cleartext_only, |tls| {
            client_config(tls.ca.as_deref(), tls.client_cert.as_ref()).unwrap_or_else(|error| {
                // The files were checked when the configuration loaded; if they
                // broke since, fail the connections, not the reload.
                tracing::error!(%error, "upstream TLS settings cannot be loaded: TLS connections will fail");
                cleartext_only()
            })
        });
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let builder = match self.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => match ServerName::try_from(name) {
                Ok(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
                Err(_) => builder,
            },
            None => builder,
        };
        let connector = match self.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(connector),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(connector),
        };
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle_per_endpoint)
            .http2_only(self.protocol == UpstreamProtocol::Http2)
            .build(connector)
    }
}

/// A TLS client configuration trusting nothing: for clusters without `tls`,
/// whose targets are always `http://`.
fn cleartext_only() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// TLS client settings: verifying against `ca` (or the system's roots), and
/// presenting `client_cert` (mTLS to upstreams) when given. Used for
/// clusters' endpoints and for JWK-set URLs.
/// An HTTP/1.1 client for the gateway's own calls (JWK sets, span export):
/// `http://` or `https://` verified against the system's roots.
pub(crate) type WebClient<B> =
    hyper_util::client::legacy::Client<HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, B>;

pub(crate) fn web_client<B>() -> Result<WebClient<B>, String>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(client_config(None, None)?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector))
}

pub(crate) fn client_config(
    ca: Option<&str>,
    client_cert: Option<&(String, String)>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        Some(ca) => builder.with_root_certificates(switchyard_security::tls::load_roots(ca)?),
        None => builder.with_native_roots().map_err(|e| format!("system roots: {e}"))?,
    };
    match client_cert {
        Some((cert, key)) => {
            let (chain, key) = switchyard_security::tls::load_chain(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
