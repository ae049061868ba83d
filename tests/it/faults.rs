//! Faults injected by main, a mirror or the client at the worst moment: connections cut
//! half-way through a body, malformed answers, interim `1xx` answers, and clients that
//! leave while main is still answering. Main and mirrors here are raw TCP servers that
//! write hand-made HTTP bytes, so the faults are exact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

use crate::support::*;

/// How a connection is cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// `SO_LINGER` 0, then close: the peer gets a TCP reset.
    Reset,
    /// An orderly close (FIN); Linux turns it into a reset when unread bytes are left.
    Close,
}

impl Cut {
    async fn apply(self, mut stream: TcpStream) {
        match self {
            Cut::Reset => stream.set_zero_linger().unwrap(),
            Cut::Close => {
                let _ = stream.shutdown().await;
            }
        }
        drop(stream);
    }
}

fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

// ===== main cuts its answer half-way through the body =====

/// Main writes `head` and `partial`, waits until the test has seen the partial body
/// arrive at the client, then cuts the connection.
async fn main_cutting_its_body(
    head: &'static str,
    partial: &'static str,
    cut: Cut,
) -> (SocketAddr, Arc<Notify>) {
    let go = Arc::new(Notify::new());
    let signal = go.clone();
    let addr = raw_server(move |mut stream| {
        let go = signal.clone();
        async move {
            if read_head(&mut stream).await.is_empty() {
                return;
            }
            let mut answer = head.as_bytes().to_vec();
            answer.extend_from_slice(partial.as_bytes());
            stream.write_all(&answer).await.unwrap();
            go.notified().await;
            cut.apply(stream).await;
        }
    })
    .await;
    (addr, go)
}

#[tokio::test]
async fn a_body_cut_by_main_is_cut_for_the_client_too() {
    // (main's head, the part of the body it sends, the data that part carries)
    let cases: [(&str, &str, &str); 4] = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            "0123456789",
            "0123456789",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "a\r\n0123456789\r\n",
            "0123456789",
        ),
        // Cut inside a chunk: 20 bytes announced, 10 sent.
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "14\r\n0123456789",
            "0123456789",
        ),
        // A body delimited by the end of the connection: only a reset is a fault.
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            "0123456789",
            "0123456789",
        ),
    ];
    for (i, (head, partial, data)) in cases.into_iter().enumerate() {
        for cut in [Cut::Reset, Cut::Close] {
            if i == 3 && matches!(cut, Cut::Close) {
                continue; // a clean end of a close-delimited body
            }
            for (protocol, client) in [("HTTP/1.1", client()), ("h2c", h2_client())] {
                let what = format!("{head:?} + {partial:?}, {cut:?}, client {protocol}");
                let (main, go) = main_cutting_its_body(head, partial, cut).await;
                let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
                let req = Request::get(proxy.url("/cut"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = tokio::time::timeout(WAIT, client.request(req))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: answer in time"))
                    .unwrap_or_else(|e| panic!("{what}: head arrives: {e}"));
                assert_eq!(resp.status(), StatusCode::OK, "{what}");
                let mut body = resp.into_body();
                let mut got = Vec::new();
                while got.len() < data.len() {
                    let frame = tokio::time::timeout(WAIT, body.frame())
                        .await
                        .unwrap_or_else(|_| panic!("{what}: partial body in time"))
                        .unwrap_or_else(|| panic!("{what}: body ended after {got:?}"))
                        .unwrap_or_else(|e| panic!("{what}: partial body reads: {e}"));
                    if let Ok(chunk) = frame.into_data() {
                        got.extend_from_slice(&chunk);
                    }
                }
                assert_eq!(got, data.as_bytes(), "{what}");
                go.notify_one();
                let rest = tokio::time::timeout(WAIT, body.collect())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: the cut reaches the client in time"));
                assert!(
                    rest.is_err(),
                    "{what}: the client got a complete-looking answer: {:?}",
                    rest.map(|c| c.to_bytes())
                );
                proxy.stop().await;
            }
        }
    }
}

// ===== main answers with a malformed head =====

/// Answers that are not HTTP/1.1 (RFC 9112 §4 status line, §5 field lines) or that
/// hyper refuses to read (conflicting or bad framing, too large).
fn malformed_answers() -> Vec<(&'static str, Vec<u8>)> {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    vec![
        ("non-numeric status", b"HTTP/1.1 abc OK\r\n\r\n".to_vec()),
        ("four-digit status", b"HTTP/1.1 2000 OK\r\n\r\n".to_vec()),
        ("two-digit status", b"HTTP/1.1 99 Low\r\n\r\n".to_vec()),
        ("unknown version", b"HTTP/2.0 200 OK\r\n\r\n".to_vec()),
        ("no status line", b"hello there\r\n\r\n".to_vec()),
        ("binary junk", b"\x00\x01\x02\xff\xfe\r\n\r\n".to_vec()),
        (
            "header without colon",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_vec(),
        ),
        (
            "space in a header name",
            b"HTTP/1.1 200 OK\r\nbad name: v\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a header value",
            b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ),
        (
            "bad content-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n".to_vec(),
        ),
        (
            "conflicting content-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
        ),
        ("too many headers", many),
        ("a 1 MiB header", huge),
    ]
}

#[tokio::test]
async fn a_malformed_answer_from_main_gives_502() {
    let answers = Arc::new(malformed_answers());
    let served = answers.clone();
    // `GET /N` gets answer N; the connection then stays open, so that only the
    // malformed bytes, not a close, can make the proxy give up.
    let main = raw_server(move |mut stream| {
        let answers = served.clone();
        async move {
            let head = String::from_utf8_lossy(&read_head(&mut stream).await).into_owned();
            let Some(index) = head
                .strip_prefix("GET /")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return;
            };
            let _ = stream.write_all(&answers[index].1).await;
            let mut sink = [0u8; 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
    for (index, (what, _)) in answers.iter().enumerate() {
        let resp = get(&proxy.url(&format!("/{index}"))).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_GATEWAY,
            "{what}: {}",
            resp.text()
        );
    }
    // The proxy is still serving.
    let resp = get(&proxy.url("/0")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    proxy.stop().await;
}

// ===== a mirror cuts the connection while reading the request body =====

/// A mirror that reads the request head and the first bytes of the body, then cuts.
async fn mirror_cutting_the_body(cut: Cut) -> SocketAddr {
    raw_server(move |mut stream| async move {
        let head = read_head(&mut stream).await;
        let body_start = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4);
        if body_start.is_some_and(|start| start == head.len()) {
            let mut buf = [0u8; 100];
            let _ = stream.read(&mut buf).await;
        }
        cut.apply(stream).await;
    })
    .await
}

#[tokio::test]
async fn a_mirror_cutting_the_request_body_is_counted_failed_and_main_is_unaffected() {
    let resetting = format!("http://{}", mirror_cutting_the_body(Cut::Reset).await);
    let closing = format!("http://{}", mirror_cutting_the_body(Cut::Close).await);
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main ok"), &[]).await;
    proxy.add_mirrors(&[&resetting, &closing]).await;
    let body: Bytes = (0..4 << 20)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let resp = send(Method::POST, &proxy.url("/upload"), &[], body.clone()).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "main ok");
    let got = main.next().await;
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "main got the body intact");
    for mirror in [&resetting, &closing] {
        // `failed` is counted before the copy's slot is given back: wait for both.
        eventually(&format!("{mirror} counted failed"), || async {
            let m = proxy.mirror_json(mirror).await.unwrap();
            m["failed"] == 1 && m["queued"] == 0
        })
        .await;
        let m = proxy.mirror_json(mirror).await.unwrap();
        assert_eq!(m["sent"], 1, "{m}");
        assert_eq!(m["succeeded"], 0, "{m}");
    }
    // The next request is answered as before, and its copies fail the same way.
    let resp = send(Method::POST, &proxy.url("/again"), &[], "small").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(main.next().await.body, "small");
    for mirror in [&resetting, &closing] {
        eventually(&format!("{mirror} counted failed twice"), || async {
            let m = proxy.mirror_json(mirror).await.unwrap();
            m["failed"] == 2 && m["queued"] == 0
        })
        .await;
    }
    proxy.stop().await;
}

// ===== the client leaves while main is still answering =====

/// A main that sends its head and a first chunk, then one more byte every 50 ms until
/// the connection is closed; each close is reported with the time it was seen.
async fn trickling_main() -> (SocketAddr, mpsc::UnboundedReceiver<Instant>) {
    let (closed, seen) = mpsc::unbounded_channel();
    let addr = raw_server(move |mut stream| {
        let closed = closed.clone();
        async move {
            if read_head(&mut stream).await.is_empty() {
                return;
            }
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            if stream.write_all(head).await.is_err() {
                let _ = closed.send(Instant::now());
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = closed.send(Instant::now());
        }
    })
    .await;
    (addr, seen)
}

/// Sends a request to `proxy`, waits for main's first chunk, then goes away.
async fn leave_after_first_chunk(proxy: &str) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "first").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_client_leaving_closes_the_connection_to_main() {
    let (main, mut closed) = trickling_main().await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
    leave_after_first_chunk(&proxy.addr.to_string()).await;
    let left = Instant::now();
    let seen = tokio::time::timeout(WAIT, closed.recv())
        .await
        .expect("main's connection is closed soon after the client left")
        .unwrap();
    assert!(
        seen.duration_since(left) < Duration::from_secs(2),
        "closed after {:?}",
        seen.duration_since(left)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_leaving_before_mains_head_closes_the_connection_to_main() {
    // Main reads the request and never answers; it reports when the request arrived
    // and when the proxy closed the connection.
    let (arrived, mut request_seen) = mpsc::unbounded_channel();
    let (closed, mut close_seen) = mpsc::unbounded_channel();
    let main = raw_server(move |mut stream| {
        let (arrived, closed) = (arrived.clone(), closed.clone());
        async move {
            if read_head(&mut stream).await.is_empty() {
                return;
            }
            let _ = arrived.send(());
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = closed.send(());
        }
    })
    .await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(WAIT, request_seen.recv())
        .await
        .expect("the request reaches main")
        .unwrap();
    drop(s);
    tokio::time::timeout(WAIT, close_seen.recv())
        .await
        .expect("main's connection is closed soon after the client left")
        .unwrap();
    proxy.stop().await;
}

/// `count` clients leave at once; waits until main has seen each connection closed.
async fn clients_leave(proxy: &str, count: usize, closed: &mut mpsc::UnboundedReceiver<Instant>) {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..count {
        let addr = proxy.to_owned();
        clients.spawn(async move { leave_after_first_chunk(&addr).await });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task did not panic");
    }
    for i in 0..count {
        tokio::time::timeout(WAIT, closed.recv())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {count} connections to main closed"))
            .unwrap();
    }
}

#[tokio::test]
async fn many_clients_leaving_leak_no_file_descriptors() {
    let (main, mut closed) = trickling_main().await;
    let bin = Binary::start(&["--main", &format!("http://{main}"), "--threads", "2"]).await;
    // Start-up is over once both workers run (each has its runtime's descriptors), and
    // a first round has done whatever happens once (name resolution, pools).
    eventually("both worker threads run", || {
        let names = bin.thread_names();
        std::future::ready(
            names
                .iter()
                .filter(|n| n.starts_with("trafficmirror-"))
                .count()
                == 2,
        )
    })
    .await;
    clients_leave(&bin.addr, 2, &mut closed).await;
    let mut now = 0;
    eventually("descriptors of the first round are released", || {
        let before = now;
        now = bin.open_fds();
        std::future::ready(now == before)
    })
    .await;
    let baseline = now;

    clients_leave(&bin.addr, 50, &mut closed).await;
    eventually("the proxy's open files return to the baseline", || {
        now = bin.open_fds();
        std::future::ready(now <= baseline)
    })
    .await;
    bin.terminate_within(Duration::from_secs(5)).await;
}

// ===== main sends an interim answer first =====

#[tokio::test]
async fn early_hints_before_the_answer_give_a_well_formed_final_answer() {
    // Every request on a connection gets the same two answers.
    let main = raw_server(|mut stream| async move {
        while !read_head(&mut stream).await.is_empty() {
            let answer =
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n\
                  HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nhello";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
    let resp = get(&proxy.url("/hinted")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["x-final"], "yes");
    assert_eq!(resp.body, "hello");

    // On the wire: an interim 103 passed through or dropped are both fine, as long as
    // what follows is one well-formed final answer. (Today it is dropped: the client
    // to main skips interim answers.)
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /hinted HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("answer reads");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let final_answer = match text.strip_prefix("HTTP/1.1 103") {
        Some(rest) => {
            let (interim, after) = rest
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("unterminated 103: {text}"));
            assert!(interim.to_ascii_lowercase().contains("link:"), "{text}");
            after
        }
        None => text.as_str(),
    };
    assert!(final_answer.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(final_answer.ends_with("\r\n\r\nhello"), "{text}");
    assert_eq!(final_answer.matches("HTTP/1.1").count(), 1, "{text}");
    proxy.stop().await;
}
