//! Message framing (RFC 9112 §3.2, §6.3, §7.1): malformed request bodies and `Host`
//! headers get `400`, and main's answers framed two ways lose their `Content-Length`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// A main that answers every request head with `Content-Length: 1` *and* a chunked
/// body `abc`.
async fn both_lengths_main() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\
                            Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn mains_content_length_is_dropped_when_it_also_sends_transfer_encoding_http1() {
    let main = both_lengths_main().await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    let text = raw(
        &proxy.addr.to_string(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("content-length"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked"), "{text}");
    assert_eq!(body, "3\r\nabc\r\n0\r\n\r\n", "{text}");
}

#[tokio::test]
async fn mains_content_length_is_dropped_when_it_also_sends_transfer_encoding_http2() {
    let main = both_lengths_main().await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for _ in 0..2 {
        let req = Request::get(proxy.url("/")).body(Empty::new()).unwrap();
        let resp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers().get("content-length"), None);
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .unwrap()
            .expect("the body arrives whole")
            .to_bytes();
        assert_eq!(body, "abc");
    }
}

/// Chunked request bodies hyper refuses to decode (RFC 9112 §7.1).
fn malformed_chunked() -> Vec<(&'static str, Vec<u8>)> {
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let with = |body: &str| format!("{head}{body}").into_bytes();
    vec![
        ("invalid chunk size", with("zz\r\nabc\r\n0\r\n\r\n")),
        (
            "overflowing chunk size",
            with("fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "100 KB chunk extension",
            with(&format!(
                "3;ext={}\r\nabc\r\n0\r\n\r\n",
                "a".repeat(100_000)
            )),
        ),
        ("missing CRLF after the data", with("3\r\nabcX0\r\n\r\n")),
    ]
}

/// Sends each malformed body to a binary started with `args` and checks for `400`;
/// returns its stderr after SIGTERM.
async fn malformed_bodies_get_400(args: &[&str]) -> String {
    let bin = Binary::start(args).await;
    for (name, request) in malformed_chunked() {
        let text = raw(&bin.addr, &request).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: {text}");
    }
    bin.terminate_within(Duration::from_secs(3)).await
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_not_502_without_a_mirror() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let stderr = malformed_bodies_get_400(&["--main", &main.url()]).await;
    assert!(!stderr.contains("main target unreachable"), "{stderr}");
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_not_502_with_a_mirror() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let stderr =
        malformed_bodies_get_400(&["--main", &main.url(), "--mirror", &mirror.url()]).await;
    assert!(!stderr.contains("main target unreachable"), "{stderr}");
    // A body the client did not finish is not mirrored.
    mirror
        .assert_nothing_within(Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn http11_request_without_host_or_with_two_gets_400() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let addr = proxy.addr.to_string();
    let cases: [(&str, &[u8]); 3] = [
        ("no Host", b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"),
        (
            "two Host headers",
            b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "the same Host twice",
            b"GET /a HTTP/1.1\r\nHost: a\r\nHost: a\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (name, request) in cases {
        let text = raw(&addr, request).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: {text}");
    }
    main.assert_nothing_within(Duration::from_millis(100)).await;
    // One Host is fine; HTTP/1.0 may have none.
    for (request, status) in [
        (
            &b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
            "HTTP/1.1 200",
        ),
        (b"GET /a HTTP/1.0\r\n\r\n", "HTTP/1.0 200"),
    ] {
        let text = raw(&addr, request).await;
        assert!(text.starts_with(status), "{text}");
    }
}
