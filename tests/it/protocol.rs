//! Protocol handling (docs/shadowing.md, "How requests are handled"; docs/security.md,
//! "Security"): upgrades, CONNECT, Host control, loops, slow or hostile clients, smuggling.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// A main that accepts upgrades, greets, then echoes every read as `echo:<bytes>`.
/// Sends the upgrade request's headers on `seen`.
async fn upgrade_main(seen: mpsc::UnboundedSender<http::HeaderMap>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let _ = seen.send(req.headers().clone());
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else {
                            return;
                        };
                        let mut io = TokioIo::new(upgraded);
                        io.write_all(b"hello from main").await.unwrap();
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let mut reply = b"echo:".to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            io.write_all(&reply).await.unwrap();
                        }
                    });
                    async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways_and_not_mirrored() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let main = upgrade_main(seen_tx).await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    proxy.add_mirrors(&[&mirror.url()]).await;

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut s, "hello from main").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    let at_main = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_main["upgrade"], "websocket");
    assert_eq!(at_main["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

    for msg in ["first frame", "second frame"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        read_until(&mut s, &format!("echo:{msg}")).await;
    }
    mirror
        .assert_nothing_within(Duration::from_millis(100))
        .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(m["skipped"], 1, "{m}");
    assert_eq!(m["sent"], 0, "{m}");
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_an_ordinary_request_and_is_mirrored() {
    let (main, [mirror], proxy) =
        TestProxy::with_mirrors(Reply::ok("main"), [Reply::ok("m")], &[]).await;
    // What `curl --http2 http://…` sends.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /offer HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_until(&mut s, "\r\n\r\nmain").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("main"), "{answer}");
    for got in [main.next().await, mirror.next().await] {
        assert_eq!(got.uri.path(), "/offer");
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(got.header(gone).is_none(), "{gone}: {:?}", got.headers);
        }
    }
}

#[tokio::test]
async fn connect_is_refused_and_counted_once_per_mirror() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let gets = MockBackend::start(Reply::ok("m")).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy.put_ok(&format!("url={}", mirror.url())).await;
    proxy
        .put_ok(&format!("url={}&method=GET", gets.url()))
        .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    main.assert_nothing_within(Duration::from_millis(100)).await;
    mirror.assert_nothing_within(Duration::from_millis(1)).await;
    // Once per mirror, by the usual order: the options first, then the rules.
    let counts = |m: serde_json::Value| {
        ["sent", "dropped", "skipped", "filtered"].map(|k| m[k].as_u64().unwrap())
    };
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(counts(m), [0, 0, 1, 0]);
    let m = proxy.mirror_json(&gets.url()).await.unwrap();
    assert_eq!(counts(m), [0, 0, 0, 1]);
}

/// A GET of `/` carrying `Host: host`.
async fn get_with_host(proxy: &TestProxy, host: &str) {
    send(
        Method::GET,
        &proxy.url("/"),
        &[("host", host)],
        Bytes::new(),
    )
    .await;
}

#[tokio::test]
async fn preserve_host_sends_the_client_host_to_main_and_mirrors() {
    let (main, [mirror], proxy) =
        TestProxy::with_mirrors(Reply::ok("ok"), [Reply::ok("m")], &["--preserve-host"]).await;
    get_with_host(&proxy, "shop.example").await;
    assert_eq!(main.next().await.header("host"), Some("shop.example"));
    assert_eq!(mirror.next().await.header("host"), Some("shop.example"));
}

#[tokio::test]
async fn preserve_host_without_a_client_host_gives_each_target_its_own_authority() {
    let (main, [mirror], proxy) =
        TestProxy::with_mirrors(Reply::ok("ok"), [Reply::ok("m")], &["--preserve-host"]).await;
    // HTTP/1.0 may come without Host; HTTP/1.1 to main and the mirror needs one.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_until(&mut s, "ok").await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let main_host = main.addr.to_string();
    let mirror_host = mirror.addr.to_string();
    assert_eq!(main.next().await.header("host"), Some(main_host.as_str()));
    assert_eq!(
        mirror.next().await.header("host"),
        Some(mirror_host.as_str())
    );
}

#[tokio::test]
async fn the_host_option_wins_over_preserve_host_for_its_mirror_only() {
    let plain = MockBackend::start(Reply::ok("a")).await;
    let rewritten = MockBackend::start(Reply::ok("b")).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &["--preserve-host"]).await;
    proxy.add_mirrors(&[&plain.url()]).await;
    let query = format!("?url={}&host=shadow.example", rewritten.url());
    let resp = send(Method::PUT, &proxy.admin_url(&query), &[], Bytes::new()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    get_with_host(&proxy, "shop.example").await;
    assert_eq!(main.next().await.header("host"), Some("shop.example"));
    assert_eq!(plain.next().await.header("host"), Some("shop.example"));
    assert_eq!(
        rewritten.next().await.header("host"),
        Some("shadow.example")
    );
}

#[tokio::test]
async fn two_instances_mirroring_to_each_other_stay_bounded() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let a = TestProxy::start(&["--main", &main.url()]).await;
    let b = TestProxy::start(&["--main", &main.url()]).await;
    a.add_mirrors(&[&format!("http://{}", b.addr)]).await;
    b.add_mirrors(&[&format!("http://{}", a.addr)]).await;
    get(&a.url("/loop")).await;
    // A -> main; A's copy -> B -> main; B's copy -> A -> main, and A stops there.
    for _ in 0..3 {
        assert_eq!(main.next().await.uri.path(), "/loop");
    }
    main.assert_nothing_within(Duration::from_millis(300)).await;
    let a_to_b = a.mirror_json(&format!("http://{}", b.addr)).await.unwrap();
    assert_eq!(a_to_b["sent"], 1, "{a_to_b}");
    assert_eq!(a_to_b["skipped"], 1, "{a_to_b}");
}

#[tokio::test]
async fn mirror_pointing_at_itself_does_not_amplify() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy
        .add_mirrors(&[&format!("http://{}", proxy.addr)])
        .await;
    for _ in 0..3 {
        get(&proxy.url("/self")).await;
    }
    for _ in 0..6 {
        main.next().await;
    }
    main.assert_nothing_within(Duration::from_millis(300)).await;
    let m = proxy
        .mirror_json(&format!("http://{}", proxy.addr))
        .await
        .unwrap();
    assert_eq!(m["sent"], 3, "{m}");
    assert_eq!(m["skipped"], 3, "{m}");
}

#[tokio::test]
async fn a_loop_is_logged_once_and_counted_every_time() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let bin = Binary::start(&["--main", &main.url()]).await;
    let itself = format!("http://{}", bin.addr);
    bin.put_ok(&format!("url={itself}")).await;
    for _ in 0..3 {
        assert_eq!(get(&bin.url("/again")).await.status, StatusCode::OK);
    }
    for _ in 0..6 {
        main.next().await; // 3 originals + 3 copies that came back through the proxy
    }
    main.assert_nothing_within(Duration::from_millis(300)).await;
    let listing = get(&bin.url("/targets?format=json")).await;
    let json: serde_json::Value = serde_json::from_slice(&listing.body).unwrap();
    assert_eq!(json[0]["skipped"], 3, "{json}");
    bin.signal("TERM");
    let (code, stderr) = bin.wait(WAIT).await;
    assert_eq!(code, Some(0), "{stderr}");
    let logged = stderr.matches("carries this proxy's Via entry").count();
    assert_eq!(logged, 1, "{stderr}");
}

#[tokio::test]
async fn client_sending_headers_too_slowly_is_cut_off() {
    let (main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--header-read-timeout", "200ms"]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never finished
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "connection closed by the proxy");
    assert_eq!(main.count(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--header-read-timeout", "200ms"]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, "ok").await;
    read_to_close(&mut s, Duration::from_secs(2), "idle connection closed").await;
}

#[tokio::test]
async fn http1_answers_longer_than_the_idle_timeout_are_not_cut_and_idleness_is_after_them() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::After(Duration::from_millis(700), Box::new(Reply::ok("slow"))),
        &["--header-read-timeout", "250ms"],
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // Main takes almost three timeouts to answer: the request is in flight meanwhile.
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until(&mut s, "slow").await.starts_with("HTTP/1.1 200"));
    main.set_reply(Reply::ok("ok"));
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until(&mut s, "ok").await.starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    // A second head that never ends is cut like a first one, a timeout after the
    // last answer.
    s.write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_to_close(
        &mut s,
        Duration::from_secs(2),
        "connection closed by the proxy",
    )
    .await;
    assert!(answered.elapsed() >= Duration::from_millis(250));
    assert_eq!(main.count(), 2);
}

#[tokio::test]
async fn http1_answer_streaming_past_the_idle_timeout_is_not_cut() {
    let main = main_streaming_slow().await;
    let proxy = TestProxy::start(&["--main", &main, "--header-read-timeout", "300ms"]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Chunked to the client as main sends it: the end is the last chunk.
    let text = read_until(&mut s, "0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("part\r\n4\r\npart"), "{text}");
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until(&mut s, "ok").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let (main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--max-header-size", "8KiB"]).await;
    let big = "a".repeat(20 * 1024);
    let text = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );
    assert_eq!(main.count(), 0);
}

/// Every smuggling attempt: bytes after the body never become a request at main or at
/// a mirror.
#[tokio::test]
async fn request_smuggling_cannot_pass() {
    let (main, [mirror], proxy) =
        TestProxy::with_mirrors(Reply::ok("ok"), [Reply::ok("m")], &[]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, String, Option<&str>); 7] = [
        // CL.TE: Transfer-Encoding wins (RFC 9112 §6.1), the connection is closed after.
        (
            "cl-te",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("HTTP/1.1 200"),
        ),
        (
            "te-cl",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("HTTP/1.1 200"),
        ),
        (
            "differing duplicate content-length",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{smuggled}"
            ),
            Some("HTTP/1.1 400"),
        ),
        (
            "transfer-encoding not ending in chunked",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("HTTP/1.1 400"),
        ),
        (
            "content-length list with differing values",
            format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 40\r\n\r\nhello{smuggled}"),
            Some("HTTP/1.1 400"),
        ),
        (
            "unknown transfer-coding (xchunked)",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("HTTP/1.1 400"),
        ),
        (
            "whitespace before the colon (RFC 9112 §5.1)",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("HTTP/1.1 400"),
        ),
    ];
    for (name, request, expect) in cases {
        let text = raw(proxy.addr, request.as_bytes()).await;
        if let Some(status) = expect {
            assert!(text.starts_with(status), "{name}: {text}");
        }
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: one response only: {text}"
        );
    }
    // Wait for the mirror copies of the two accepted requests, then nothing else.
    for backend in [&main, &mirror] {
        for _ in 0..2 {
            let got = backend.next().await;
            assert_eq!(got.uri.path(), "/a");
            assert!(got.body.is_empty());
        }
        backend
            .assert_nothing_within(Duration::from_millis(200))
            .await;
    }
}

/// An HTTP/2 connection (prior knowledge) to the proxy, driven on its own task; the
/// receiver resolves when the proxy closes it.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(());
    });
    (sender, closed)
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    url: &str,
) -> (StatusCode, Bytes) {
    use http_body_util::BodyExt;
    let req = Request::get(url).body(Empty::new()).unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_header_read_timeout() {
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--header-read-timeout", "300ms"]).await;
    let (mut sender, closed) = h2_connection(proxy.addr).await;
    // Taken before the request: the connection is idle from its end at the earliest.
    let before_request = Instant::now();
    assert_eq!(
        h2_get(&mut sender, &proxy.url("/a")).await.0,
        StatusCode::OK
    );
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap();
    // Not before the timeout (hyper's pings alone would keep it open for ever).
    assert!(before_request.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn connections_without_a_request_are_closed_after_the_header_read_timeout() {
    let (main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--header-read-timeout", "300ms"]).await;
    // A TCP connection that sends nothing (still in protocol detection) ...
    let opened = Instant::now();
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    // ... and an HTTP/2 connection that only does its handshake (and answers pings).
    let (_sender, closed) = h2_connection(proxy.addr).await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut rest))
        .await
        .expect("the silent connection is closed")
        .unwrap();
    tokio::time::timeout(WAIT, closed)
        .await
        .expect("the HTTP/2 connection without a request is closed")
        .unwrap();
    assert!(opened.elapsed() >= Duration::from_millis(300));
    main.assert_nothing_within(Duration::from_millis(10)).await;
}

/// A main that streams `GET /slow` as two chunks 400 ms apart and answers anything else
/// `ok` at once: its URL.
async fn main_streaming_slow() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    if head.starts_with(b"GET /slow") {
                        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                        s.write_all(head).await.unwrap();
                        for _ in 0..2 {
                            s.write_all(b"4\r\npart\r\n").await.unwrap();
                            tokio::time::sleep(Duration::from_millis(400)).await;
                        }
                        s.write_all(b"0\r\n\r\n").await.unwrap();
                    } else {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        s.write_all(ok).await.unwrap();
                    }
                }
            });
        }
    });
    main
}

#[tokio::test]
async fn http2_response_streaming_past_the_idle_timeout_is_not_cut() {
    // A main that streams its answer to /slow over 800 ms, and answers anything else at once.
    let main = main_streaming_slow().await;
    let proxy = TestProxy::start(&["--main", &main, "--header-read-timeout", "300ms"]).await;
    let (mut sender, mut closed) = h2_connection(proxy.addr).await;
    let (status, body) = h2_get(&mut sender, &proxy.url("/slow")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"partpart"[..]));
    assert!(
        closed.try_recv().is_err(),
        "closed while a body was streaming"
    );
    assert_eq!(
        h2_get(&mut sender, &proxy.url("/next")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_request_longer_than_the_idle_timeout_is_not_cut() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::After(Duration::from_millis(900), Box::new(Reply::ok("slow"))),
        &["--header-read-timeout", "300ms"],
    )
    .await;
    let (mut sender, mut closed) = h2_connection(proxy.addr).await;
    let (status, body) = h2_get(&mut sender, &proxy.url("/slow")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow"[..]));
    assert!(
        closed.try_recv().is_err(),
        "closed while a request was in flight"
    );
    // The next request on the same connection still works.
    main.set_reply(Reply::ok("ok"));
    assert_eq!(
        h2_get(&mut sender, &proxy.url("/b")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn http2_peer_that_never_acknowledges_is_closed_soon_after_the_idle_timeout() {
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("ok"), &["--header-read-timeout", "500ms"]).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame; then nothing, not even the ACKs
    // of the proxy's SETTINGS and of the PING it sends with its GOAWAY.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    // Well below hyper's 20 s keep-alive ping timeout.
    tokio::time::timeout(Duration::from_millis(2500), s.read_to_end(&mut frames))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    // The proxy said goodbye first: a GOAWAY frame (type 7) was among what it sent.
    assert!(goaway_sent(&frames), "{frames:?}");
}

/// Whether the server's HTTP/2 frames (after no preface: servers send none) include a
/// GOAWAY.
fn goaway_sent(mut frames: &[u8]) -> bool {
    while frames.len() >= 9 {
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        if frames[3] == 7 {
            return true;
        }
        frames = &frames[(9 + len).min(frames.len())..];
    }
    false
}
