//! docs/shadowing.md, "How requests are handled": forwarding to main.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

#[tokio::test]
async fn method_path_query_headers_and_body_reach_main() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::With(
            StatusCode::CREATED,
            vec![("x-from-main", "yes")],
            Bytes::from_static(b"created"),
        ),
        &[],
    )
    .await;
    let resp = send(
        Method::POST,
        &proxy.url("/a/b?x=1&y=two"),
        &[("x-test", "abc"), ("content-type", "text/plain")],
        "the body",
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(resp.headers["x-from-main"], "yes");
    assert_eq!(resp.body, "created");
    let got = main.next().await;
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.uri.path_and_query().unwrap(), "/a/b?x=1&y=two");
    assert_eq!(got.header("x-test"), Some("abc"));
    assert_eq!(got.header("content-type"), Some("text/plain"));
    assert_eq!(got.body, "the body");
    proxy.stop().await;
}

#[tokio::test]
async fn main_path_prefix_is_prepended() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let proxy = TestProxy::start(&["--main", &format!("{}/base/", main.url())]).await;
    assert_eq!(get(&proxy.url("/users/7?q=x")).await.status, StatusCode::OK);
    assert_eq!(
        main.next().await.uri.path_and_query().unwrap(),
        "/base/users/7?q=x"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::With(
            StatusCode::OK,
            vec![
                ("connection", "x-resp-hop"),
                ("x-resp-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("x-resp-kept", "1"),
            ],
            Bytes::from_static(b"ok"),
        ),
        &[],
    )
    .await;
    let resp = send(
        Method::GET,
        &proxy.url("/"),
        &[
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "h2c-nope"),
            ("x-kept", "1"),
        ],
        Bytes::new(),
    )
    .await;
    let got = main.next().await;
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(got.header(gone).is_none(), "{gone} reached main");
    }
    assert_eq!(got.header("te"), Some("trailers"));
    assert_eq!(got.header("x-kept"), Some("1"));
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.headers.get(gone).is_none(),
            "{gone} reached the client"
        );
    }
    assert_eq!(resp.headers["x-resp-kept"], "1");
}

#[tokio::test]
async fn host_is_main_authority_and_forwarded_headers_are_set() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    send(
        Method::GET,
        &proxy.url("/"),
        &[
            ("host", "shop.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "spoofed.example"),
            ("x-forwarded-proto", "https"),
        ],
        Bytes::new(),
    )
    .await;
    let got = main.next().await;
    assert_eq!(got.header("host"), Some(main.addr.to_string().as_str()));
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(got.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert!(got.header("via").unwrap().contains("trafficmirror-"));
}

#[tokio::test]
async fn response_is_streamed_before_main_finishes() {
    // A main that sends one chunk, then waits for the test before finishing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        let _ = release_rx.await;
        s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
    });
    let proxy = TestProxy::start(&["--main", &format!("http://{main_addr}")]).await;
    let req = http::Request::get(proxy.url("/stream"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client().request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk arrives while main is still sending")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    release_tx.send(()).unwrap();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.to_bytes(), "last");
}

#[tokio::test]
async fn main_down_gives_502_and_recovers() {
    let main_addr = closed_addr().await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main_addr}")]).await;
    let resp = get(&proxy.url("/")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(resp.text().contains("main"), "{}", resp.text());

    let listener = TcpListener::bind(main_addr).await.expect("port free again");
    let main = MockBackend::start_on(listener, Reply::ok("back")).await;
    let resp = get(&proxy.url("/")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "back");
    main.next().await;
}

#[tokio::test]
async fn main_down_under_load_logs_one_line_per_second_not_one_per_request() {
    let main_addr = closed_addr().await;
    let bin = Binary::start(&["--main", &format!("http://{main_addr}")]).await;
    for _ in 0..20 {
        assert_eq!(get(&bin.url("/")).await.status, StatusCode::BAD_GATEWAY);
    }
    let stderr = bin.terminate_within(Duration::from_secs(5)).await;
    let lines = stderr.matches("main target unreachable").count();
    // 20 refused requests take milliseconds: one line (a slow machine may log one per
    // second it takes), never one per request.
    assert!((1..=3).contains(&lines), "{lines} lines: {stderr}");
}

#[tokio::test]
async fn a_main_that_leads_back_here_gets_508_instead_of_an_endless_loop() {
    // The proxy's own address as main: every hop would add a Via entry until the head
    // grew too large (431), each hop holding a connection meanwhile.
    let addr = closed_addr().await.to_string();
    let main = format!("http://{addr}");
    let bin = Binary::start_with(&["--listen", &addr, "--main", &main], &[]).await;
    let resp = get(&bin.url("/")).await;
    assert_eq!(resp.status, StatusCode::LOOP_DETECTED, "{}", resp.text());
    assert!(resp.text().contains("loop detected"), "{}", resp.text());
    let stderr = bin.terminate_within(Duration::from_secs(5)).await;
    assert!(stderr.contains("answered 508"), "{stderr}");
}

#[tokio::test]
async fn slow_main_gives_504_with_main_timeout() {
    let (_main, proxy) = TestProxy::in_front_of(
        Reply::After(Duration::from_secs(3), Box::new(Reply::ok("late"))),
        &["--main-timeout", "200ms"],
    )
    .await;
    let resp = tokio::time::timeout(Duration::from_secs(2), get(&proxy.url("/")))
        .await
        .expect("the 504 comes before main's answer");
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
}

async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    // Every answer here ends with main's body, "ok".
    read_until(stream, "ok").await
}

#[tokio::test]
async fn http10_request_is_served_and_closed() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let text = raw_exchange(&mut s, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n, 0,
        "HTTP/1.0 without keep-alive is closed after the response"
    );
    assert_eq!(main.next().await.uri.path(), "/old");
}

#[tokio::test]
async fn http11_keep_alive_serves_several_requests_on_one_connection() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for path in ["/one", "/two", "/three"] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        let text = raw_exchange(&mut s, req.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(main.next().await.uri.path(), path);
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(proxy.url("/h2?x=1"))
        .body(Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, h2.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    let got = main.next().await;
    assert_eq!(got.uri.path_and_query().unwrap(), "/h2?x=1");
    assert_eq!(got.body, "h2 body");
    assert_eq!(got.header("host"), Some(main.addr.to_string().as_str()));
    assert_eq!(
        got.header("x-forwarded-host"),
        Some(proxy.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn connections_to_main_and_mirrors_are_kept_alive_and_reused() {
    // One worker thread, so one pool per target.
    let (main, [mirror], proxy) =
        TestProxy::with_mirrors(Reply::ok("ok"), [Reply::ok("m")], &["--threads", "1"]).await;
    for i in 1..=20 {
        assert_eq!(
            get(&proxy.url(&format!("/{i}"))).await.status,
            StatusCode::OK
        );
        // The copy's answer has been read once it is counted: its connection is idle.
        eventually("the copy is delivered", || async {
            proxy.mirror_json(&mirror.url()).await.unwrap()["succeeded"] == i
        })
        .await;
    }
    assert_eq!(main.total.load(Ordering::SeqCst), 20);
    assert_eq!(main.connections.load(Ordering::SeqCst), 1);
    assert_eq!(mirror.total.load(Ordering::SeqCst), 20);
    assert_eq!(mirror.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn main_answering_connection_close_gets_a_new_connection_per_request() {
    // `Connection: close` on every answer: each request needs a fresh connection, and
    // none of them may fail on a connection main has already closed.
    let (main, proxy) = TestProxy::in_front_of(
        Reply::With(
            StatusCode::OK,
            vec![("connection", "close")],
            Bytes::from_static(b"ok"),
        ),
        &["--threads", "1"],
    )
    .await;
    for i in 0..10 {
        let answer = get(&proxy.url(&format!("/{i}"))).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text()
        );
        assert_eq!(answer.body, "ok");
    }
    assert_eq!(main.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn http10_request_without_host_gets_mains_authority_with_preserve_host() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &["--preserve-host"]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let text = raw_exchange(&mut s, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    let got = main.next().await;
    assert_eq!(got.header("host"), Some(main.addr.to_string().as_str()));
    assert_eq!(got.uri.path(), "/old");
}

/// A raw main that answers `answer` and reports what it received, lower-cased: the head
/// and, for a chunked body, the body up to the end of its trailer section.
async fn recording_raw_main(
    answer: &'static [u8],
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let main = raw_server(move |mut stream| {
        let seen_tx = seen_tx.clone();
        async move {
            let mut got = read_head(&mut stream).await;
            let chunked = String::from_utf8_lossy(&got)
                .to_lowercase()
                .contains("transfer-encoding: chunked");
            let mut buf = [0u8; 1024];
            while chunked
                && !(String::from_utf8_lossy(&got).contains("\r\n0\r\n")
                    && got.ends_with(b"\r\n\r\n"))
            {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = seen_tx.send(String::from_utf8_lossy(&got).to_lowercase());
            let _ = stream.write_all(answer).await;
            // Open until the proxy is done with the connection.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        }
    })
    .await;
    (format!("http://{main}"), seen)
}

/// What main received, within [`WAIT`].
async fn received(seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("main got the request in time")
        .expect("main is running")
}

#[tokio::test]
async fn trailers_from_main_reach_a_client_that_accepts_them() {
    let (main, mut seen) = recording_raw_main(
        b"HTTP/1.1 200 OK\r\nTrailer: X-Checksum\r\n\
          Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 42\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    let answer = raw(
        proxy.addr,
        b"GET /t HTTP/1.1\r\nHost: x\r\nTE: gzip, trailers\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_lowercase();
    let head = received(&mut seen).await;
    // Only the `trailers` member goes on: the codings are for the client's connection.
    assert!(head.contains("\r\nte: trailers\r\n"), "{head}");
    assert!(answer.contains("\r\ntrailer: x-checksum\r\n"), "{answer}");
    assert!(
        answer.ends_with("3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn trailers_from_the_client_reach_main() {
    let (main, mut seen) =
        recording_raw_main(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    let answer = raw(
        proxy.addr,
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\
          Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 7\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let at_main = received(&mut seen).await;
    assert!(at_main.contains("\r\ntrailer: x-sum\r\n"), "{at_main}");
    assert!(
        at_main.ends_with("3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n"),
        "{at_main}"
    );
}
