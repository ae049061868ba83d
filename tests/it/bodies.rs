//! Request bodies: streamed to main as they arrive while a copy is collected for the
//! mirrors, within `--max-body-size`, `--max-buffered-bytes` and `--body-read-timeout`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// What a [`probe_main`] saw of one request body.
#[derive(Debug, PartialEq)]
enum Seen {
    /// The first bytes arrived (how many in that frame).
    First(usize),
    /// The body ended cleanly with this many bytes.
    Complete(usize),
    /// The body broke off after this many bytes.
    Broken(usize),
}

/// A main that reports, frame by frame, how each request body arrives, then answers 200.
async fn probe_main() -> (String, mpsc::UnboundedReceiver<Seen>) {
    probe_main_answering(false).await
}

/// [`probe_main`]; with `early`, it answers 200 at once and reads the body afterwards.
async fn probe_main_answering(early: bool) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let mut body = req.into_body();
                        let read = async move {
                            let mut total = 0;
                            loop {
                                match body.frame().await {
                                    Some(Ok(frame)) => {
                                        let n = frame.data_ref().map_or(0, Bytes::len);
                                        if total == 0 && n > 0 {
                                            let _ = tx.send(Seen::First(n));
                                        }
                                        total += n;
                                    }
                                    Some(Err(_)) => {
                                        let _ = tx.send(Seen::Broken(total));
                                        break;
                                    }
                                    None => {
                                        let _ = tx.send(Seen::Complete(total));
                                        break;
                                    }
                                }
                            }
                        };
                        if early {
                            tokio::spawn(read);
                        } else {
                            read.await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("main saw something in time")
        .expect("probe running")
}

fn chunked_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Channel<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn main_gets_the_first_chunk_before_the_client_sends_the_rest() {
    let (main, mut seen) = probe_main().await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    proxy.add_mirrors(&[&mirror.url()]).await;

    let (mut tx, body) = Channel::<Bytes>::new(1);
    let req = Request::post(proxy.url("/upload")).body(body).unwrap();
    let client = chunked_client();
    let pending = tokio::spawn(async move { client.request(req).await });
    tx.send_data(Bytes::from_static(b"first-")).await.unwrap();
    // The event, not a timer: main has the first chunk while the client still holds
    // the rest.
    assert_eq!(next_seen(&mut seen).await, Seen::First(6));
    tx.send_data(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    assert_eq!(next_seen(&mut seen).await, Seen::Complete(12));
    let resp = answer_of(pending).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The mirror gets the whole body once it is complete.
    assert_eq!(mirror.next().await.body, "first-second");
}

#[tokio::test]
async fn a_body_past_max_body_size_reaches_main_byte_exact_and_is_skipped() {
    let (main, [mirror], proxy) = TestProxy::with_mirrors(
        Reply::ok("main"),
        [Reply::ok("m")],
        &["--max-body-size", "64KiB"],
    )
    .await;
    // Chunked, so the size is only known once the copy passes the limit.
    let (mut tx, body) = Channel::<Bytes>::new(2);
    let req = Request::post(proxy.url("/big")).body(body).unwrap();
    let client = chunked_client();
    let pending = tokio::spawn(async move { client.request(req).await });
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let chunk: Vec<u8> = (0..4096u32).map(|j| (j as u8) ^ i).collect();
        sent.extend_from_slice(&chunk);
        tx.send_data(Bytes::from(chunk)).await.unwrap();
    }
    drop(tx);
    let resp = answer_of(pending).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(main.next().await.body, Bytes::from(sent));
    mirror
        .assert_nothing_within(Duration::from_millis(200))
        .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(
        (m["skipped"].as_u64(), m["sent"].as_u64()),
        (Some(1), Some(0))
    );
}

#[tokio::test]
async fn a_client_that_resets_mid_body_is_not_mirrored() {
    let (main, mut seen) = probe_main().await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /reset HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'a'; 5000]).await.unwrap();
    assert!(matches!(next_seen(&mut seen).await, Seen::First(_)));
    // Reset (linger 0) instead of a clean close.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    assert!(matches!(next_seen(&mut seen).await, Seen::Broken(n) if n < 100_000));
    eventually("the copy is counted as skipped", || async {
        proxy.mirror_json(&mirror.url()).await.unwrap()["skipped"] == 1
    })
    .await;
    mirror
        .assert_nothing_within(Duration::from_millis(200))
        .await;
    assert_eq!(proxy.mirror_json(&mirror.url()).await.unwrap()["sent"], 0);
}

/// A mirror that accepts connections, reads nothing and never answers.
async fn hung_mirror() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test]
async fn the_byte_budget_drops_copies_a_hung_mirror_would_pin() {
    let healthy = MockBackend::start(Reply::ok("m")).await;
    let hung = hung_mirror().await;
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &[
            "--max-buffered-bytes",
            "8MiB",
            "--mirror-timeout",
            "30s",
            "--shutdown-timeout",
            "200ms",
        ],
    )
    .await;
    proxy.add_mirrors(&[&hung, &healthy.url()]).await;
    let body = Bytes::from(vec![b'b'; 1 << 20]);
    for i in 0..40 {
        let resp = send(
            Method::POST,
            &proxy.url(&format!("/p/{i}")),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
        assert!(proxy.buffered_bytes().await <= 8 << 20);
    }
    assert_eq!(main.count(), 40);
    let hung_json = proxy.mirror_json(&hung).await.unwrap();
    let dropped = hung_json["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{hung_json}");
    for url in [hung.clone(), healthy.url()] {
        let m = proxy.mirror_json(&url).await.unwrap();
        let total = ["sent", "dropped", "skipped"]
            .iter()
            .map(|k| m[k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(total, 40, "{m}");
    }
    // Every copy that fit went to the healthy mirror too.
    let healthy_sent = proxy.mirror_json(&healthy.url()).await.unwrap()["sent"]
        .as_u64()
        .unwrap();
    assert_eq!(healthy_sent, 40 - dropped);
    eventually("the healthy mirror got every copy sent to it", || async {
        healthy.count() as u64 == healthy_sent
    })
    .await;
    proxy.stop().await;
}

/// Opens a connection that declares `declared` body bytes and sends `sent` of them.
async fn stalled_upload(addr: std::net::SocketAddr, declared: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b's'; sent]).await.unwrap();
    stream
}

/// Reads what the proxy answers until it closes; the status code if an answer came.
async fn answer_then_close(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the proxy neither answered nor closed in time"
    );
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[tokio::test]
async fn a_stalled_body_gets_408_main_is_aborted_and_nothing_is_mirrored() {
    let (main, mut seen) = probe_main().await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&["--main", &main, "--body-read-timeout", "1s"]).await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    let mut stream = stalled_upload(proxy.addr, 1 << 20, 1 << 19).await;
    assert!(matches!(next_seen(&mut seen).await, Seen::First(_)));
    let status = answer_then_close(&mut stream, Duration::from_secs(4)).await;
    assert!(matches!(status, Some(408) | None), "{status:?}");
    // Main saw an incomplete body, never a complete-looking short one.
    assert!(matches!(next_seen(&mut seen).await, Seen::Broken(n) if n < 1 << 20));
    mirror
        .assert_nothing_within(Duration::from_millis(200))
        .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(m["sent"], 0, "{m}");
}

#[tokio::test]
async fn stalled_clients_never_hold_more_than_the_budget() {
    let (main, _seen) = probe_main().await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&[
        "--main",
        &main,
        "--body-read-timeout",
        "1s",
        "--max-buffered-bytes",
        "4MiB",
    ])
    .await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(stalled_upload(proxy.addr, 1 << 20, 1 << 19).await);
    }
    // Sample the gauge while the 20 uploads stall, until they have all been cut off.
    let mut peak = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let held = proxy.buffered_bytes().await;
        peak = peak.max(held);
        assert!(held <= 4 << 20, "held {held} bytes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak > 0, "the copies were collected at all");
    for mut s in streams {
        answer_then_close(&mut s, WAIT).await;
    }
    proxy
        .budget_drained("nothing is held once the clients are gone")
        .await;
    mirror
        .assert_nothing_within(Duration::from_millis(100))
        .await;
}

/// An HTTP/2 `POST` of 10 bytes (declaring `content_length` if given) whose stream the
/// client resets with `RST_STREAM(NO_ERROR)` before `END_STREAM`, once main has the
/// bytes: a body that never ended, though hyper reads such a reset as a clean end.
async fn h2_post_then_reset(
    addr: std::net::SocketAddr,
    content_length: Option<&str>,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut req = Request::post(format!("http://{addr}/reset"))
        .body(())
        .unwrap();
    if let Some(length) = content_length {
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, length.parse().unwrap());
    }
    let (_response, mut stream) = client.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"0123456789"), false)
        .unwrap();
    assert_eq!(next_seen(seen).await, Seen::First(10));
    stream.send_reset(h2::Reason::NO_ERROR);
}

/// Six resets mid-body: main's request is aborted each time, the mirror gets nothing,
/// every copy is counted `skipped`, and the mirror stays `alive`. With `early_answer`,
/// main answers before reading the body, so the proxy's answer is complete (and the
/// client's stream half-closed on our side) before the reset.
async fn h2_resets_mid_body(content_length: Option<&str>, early_answer: bool) {
    let (main, mut seen) = probe_main_answering(early_answer).await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&["--main", &main, "--mirror-timeout", "200ms"]).await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    for i in 1..=6 {
        h2_post_then_reset(proxy.addr, content_length, &mut seen).await;
        // Never a complete-looking 10-byte body at main.
        assert_eq!(next_seen(&mut seen).await, Seen::Broken(10), "request {i}");
        eventually("the copy is counted as skipped", || async {
            proxy.mirror_json(&mirror.url()).await.unwrap()["skipped"] == i
        })
        .await;
    }
    mirror
        .assert_nothing_within(Duration::from_millis(300))
        .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(
        (&m["sent"], &m["failed"], &m["skipped"], &m["state"]),
        (&0.into(), &0.into(), &6.into(), &"alive".into()),
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_h2_reset_mid_body_without_content_length_is_not_mirrored_and_aborts_main() {
    h2_resets_mid_body(None, false).await;
}

#[tokio::test]
async fn an_h2_reset_mid_body_with_content_length_is_not_mirrored_and_aborts_main() {
    h2_resets_mid_body(Some("100"), false).await;
}

#[tokio::test]
async fn an_h2_reset_mid_body_after_main_answered_is_not_mirrored_and_aborts_main() {
    h2_resets_mid_body(None, true).await;
}
