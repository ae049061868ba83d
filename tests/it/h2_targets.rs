//! docs/shadowing.md, "Target URLs": `h2c://` targets (HTTP/2 with prior knowledge) and
//! `https://` targets speaking what ALPN picks, as main and as mirrors, against real
//! HTTP/2-only and HTTP/1.1-only servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::support::*;

/// Which protocol a [`Backend`] speaks; it refuses the other.
#[derive(Clone, Copy, PartialEq)]
enum Speaks {
    H2,
    Http1,
}

/// How a [`Backend`] behaves.
#[derive(Clone)]
struct Setup {
    speaks: Speaks,
    /// The HTTP/2 server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    max_streams: Option<u32>,
    /// How long each answer takes.
    delay: Duration,
    /// Ends each connection gracefully after this many answers.
    answers_per_connection: Option<usize>,
    /// How long a new connection waits before the server's first frame (its SETTINGS).
    preface_delay: Duration,
    tls: Option<TlsAcceptor>,
}

impl Setup {
    fn h2() -> Setup {
        Setup {
            speaks: Speaks::H2,
            max_streams: None,
            delay: Duration::ZERO,
            answers_per_connection: None,
            preface_delay: Duration::ZERO,
            tls: None,
        }
    }
}

/// A server that speaks only one protocol, records every request and counts its
/// connections (accepted, and closed again) and its requests in progress.
struct Backend {
    addr: SocketAddr,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(setup: Setup) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let counters = (
            accepted.clone(),
            closed.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (accepted, closed, in_flight, max_in_flight) = counters.clone();
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, setup) = (tx.clone(), setup.clone());
                tokio::spawn(async move {
                    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, done_tx) = (tx.clone(), done_tx.clone());
                        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                        let delay = setup.delay;
                        async move {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            max_in_flight.fetch_max(now, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes());
                            let answer = format!("{:?} {}", parts.version, parts.uri.path());
                            let _ = tx.send(Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            });
                            tokio::time::sleep(delay).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            let _ = done_tx.send(());
                            let mut response = Response::new(Full::new(Bytes::from(answer)));
                            response
                                .headers_mut()
                                .insert("x-backend", "answered".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let io: Box<dyn Io> = match &setup.tls {
                        None => Box::new(stream),
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        },
                    };
                    let io = TokioIo::new(io);
                    tokio::time::sleep(setup.preface_delay).await;
                    match setup.speaks {
                        Speaks::H2 => {
                            let mut builder =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            builder.max_concurrent_streams(setup.max_streams);
                            let conn = builder.serve_connection(io, service);
                            tokio::pin!(conn);
                            let mut answered = 0;
                            loop {
                                tokio::select! {
                                    _ = conn.as_mut() => break,
                                    Some(()) = done.recv() => {
                                        answered += 1;
                                        if Some(answered) == setup.answers_per_connection {
                                            conn.as_mut().graceful_shutdown();
                                        }
                                    }
                                }
                            }
                        }
                        Speaks::Http1 => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            addr,
            received: tokio::sync::Mutex::new(received),
            accepted,
            closed,
            max_in_flight,
            task,
        }
    }

    fn url(&self, scheme: &str) -> String {
        match scheme {
            "https" => format!("https://localhost:{}", self.addr.port()),
            _ => format!("{scheme}://{}", self.addr),
        }
    }

    async fn next(&self) -> Recorded {
        tokio::time::timeout(WAIT, self.received.lock().await.recv())
            .await
            .expect("backend received a request in time")
            .expect("backend channel open")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A client that speaks HTTP/2 with prior knowledge to the proxy's listener.
fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A request with a query, a custom header and a body, through `client`.
async fn post_through(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Answer {
    let req = Request::post(url)
        .header("x-custom", "kept")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// What an `h2c://` main got from a client, checked field by field.
fn assert_intact(got: &Recorded, backend: &Backend) {
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.uri.path_and_query().unwrap(), "/api/items?x=1&y=two");
    // `Host` became `:authority`, which hyper's server puts in the URI.
    assert_eq!(
        got.uri.authority().unwrap().as_str(),
        backend.addr.to_string()
    );
    assert_eq!(got.uri.scheme_str(), Some("http"));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("content-type"), Some("text/plain"));
    assert_eq!(got.body, "payload");
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert!(got.header("x-forwarded-host").is_some(), "{got:?}");
    assert!(got.header("via").is_some(), "{got:?}");
    for hop in [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "host",
    ] {
        assert!(got.headers.get(hop).is_none(), "{hop} sent: {got:?}");
    }
}

#[tokio::test]
async fn h2c_main_answers_http1_and_http2_clients_with_everything_intact() {
    let main = Backend::start(Setup::h2()).await;
    let proxy = TestProxy::start(&["--main", &main.url("h2c"), "--threads", "1"]).await;
    for client in [client(), h2_client()] {
        let resp = post_through(&client, &proxy.url("/api/items?x=1&y=two")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        assert_eq!(resp.body, "HTTP/2.0 /api/items");
        assert_eq!(resp.headers["x-backend"], "answered");
        let got = main.next().await;
        assert_intact(&got, &main);
        assert_eq!(
            got.header("x-forwarded-host"),
            Some(proxy.addr.to_string().as_str())
        );
    }
    // Both went over one HTTP/2 connection.
    assert_eq!(main.accepted(), 1);
    // The admin endpoint's status names main and its protocol.
    let status: serde_json::Value =
        serde_json::from_slice(&get(&proxy.admin_url("/status")).await.body).unwrap();
    assert_eq!(status["main"]["url"], main.url("h2c"));
    assert_eq!(status["main"]["protocol"], "h2c");
}

#[tokio::test]
async fn an_http1_request_to_the_http2_only_backend_is_refused() {
    // The backend above really refuses HTTP/1.1: an http:// main pointing at it fails.
    let main = Backend::start(Setup::h2()).await;
    let proxy = TestProxy::start(&["--main", &main.url("http")]).await;
    let resp = get(&proxy.url("/x")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn h2c_main_with_a_path_prefix_and_preserve_host() {
    let main = Backend::start(Setup::h2()).await;
    let url = format!("{}/prefix/", main.url("h2c"));
    let proxy = TestProxy::start(&["--main", &url, "--preserve-host"]).await;
    let resp = send(
        Method::GET,
        &proxy.url("/a?b=c"),
        &[("host", "client.example:8443")],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let got = main.next().await;
    assert_eq!(got.uri.path_and_query().unwrap(), "/prefix/a?b=c");
    // The client's Host, kept by --preserve-host, is the :authority.
    assert_eq!(got.uri.authority().unwrap().as_str(), "client.example:8443");
    assert!(got.headers.get("host").is_none());
}

#[tokio::test]
async fn h2c_mirrors_receive_copies_and_count_them() {
    let main = MockBackend::start(Reply::ok("main")).await;
    let flagged = Backend::start(Setup::h2()).await;
    let added = Backend::start(Setup::h2()).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--mirror", &flagged.url("h2c")]).await;
    proxy
        .put_ok(&format!(
            "url={}&host=mirror.example",
            urlencode(&added.url("h2c"))
        ))
        .await;
    let resp = send(
        Method::PUT,
        &proxy.url("/copy/me?q=1"),
        &[("x-custom", "kept")],
        "copied body",
    )
    .await;
    assert_eq!(resp.body, "main");
    main.next().await;
    for (mirror, authority) in [
        (&flagged, flagged.addr.to_string()),
        // The `host` option's value is the copy's :authority.
        (&added, "mirror.example".to_owned()),
    ] {
        let got = mirror.next().await;
        assert_eq!(got.version, Version::HTTP_2);
        assert_eq!(got.method, Method::PUT);
        assert_eq!(got.uri.path_and_query().unwrap(), "/copy/me?q=1");
        assert_eq!(got.uri.authority().unwrap().as_str(), authority);
        assert_eq!(got.header("x-custom"), Some("kept"));
        assert_eq!(got.body, "copied body");
        let url = mirror.url("h2c");
        eventually("copy counted as succeeded", || async {
            proxy.mirror_json(&url).await.unwrap()["succeeded"] == 1
        })
        .await;
        let listed = proxy.mirror_json(&url).await.unwrap();
        assert_eq!(listed["protocol"], "h2c", "{listed}");
        assert_eq!(listed["failed"], 0, "{listed}");
    }
    let scrape = get(&proxy.admin_url("/metrics")).await.text();
    for mirror in [&flagged, &added] {
        let series = format!(
            "trafficmirror_mirror_protocol{{mirror=\"{}\",protocol=\"h2c\"}} 1",
            mirror.url("h2c")
        );
        assert!(scrape.contains(&series), "{series} not in {scrape}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_down_h2c_mirror_fails_and_becomes_failing() {
    let main = MockBackend::start(Reply::ok("main")).await;
    let down = format!("h2c://{}", closed_addr().await);
    let proxy = TestProxy::start(&["--main", &main.url(), "--retry-after", "1h"]).await;
    proxy.add_mirrors(&[&down]).await;
    for i in 0..5 {
        let resp = get(&proxy.url(&format!("/f{i}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
        eventually("failure counted", || async {
            proxy.mirror_json(&down).await.unwrap()["failed"] == i + 1
        })
        .await;
    }
    let listed = proxy.mirror_json(&down).await.unwrap();
    assert_eq!(listed["state"], "failing", "{listed}");
    assert_eq!(listed["succeeded"], 0, "{listed}");
}

#[tokio::test]
async fn h2c_main_down_is_502_and_slow_is_504() {
    let down = format!("h2c://{}", closed_addr().await);
    let proxy = TestProxy::start(&["--main", &down]).await;
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::BAD_GATEWAY);
    let slow = Backend::start(Setup {
        delay: Duration::from_secs(3),
        ..Setup::h2()
    })
    .await;
    let proxy = TestProxy::start(&[
        "--main",
        &slow.url("h2c"),
        "--main-timeout",
        "200ms",
        "--threads",
        "1",
    ])
    .await;
    assert_eq!(
        get(&proxy.url("/")).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    // The abandoned stream is given back: the next request goes on the same connection.
    assert_eq!(
        get(&proxy.url("/")).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(slow.accepted(), 1);
}

/// Sends `n` GETs through the proxy at once; all must answer 200.
async fn concurrent_gets(proxy: &TestProxy, n: usize) {
    let mut all = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = proxy.url(&format!("/c{i}"));
        all.spawn(async move { get(&url).await.status });
    }
    let statuses = tokio::time::timeout(WAIT, all.join_all())
        .await
        .expect("all answered in time");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_one_stream_server_gets_all_requests_within_the_connection_bound() {
    let main = Backend::start(Setup {
        max_streams: Some(1),
        delay: Duration::from_millis(20),
        ..Setup::h2()
    })
    .await;
    let proxy = TestProxy::start(&[
        "--main",
        &main.url("h2c"),
        "--max-connections-per-target",
        "3",
        "--threads",
        "1",
    ])
    .await;
    concurrent_gets(&proxy, 30).await;
    // One stream per connection, so the requests spread over every connection the
    // bound allows, and no more.
    assert_eq!(main.accepted(), 3);
    let together = main.max_in_flight.load(Ordering::SeqCst);
    assert!(together <= 3, "{together} at once");
}

#[tokio::test]
async fn streams_are_multiplexed_on_one_connection() {
    let main = Backend::start(Setup {
        delay: Duration::from_millis(200),
        ..Setup::h2()
    })
    .await;
    let proxy = TestProxy::start(&[
        "--main",
        &main.url("h2c"),
        "--max-connections-per-target",
        "1",
        "--threads",
        "1",
    ])
    .await;
    concurrent_gets(&proxy, 20).await;
    assert_eq!(main.accepted(), 1);
    // The requests were in progress at the backend together, over that connection
    // (they all arrive within a few milliseconds; each takes 200).
    let together = main.max_in_flight.load(Ordering::SeqCst);
    assert!(together >= 10, "{together} at once");
}

#[tokio::test]
async fn a_burst_to_a_fresh_target_shares_one_connection() {
    // Requests that arrive before the server has said how many streams it takes wait
    // for that rather than open connections of their own.
    let main = Backend::start(Setup {
        delay: Duration::from_millis(50),
        preface_delay: Duration::from_millis(200),
        ..Setup::h2()
    })
    .await;
    // The default bound (256) would allow a connection per request.
    let proxy = TestProxy::start(&["--main", &main.url("h2c"), "--threads", "1"]).await;
    concurrent_gets(&proxy, 20).await;
    assert_eq!(main.accepted(), 1);
}

#[tokio::test]
async fn a_closed_connection_is_replaced() {
    let main = Backend::start(Setup {
        answers_per_connection: Some(1),
        ..Setup::h2()
    })
    .await;
    let proxy = TestProxy::start(&["--main", &main.url("h2c"), "--threads", "1"]).await;
    for i in 1..=3 {
        assert_eq!(
            get(&proxy.url("/")).await.status,
            StatusCode::OK,
            "request {i}"
        );
        main.next().await;
        // The backend has closed the connection the request went on.
        eventually("backend closed the connection", || async {
            main.closed.load(Ordering::SeqCst) == i
        })
        .await;
    }
    assert_eq!(main.accepted(), 3);
}

// ===== https:// targets and ALPN =====

/// A private CA and a TLS acceptor for `localhost` offering `alpn`.
struct Pki {
    ca_file: std::path::PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("tm-h2-ca-{name}-{}.pem", std::process::id()));
        std::fs::write(&ca_file, issuer.pem()).unwrap();
        Pki { ca_file, issuer }
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(server))
    }

    fn ca(&self) -> &str {
        self.ca_file.to_str().unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

#[tokio::test]
async fn https_targets_speak_what_the_server_picks_by_alpn() {
    let pki = Pki::new("alpn");
    let h2_only = Backend::start(Setup {
        tls: Some(pki.acceptor(&[b"h2"])),
        ..Setup::h2()
    })
    .await;
    let http1_only = Backend::start(Setup {
        speaks: Speaks::Http1,
        tls: Some(pki.acceptor(&[b"http/1.1"])),
        ..Setup::h2()
    })
    .await;
    let no_alpn = Backend::start(Setup {
        speaks: Speaks::Http1,
        tls: Some(pki.acceptor(&[])),
        ..Setup::h2()
    })
    .await;
    for (main, mirror, version) in [
        (&h2_only, &http1_only, Version::HTTP_2),
        (&http1_only, &h2_only, Version::HTTP_11),
        (&no_alpn, &h2_only, Version::HTTP_11),
    ] {
        let proxy = TestProxy::start(&[
            "--main",
            &main.url("https"),
            "--mirror",
            &mirror.url("https"),
            "--ca-cert",
            pki.ca(),
        ])
        .await;
        let resp = post_through(&client(), &proxy.url("/api/items?x=1&y=two")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let got = main.next().await;
        assert_eq!(got.version, version);
        assert_eq!(got.uri.path_and_query().unwrap(), "/api/items?x=1&y=two");
        assert_eq!(got.body, "payload");
        let copy = mirror.next().await;
        assert_eq!(copy.body, "payload");
        let authority = format!("localhost:{}", mirror.addr.port());
        match copy.version {
            Version::HTTP_2 => assert_eq!(copy.uri.authority().unwrap().as_str(), authority),
            _ => assert_eq!(copy.header("host"), Some(authority.as_str())),
        }
        let url = mirror.url("https");
        eventually("copy counted as succeeded", || async {
            proxy.mirror_json(&url).await.unwrap()["succeeded"] == 1
        })
        .await;
        let expected = if copy.version == Version::HTTP_2 {
            "h2"
        } else {
            "http/1.1"
        };
        assert_eq!(proxy.mirror_json(&url).await.unwrap()["protocol"], expected);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn h2c_urls_are_listed_normalised_and_checked_like_the_others() {
    let main = MockBackend::start(Reply::ok("main")).await;
    let proxy = TestProxy::start(&["--main", &main.url()]).await;
    proxy.put_ok("url=H2C://Grpc.Example:80/Svc/").await;
    let listed = get(&proxy.admin_url("")).await.text();
    assert_eq!(listed, "h2c://grpc.example/Svc\n");
    // The same target spelled otherwise is the same mirror.
    proxy.put_ok("url=h2c://grpc.example/Svc").await;
    assert_eq!(proxy.mirrors_json().await.len(), 1);
    for bad in ["h2c://user:pw@host:1", "h2c://host:1/?q=1", "h2c:///x"] {
        let resp = proxy.put(&format!("url={}", urlencode(bad))).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.text().contains(bad), "{bad}: {}", resp.text());
    }
    assert_eq!(proxy.mirrors_json().await.len(), 1);
}

#[test]
fn start_up_refuses_bad_h2c_urls_naming_them() {
    for args in [
        ["--main", "h2c://user@host:50051"],
        ["--mirror", "h2c://u:p@host:50051"],
        ["--main", "h2c://host/?q=1"],
    ] {
        let (status, _, stderr, _) = run_in(&Sandbox::new(), &args, &[]);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[1]), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn h2c_targets_from_the_config_file_and_the_targets_file() {
    let main = Backend::start(Setup::h2()).await;
    let from_config = Backend::start(Setup::h2()).await;
    let from_file = Backend::start(Setup::h2()).await;
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "work/trafficmirror.yaml",
        &format!(
            "main: {}\nmirror: [{}]\n",
            main.url("h2c"),
            from_config.url("h2c")
        ),
    );
    let targets = sandbox.write(
        "work/targets.txt",
        &format!("{} percent=100\n", from_file.url("h2c")),
    );
    let bin = Binary::start_in(
        sandbox,
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--targets-file",
            targets.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let resp = get(&bin.url("/from/files")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "HTTP/2.0 /from/files");
    for backend in [&main, &from_config, &from_file] {
        let got = backend.next().await;
        assert_eq!(got.version, Version::HTTP_2);
        assert_eq!(got.uri.path(), "/from/files");
    }
}
