//! HTTP/2 targets that break the protocol's promises mid-way (docs/shadowing.md, "gRPC
//! and HTTP/2" and "Health"; docs/mirror-options.md, "Retries"): a stream reset, a
//! `GOAWAY` with an error, one concurrent stream, a gRPC answer that ends without its
//! trailers or stalls after its message. Built on the `h2` crate's server, which does
//! exactly what it is told.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::support::grpc::{ECHO, EchoReply, EchoRequest, GrpcBackend, GrpcClient, frame};
use crate::support::*;

/// What a [`FaultyH2`] server does with each request.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    /// Resets the stream (`RST_STREAM`, `INTERNAL_ERROR`) without an answer.
    Reset,
    /// Sends `GOAWAY` (`INTERNAL_ERROR`) without an answer, and closes the connection.
    GoAway,
    /// Allows one stream at a time (`SETTINGS_MAX_CONCURRENT_STREAMS` = 1); answers
    /// `200` after 20 ms.
    OneStream,
    /// A gRPC answer: its head and one message, then `END_STREAM` without trailers.
    NoTrailers,
    /// A gRPC answer: its head and one message, then nothing until the server stops.
    Stalls,
}

/// An HTTP/2 (h2c) server with a [`Fault`]; counts the requests and connections it
/// got, and the most streams it had open at once.
struct FaultyH2 {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone, Default)]
struct Counts {
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl FaultyH2 {
    async fn start(fault: Fault) -> FaultyH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Counts::default();
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(stream, fault, shared.clone()));
            }
        });
        FaultyH2 {
            addr,
            requests: counts.requests,
            connections: counts.connections,
            max_in_flight: counts.max_in_flight,
            task,
        }
    }

    fn url(&self) -> String {
        format!("h2c://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyH2 {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet: every connection ends with it.
        self.task.abort();
    }
}

/// One connection: `Reset` and `GoAway` at once; the others on a task of their own
/// per stream once its request is read whole (the connection is driven by `accept`
/// meanwhile).
async fn serve(stream: tokio::net::TcpStream, fault: Fault, counts: Counts) {
    let mut builder = h2::server::Builder::new();
    if fault == Fault::OneStream {
        builder.max_concurrent_streams(1);
    }
    let Ok(mut conn) = builder.handshake::<_, Bytes>(stream).await else {
        return;
    };
    // Streams never answered, kept open while the connection runs.
    let mut held = Vec::new();
    let mut streams = tokio::task::JoinSet::new();
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        counts.requests.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::Reset => respond.send_reset(h2::Reason::INTERNAL_ERROR),
            Fault::GoAway => {
                held.push(respond);
                conn.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
            }
            _ => {
                streams.spawn(answer(request.into_body(), respond, fault, counts.clone()));
            }
        }
    }
}

/// Reads a request's body to its end, then answers as `fault` says.
async fn answer(
    mut body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    fault: Fault,
    counts: Counts,
) {
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if fault == Fault::OneStream {
        let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counts.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        counts.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut send) = respond.send_response(Response::new(()), false) {
            let _ = send.send_data(Bytes::from_static(b"one at a time"), true);
        }
        return;
    }
    let head = Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let _ = send.send_data(frame(&no_status_reply()), fault == Fault::NoTrailers);
    if fault == Fault::Stalls {
        // The stream stays open until the server stops.
        let _keep = (send, respond);
        std::future::pending::<()>().await;
    }
}

/// The one message of [`Fault::NoTrailers`] and [`Fault::Stalls`] answers.
fn no_status_reply() -> EchoReply {
    EchoReply {
        text: "no status follows".into(),
        ..Default::default()
    }
}

/// An HTTP/2 (prior knowledge) client.
fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A mirror's counters: (`sent`, `succeeded`, `failed`, `dropped`, `retried`, `queued`).
async fn outcomes(proxy: &TestProxy, url: &str) -> [u64; 6] {
    let m = proxy.mirror_json(url).await.expect("mirror listed");
    [
        "sent",
        "succeeded",
        "failed",
        "dropped",
        "retried",
        "queued",
    ]
    .map(|k| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}")))
}

/// A GET of `url`, over HTTP/1.1 or HTTP/2 (`h2`); its status and body.
async fn get_over(url: String, h2: bool) -> (StatusCode, Bytes) {
    let request = http::Request::get(url).body(Full::default()).unwrap();
    let answer = if h2 {
        h2_client().request(request).await
    } else {
        client().request(request).await
    };
    let (parts, body) = answer.expect("the proxy answers").into_parts();
    (parts.status, body.collect().await.unwrap().to_bytes())
}

/// Waits (bounded) until the mirror's counters are `want` (as [`outcomes`] lists them).
async fn outcomes_become(proxy: &TestProxy, url: &str, want: [u64; 6]) {
    let mut last = [0; 6];
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        last = outcomes(proxy, url).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url}: {last:?}, not {want:?}");
}

/// `n` GETs through the proxy, over HTTP/1.1 and HTTP/2 by turns, at once or one
/// after the other; their statuses and bodies, all within [`WAIT`]: none hangs.
async fn gets(proxy: &TestProxy, n: usize, at_once: bool) -> Vec<(StatusCode, Bytes)> {
    let all = async {
        let mut out = Vec::new();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let request = get_over(proxy.url(&format!("/g{i}")), i % 2 == 1);
            if at_once {
                set.spawn(request);
            } else {
                out.push(request.await);
            }
        }
        out.extend(set.join_all().await);
        out
    };
    tokio::time::timeout(WAIT, all)
        .await
        .expect("every request answered in time: none hangs")
}

// ===== main =====

#[tokio::test]
async fn a_main_that_resets_the_stream_or_sends_goaway_is_502_promptly() {
    for fault in [Fault::Reset, Fault::GoAway] {
        let main = FaultyH2::start(fault).await;
        let proxy = TestProxy::start(&["--main", &main.url()]).await;
        for (status, body) in gets(&proxy, 6, false).await {
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{fault:?}");
            assert_eq!(&body[..], b"main target unreachable\n", "{fault:?}");
        }
        // A gRPC call gets the gRPC form of the same error.
        let status = GrpcClient::h2c(proxy.addr)
            .echo(tonic::Request::new(EchoRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{fault:?}: {status:?}");
        assert_eq!(main.requests(), 7, "{fault:?}: each request sent once");
        if fault == Fault::GoAway {
            // A connection that said GOAWAY takes no further stream: each request
            // went on a new one.
            assert_eq!(main.connections.load(Ordering::SeqCst), 7);
        }
        proxy.stop().await;
    }
}

/// Requests multiplexed on a connection that says `GOAWAY`: each ends (`502`), none
/// hangs. Those above the `GOAWAY`'s last stream never reached main (RFC 9113 §6.8
/// would allow sending them again; hyper's error does not tell them apart, so they are
/// answered as main's failure, like the stream main had taken).
#[tokio::test]
async fn requests_at_once_on_a_connection_that_says_goaway_all_end() {
    let main = FaultyH2::start(Fault::GoAway).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    for (status, _) in gets(&proxy, 8, true).await {
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    assert!((1..=8).contains(&main.requests()), "{}", main.requests());
    proxy.stop().await;
}

#[tokio::test]
async fn a_one_stream_main_answers_every_request_one_at_a_time() {
    let main = FaultyH2::start(Fault::OneStream).await;
    let proxy = TestProxy::start(&[
        "--main",
        &main.url(),
        "--max-connections-per-target",
        "1",
        "--threads",
        "1",
    ])
    .await;
    for (status, body) in gets(&proxy, 12, true).await {
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"one at a time"[..]));
    }
    assert_eq!(main.requests(), 12);
    assert_eq!(main.connections.load(Ordering::SeqCst), 1);
    assert_eq!(main.max_in_flight.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

// ===== mirrors =====

/// A proxy (started with `args`) in front of a mock main answering `main`, with a
/// [`FaultyH2`] mirror added with `options` (`&k=v…`, or empty).
async fn with_faulty_mirror(
    fault: Fault,
    args: &[&str],
    options: &str,
) -> (FaultyH2, MockBackend, TestProxy) {
    let mirror = FaultyH2::start(fault).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), args).await;
    proxy
        .put_ok(&format!("url={}{options}", mirror.url()))
        .await;
    (mirror, main, proxy)
}

#[tokio::test]
async fn copies_reset_or_sent_goaway_fail_once_each_and_main_is_untouched() {
    for fault in [Fault::Reset, Fault::GoAway] {
        let (mirror, main, proxy) = with_faulty_mirror(fault, &["--retry-after", "1h"], "").await;
        // One copy after the other (each settled before the next request), so that
        // every copy reaches the mirror: copies at once are the next test's.
        for i in 0..4u64 {
            let (status, body) = get_over(proxy.url(&format!("/g{i}")), i % 2 == 1).await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"main"[..]),
                "{fault:?}"
            );
            outcomes_become(&proxy, &mirror.url(), [i + 1, 0, i + 1, 0, 0, 0]).await;
        }
        assert_eq!(main.count(), 4);
        assert_eq!(mirror.requests(), 4, "{fault:?}: no copy sent twice");
        proxy.stop().await;
    }
}

/// Copies at once to a mirror that says `GOAWAY` on each connection's first stream:
/// each copy ends `failed` exactly once, whether it reached the mirror or not.
#[tokio::test]
async fn copies_at_once_to_a_mirror_that_says_goaway_each_fail_once() {
    let args = ["--threads", "1", "--retry-after", "1h"];
    let (mirror, main, proxy) = with_faulty_mirror(Fault::GoAway, &args, "").await;
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..8 {
        let url = proxy.url(&format!("/p{i}"));
        posts.spawn(async move { send(Method::POST, &url, &[], "b").await.status });
    }
    let statuses = tokio::time::timeout(WAIT, posts.join_all()).await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    outcomes_become(&proxy, &mirror.url(), [8, 0, 8, 0, 0, 0]).await;
    assert_eq!(main.count(), 8);
    assert!(
        (1..=8).contains(&mirror.requests()),
        "{}",
        mirror.requests()
    );
    proxy.stop().await;
}

/// docs/mirror-options.md, "Retries": a reset `GET` is tried again (idempotent), a
/// reset `POST` is not (it may have arrived); each copy ends failed exactly once.
#[tokio::test]
async fn retry_tries_a_reset_get_again_and_never_a_reset_post() {
    let (mirror, _main, proxy) =
        with_faulty_mirror(Fault::Reset, &["--retry-after", "1h"], "&retry=2").await;
    let url = mirror.url();
    let answer = get(&proxy.url("/idempotent")).await;
    assert_eq!(answer.status, StatusCode::OK);
    outcomes_become(&proxy, &url, [1, 0, 1, 0, 2, 0]).await;
    assert_eq!(mirror.requests(), 3, "the first try and 2 more");
    let answer = send(Method::POST, &proxy.url("/once"), &[], "body").await;
    assert_eq!(answer.status, StatusCode::OK);
    outcomes_become(&proxy, &url, [2, 0, 2, 0, 2, 0]).await;
    assert_eq!(mirror.requests(), 4, "a reset POST is not sent again");
    proxy.stop().await;
}

#[tokio::test]
async fn a_one_stream_mirror_gets_every_copy_queued_not_failed() {
    let args = ["--max-connections-per-target", "1", "--threads", "1"];
    let (mirror, main, proxy) = with_faulty_mirror(Fault::OneStream, &args, "").await;
    for (status, body) in gets(&proxy, 16, true).await {
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"main"[..]));
    }
    outcomes_become(&proxy, &mirror.url(), [16, 16, 0, 0, 0, 0]).await;
    assert_eq!(main.count(), 16);
    assert_eq!(mirror.requests(), 16);
    assert_eq!(mirror.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(mirror.connections.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

// ===== a gRPC main without trailers =====

/// A gRPC call through the proxy to `main`, seen on the wire by a plain HTTP/2 client:
/// status, headers, body and trailers (`None`: the stream ended without them).
async fn raw_grpc_call(proxy: &TestProxy) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let request = http::Request::post(proxy.url(ECHO))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(&EchoRequest::default())))
        .unwrap();
    let answer = tokio::time::timeout(WAIT, h2_client().request(request))
        .await
        .expect("a head in time")
        .expect("an answer");
    let (parts, body) = answer.into_parts();
    let collected = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the end of the answer in time")
        .expect("an answer that ends");
    let trailers = collected.trailers().cloned();
    (parts.status, parts.headers, collected.to_bytes(), trailers)
}

/// docs/shadowing.md: main's gRPC status passes unchanged, and docs/comparing.md: an
/// answer without `grpc-status` differs from every status. The proxy invents no
/// `grpc-status: 0`, a gRPC client reports an error, the copy is sent and compared.
#[tokio::test]
async fn a_grpc_main_that_ends_without_trailers_is_no_success() {
    let main = FaultyH2::start(Fault::NoTrailers).await;
    let mirror = GrpcBackend::start_h2c().await;
    let proxy = TestProxy::start(&["--main", &main.url()]).await;
    let mirror_url = mirror.h2c_url();
    proxy
        .put_ok(&format!("url={mirror_url}&compare=true"))
        .await;

    let (status, headers, body, trailers) = raw_grpc_call(&proxy).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");
    assert_eq!(
        body,
        frame(&no_status_reply()),
        "main's message passes unchanged"
    );
    assert!(
        trailers
            .as_ref()
            .is_none_or(|t| !t.contains_key("grpc-status")),
        "{trailers:?}"
    );
    // What a gRPC client makes of it is its own: grpc-go and grpc-java report
    // INTERNAL; tonic 0.14 reads a unary answer without trailers as OK.
    raw_grpc_call(&proxy).await;

    mirror.next().await;
    mirror.next().await;
    eventually("both copies compared", || async {
        let m = proxy.mirror_json(&mirror_url).await.unwrap();
        m["succeeded"] == 2 && m["compare"]["compared"] == 2
    })
    .await;
    let m = proxy.mirror_json(&mirror_url).await.unwrap();
    assert_eq!(m["compare"]["mismatched"], 2, "{m}");
    assert_eq!(m["compare"]["mismatches"]["status"], 2, "{m}");
    // Not counted by status: main's stream ended without one.
    let scrape = get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        !scrape.contains("trafficmirror_grpc_requests_total{grpc_status=\"0\"} 1")
            && !scrape.contains("trafficmirror_grpc_requests_total{grpc_status=\"0\"} 2"),
        "{scrape}"
    );
    proxy.stop().await;
}

/// A gRPC main that stalls after its message: the client gets the message at once
/// (nothing is held back), and when main's connection goes, an error, never OK.
#[tokio::test]
async fn a_grpc_main_that_stalls_after_its_message_ends_in_an_error_when_it_goes() {
    let main = FaultyH2::start(Fault::Stalls).await;
    let proxy = TestProxy::start(&["--main", &main.url()]).await;
    let request = http::Request::post(proxy.url(ECHO))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(&EchoRequest::default())))
        .unwrap();
    let answer = tokio::time::timeout(WAIT, h2_client().request(request))
        .await
        .expect("a head in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("main's message passed on before its stream ends")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().unwrap(), frame(&no_status_reply()));
    drop(main);
    let end = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the client's stream ends once main's connection is gone");
    assert!(
        matches!(end, Some(Err(_))),
        "an error, not an end that could read as success: {end:?}"
    );
    // The proxy is not stuck: a next call gets the gRPC form of main's absence.
    let status = GrpcClient::h2c(proxy.addr)
        .echo(tonic::Request::new(EchoRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    proxy.stop().await;
}
