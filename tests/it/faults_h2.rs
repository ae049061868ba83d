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
    /// Refuses every stream of the first connection (`RST_STREAM`, `REFUSED_STREAM`:
    /// not processed, RFC 9113 §8.7); answers `200 fresh` on every later one.
    RefusesFirst,
}

/// An HTTP/2 (h2c) server with a [`Fault`]; counts the requests and connections it
/// got, and the most streams it had open at once.
struct FaultyH2 {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone, Default)]
struct Counts {
    requests: Arc<AtomicUsize>,
    /// Of `requests`, those refused (`Fault::RefusesFirst`).
    refused: Arc<AtomicUsize>,
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
                let first = shared.connections.fetch_add(1, Ordering::SeqCst) == 0;
                connections.spawn(serve(stream, fault, first, shared.clone()));
            }
        });
        FaultyH2 {
            addr,
            requests: counts.requests,
            refused: counts.refused,
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

/// One connection (`first`: the server's first): `Reset`, `GoAway` and `RefusesFirst`
/// at once; the others on a task of their own per stream once its request is read whole
/// (the connection is driven by `accept` meanwhile).
async fn serve(stream: tokio::net::TcpStream, fault: Fault, first: bool, counts: Counts) {
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
            Fault::RefusesFirst if first => {
                counts.refused.fetch_add(1, Ordering::SeqCst);
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
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
    if fault == Fault::RefusesFirst {
        if let Ok(mut send) = respond.send_response(Response::new(()), false) {
            let _ = send.send_data(Bytes::from_static(b"fresh"), true);
        }
        return;
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

/// What a [`GoAwayH2`] does with the streams at or below its `GOAWAY`'s last stream id.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Below {
    /// Answers them `200`: they were processed.
    Answer,
    /// Resets them (`INTERNAL_ERROR`): they failed, and may have been processed.
    Reset,
}

/// The last stream id of [`GoAwayH2`]'s `GOAWAY`: streams 1 and 3 were processed.
const LAST_STREAM: u32 = 3;

/// An HTTP/2 (h2c) server written frame by frame, to send a `GOAWAY` with a last stream
/// id of its choosing (the h2 crate picks it itself). Its first connection waits for
/// `gather` complete requests (or 2 s), then says `GOAWAY` (`NO_ERROR`, last stream
/// [`LAST_STREAM`]), does [`Below`] with the streams at or below it, and closes; every
/// later connection answers each request `200` as soon as it is complete.
struct GoAwayH2 {
    addr: std::net::SocketAddr,
    /// Complete requests seen on the first connection, and on all the later ones.
    first: Arc<AtomicUsize>,
    later: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl GoAwayH2 {
    async fn start(gather: usize, below: Below) -> GoAwayH2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (first, later, connections) = <[Arc<AtomicUsize>; 3]>::default().into();
        let (seen_first, seen_later, count) = (first.clone(), later.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    tasks.spawn(say_goaway(stream, gather, below, seen_first.clone()));
                } else {
                    tasks.spawn(answer_all(stream, seen_later.clone()));
                }
            }
        });
        GoAwayH2 {
            addr,
            first,
            later,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("h2c://{}", self.addr)
    }

    /// (complete requests on the first connection, on the later ones, connections).
    fn seen(&self) -> (usize, usize, usize) {
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        (
            load(&self.first),
            load(&self.later),
            load(&self.connections),
        )
    }
}

impl Drop for GoAwayH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A frame's header: payload length, type, flags, stream id.
fn frame_head(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let len = u32::try_from(len).unwrap().to_be_bytes();
    let mut head = vec![len[1], len[2], len[3], kind, flags];
    head.extend_from_slice(&stream.to_be_bytes());
    head
}

/// `200` with `END_STREAM` on `stream` (`:status 200` is HPACK static entry 8).
fn ok_frame(stream: u32) -> Vec<u8> {
    let mut frame = frame_head(1, 0x1, 0x5, stream);
    frame.push(0x88);
    frame
}

/// Reads the client's preface and sends the server's (an empty SETTINGS frame).
async fn h2_preface(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut preface = [0; 24];
    stream.read_exact(&mut preface).await?;
    stream.write_all(&frame_head(0, 0x4, 0, 0)).await
}

/// Reads one frame: acknowledges a SETTINGS or PING, and returns the stream id of a
/// request that is now complete (`END_STREAM` on its HEADERS or DATA).
async fn read_frame(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<u32>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = [0; 9];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let (kind, flags) = (head[3], head[4]);
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await?;
    match kind {
        0x0 | 0x1 if flags & 0x1 != 0 => return Ok(Some(id)),
        0x4 if flags & 0x1 == 0 => stream.write_all(&frame_head(0, 0x4, 0x1, 0)).await?,
        0x6 if flags & 0x1 == 0 => {
            let mut pong = frame_head(8, 0x6, 0x1, 0);
            pong.extend_from_slice(&payload);
            stream.write_all(&pong).await?;
        }
        _ => {}
    }
    Ok(None)
}

/// [`GoAwayH2`]'s first connection.
async fn say_goaway(
    mut stream: tokio::net::TcpStream,
    gather: usize,
    below: Below,
    seen: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    h2_preface(&mut stream).await?;
    let mut complete = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while complete.len() < gather {
        match tokio::time::timeout_at(deadline, read_frame(&mut stream)).await {
            Ok(frame) => complete.extend(frame?),
            Err(_) => break,
        }
    }
    seen.store(complete.len(), Ordering::SeqCst);
    let mut out = frame_head(8, 0x7, 0, 0);
    out.extend_from_slice(&LAST_STREAM.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
    for &id in complete.iter().filter(|&&id| id <= LAST_STREAM) {
        match below {
            Below::Answer => out.extend(ok_frame(id)),
            Below::Reset => {
                out.extend(frame_head(4, 0x3, 0, id));
                out.extend_from_slice(&2u32.to_be_bytes()); // INTERNAL_ERROR
            }
        }
    }
    stream.write_all(&out).await?;
    stream.shutdown().await?;
    // Read to the client's end: closing with unread bytes would reset the connection
    // and could lose what was just written.
    let mut sink = [0; 4096];
    let drain = async {
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(WAIT, drain).await;
    Ok(())
}

/// [`GoAwayH2`]'s later connections.
async fn answer_all(
    mut stream: tokio::net::TcpStream,
    seen: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    h2_preface(&mut stream).await?;
    loop {
        if let Some(id) = read_frame(&mut stream).await? {
            seen.fetch_add(1, Ordering::SeqCst);
            stream.write_all(&ok_frame(id)).await?;
        }
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

/// Requests multiplexed on connections that each say `GOAWAY` (`INTERNAL_ERROR`): each
/// ends (`502`), none hangs. Those main took failed; those above the `GOAWAY`'s last
/// stream went once more, on a new connection that said `GOAWAY` too.
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

/// RFC 9113 §6.8: requests above a `GOAWAY`'s last stream id were not processed; each
/// goes once more, on a new connection, and is answered. Those at or below it are
/// answered on the first connection and never sent again.
#[tokio::test]
async fn requests_above_a_goaway_s_last_stream_are_sent_again_on_a_new_connection() {
    let main = GoAwayH2::start(8, Below::Answer).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    for (status, body) in gets(&proxy, 8, true).await {
        assert_eq!((status, &body[..]), (StatusCode::OK, &b""[..]));
    }
    let (first, later, connections) = main.seen();
    assert_eq!(first, 8, "all 8 on the first connection");
    assert_eq!(later, 6, "streams 5..15 once more, streams 1 and 3 not");
    assert!(connections >= 2, "{connections}");
    proxy.stop().await;
}

/// A stream at or below a `GOAWAY`'s last stream id that fails may have been processed:
/// it is main's failure (`502`), never sent again; those above go again and are answered.
#[tokio::test]
async fn requests_at_or_below_a_goaway_s_last_stream_that_fail_are_not_sent_again() {
    let main = GoAwayH2::start(8, Below::Reset).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    let mut statuses: Vec<_> = gets(&proxy, 8, true)
        .await
        .into_iter()
        .map(|a| a.0)
        .collect();
    statuses.sort();
    let mut want = vec![StatusCode::OK; 6];
    want.extend([StatusCode::BAD_GATEWAY; 2]);
    assert_eq!(statuses, want);
    assert_eq!(main.seen().0, 8);
    assert_eq!(main.seen().1, 6, "the 2 reset streams are not sent again");
    proxy.stop().await;
}

/// RFC 9113 §8.7: a stream reset with `REFUSED_STREAM` was not processed; the request
/// goes once more on a new connection and is answered.
#[tokio::test]
async fn a_request_whose_stream_main_refuses_is_sent_again_on_a_new_connection() {
    let main = FaultyH2::start(Fault::RefusesFirst).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    for (status, body) in gets(&proxy, 4, false).await {
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"fresh"[..]));
    }
    let refused = main.refused.load(Ordering::SeqCst);
    assert!(refused >= 1, "{refused}");
    assert_eq!(main.requests() - refused, 4, "each answered once");
    proxy.stop().await;
}

/// Main's body is streamed from the client and not kept: a `POST` with a body whose
/// stream main refused cannot be sent again, and is main's failure.
#[tokio::test]
async fn a_refused_request_with_a_streamed_body_is_502() {
    let main = FaultyH2::start(Fault::RefusesFirst).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    let answer = send(Method::POST, &proxy.url("/p"), &[], "body").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        (main.requests(), main.refused.load(Ordering::SeqCst)),
        (1, 1)
    );
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

/// `n` POSTs through the proxy at once, each answered `200` (by main) in time.
async fn posts_at_once(proxy: &TestProxy, n: usize) {
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = proxy.url(&format!("/p{i}"));
        posts.spawn(async move { send(Method::POST, &url, &[], "b").await.status });
    }
    let statuses = tokio::time::timeout(WAIT, posts.join_all()).await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

/// Copies at once to a mirror that says `GOAWAY` (`INTERNAL_ERROR`) on each
/// connection's first stream: each copy ends `failed` exactly once, whether it reached
/// the mirror or not (one above the last stream goes once more, to a connection that
/// says `GOAWAY` too).
#[tokio::test]
async fn copies_at_once_to_a_mirror_that_says_goaway_each_fail_once() {
    let args = ["--threads", "1", "--retry-after", "1h"];
    let (mirror, main, proxy) = with_faulty_mirror(Fault::GoAway, &args, "").await;
    posts_at_once(&proxy, 8).await;
    outcomes_become(&proxy, &mirror.url(), [8, 0, 8, 0, 0, 0]).await;
    assert_eq!(main.count(), 8);
    assert!(
        (1..=8).contains(&mirror.requests()),
        "{}",
        mirror.requests()
    );
    proxy.stop().await;
}

/// docs/mirror-options.md, "Retries": copies above a `GOAWAY`'s last stream id were not
/// processed; each goes once more on a new connection (a `POST` too: its body is held),
/// not counted `retried`, and every copy succeeds.
#[tokio::test]
async fn copies_above_a_goaway_s_last_stream_are_sent_again_on_a_new_connection() {
    let mirror = GoAwayH2::start(8, Below::Answer).await;
    let args = ["--threads", "1", "--retry-after", "1h"];
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &args).await;
    proxy.put_ok(&format!("url={}", mirror.url())).await;
    posts_at_once(&proxy, 8).await;
    outcomes_become(&proxy, &mirror.url(), [8, 8, 0, 0, 0, 0]).await;
    assert_eq!(main.count(), 8);
    let (first, later, _) = mirror.seen();
    assert!(first > 2, "{first}: copies above the last stream");
    assert_eq!(
        later,
        first - 2,
        "each copy above it once more, none at or below"
    );
    proxy.stop().await;
}

/// A copy whose stream the mirror refuses (`REFUSED_STREAM`) goes once more on a new
/// connection whatever `retry` says, not counted `retried`.
#[tokio::test]
async fn copies_whose_stream_the_mirror_refuses_are_sent_again_and_succeed() {
    let (mirror, main, proxy) = with_faulty_mirror(Fault::RefusesFirst, &[], "").await;
    for i in 0..4u64 {
        let answer = send(Method::POST, &proxy.url(&format!("/p{i}")), &[], "b").await;
        assert_eq!(answer.status, StatusCode::OK);
        outcomes_become(&proxy, &mirror.url(), [i + 1, i + 1, 0, 0, 0, 0]).await;
    }
    assert_eq!(main.count(), 4);
    let refused = mirror.refused.load(Ordering::SeqCst);
    assert!(refused >= 1, "{refused}");
    assert_eq!(mirror.requests() - refused, 4, "each copy processed once");
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
