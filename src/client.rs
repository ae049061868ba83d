//! The outbound HTTP client used for main and for every mirror. One place, so that the
//! connector (plain TCP or TLS, pooling, Nagle off) is configured once.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled keep-alive client for `http://` and `https://` targets. Cloning is shallow:
/// clones share the pool.
pub type HttpClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One client (and so one pool) per worker thread, picked with [`crate::workers::pick`]:
/// a request's upstream connections then live on the request's own thread.
pub fn per_worker<B>(tls: &Arc<rustls::ClientConfig>, workers: usize) -> Box<[HttpClient<B>]>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    (0..workers.max(1)).map(|_| new_client(tls)).collect()
}

/// Builds a client with its own connection pool.
pub fn new_client<B>(tls: &Arc<rustls::ClientConfig>) -> HttpClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false); // the TLS layer handles https://
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(rustls::ClientConfig::clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}
