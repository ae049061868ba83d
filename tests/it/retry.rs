//! `retry=N` (docs/mirror-options.md): copies that never reached the mirror, and failed
//! copies of idempotent methods, are tried again; a non-idempotent copy that may have
//! arrived is never sent twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// `(succeeded, failed, retried)` of the mirror at `url`.
async fn outcomes(proxy: &TestProxy, url: &str) -> (u64, u64, u64) {
    let m = proxy.mirror_json(url).await.expect("mirror listed");
    let n = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
    (n("succeeded"), n("failed"), n("retried"))
}

/// Waits (bounded) until the mirror's copy has ended, and returns its outcomes.
async fn settled(proxy: &TestProxy, url: &str) -> (u64, u64, u64) {
    eventually("the copy ends", || async {
        let (succeeded, failed, _) = outcomes(proxy, url).await;
        succeeded + failed == 1
    })
    .await;
    outcomes(proxy, url).await
}

async fn proxy_with(mirror: &str, extra: &[&str]) -> (TestProxy, MockBackend) {
    let main = MockBackend::start(Reply::ok("main")).await;
    let main_url = main.url();
    let mut args = vec!["--main", main_url.as_str(), "--mirror", mirror];
    args.extend_from_slice(extra);
    (TestProxy::start(&args).await, main)
}

/// A mirror that closes its first `resets` connections unread, then reads each request
/// and answers `200` with `Connection: close`; `seen` counts the requests it read.
async fn resetting_mirror(resets: usize, seen: Arc<AtomicUsize>) -> SocketAddr {
    let accepted = Arc::new(AtomicUsize::new(0));
    raw_server(move |mut stream| {
        let (accepted, seen) = (accepted.clone(), seen.clone());
        async move {
            if accepted.fetch_add(1, Ordering::SeqCst) < resets {
                drop(stream);
                return;
            }
            read_until(&mut stream, "copied").await;
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_put_to_a_mirror_that_resets_its_first_connections_arrives_once() {
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = resetting_mirror(2, seen.clone()).await;
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&format!("{url} retry=3"), &[]).await;
    let answer = send(Method::PUT, &proxy.url("/item"), &[], "copied").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(settled(&proxy, &url).await, (1, 0, 2));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn without_retry_a_reset_copy_fails_as_before() {
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = resetting_mirror(1, seen.clone()).await;
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&url, &[]).await;
    send(Method::PUT, &proxy.url("/item"), &[], "copied").await;
    assert_eq!(settled(&proxy, &url).await, (0, 1, 0));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_eq!(listed["options"]["retry"], 0, "{listed}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_post_to_a_port_that_listens_a_moment_later_arrives_once() {
    // A reserved port where nothing listens: connections are refused until it listens.
    let addr = closed_addr().await;
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&format!("{url} retry=5"), &[]).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let late = {
        let seen = seen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .expect("the reserved port binds again");
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    read_until(&mut stream, "copied").await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        })
    };
    let answer = send(Method::POST, &proxy.url("/order"), &[], "copied").await;
    assert_eq!(answer.status, StatusCode::OK);
    let (succeeded, failed, retried) = settled(&proxy, &url).await;
    assert_eq!((succeeded, failed), (1, 0));
    assert!((1..=5).contains(&retried), "retried {retried}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    late.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn a_post_that_reached_a_hung_mirror_is_never_resent() {
    // The mirror reads the copy, hangs, then drops the connection unanswered, well
    // within --mirror-timeout: room for three more tries that only the method forbids
    // (a GET would be tried again, see below).
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = {
        let seen = seen.clone();
        raw_server(move |mut stream| {
            let seen = seen.clone();
            async move {
                read_until(&mut stream, "\r\n\r\n").await;
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                drop(stream);
            }
        })
        .await
    };
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&format!("{url} retry=3"), &["--mirror-timeout", "5s"]).await;
    send(
        Method::POST,
        &proxy.url("/order"),
        &[],
        Bytes::from("copied"),
    )
    .await;
    // The copy ends as one outcome only after its last try: no retry can follow it.
    assert_eq!(settled(&proxy, &url).await, (0, 1, 0));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // The same hang on a GET: it may be sent again, and is (four tries in all).
    get(&proxy.url("/page")).await;
    eventually("the GET's copy ends", || async {
        let (succeeded, failed, _) = outcomes(&proxy, &url).await;
        succeeded + failed == 2
    })
    .await;
    assert_eq!(outcomes(&proxy, &url).await, (0, 2, 3));
    assert_eq!(seen.load(Ordering::SeqCst), 5);
    proxy.stop().await;
}

#[tokio::test]
async fn a_post_the_mirror_read_then_closed_on_is_never_resent() {
    // Fails at once (no answer, connection closed), long before --mirror-timeout: only
    // the method keeps it from being tried again.
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = {
        let seen = seen.clone();
        raw_server(move |mut stream| {
            let seen = seen.clone();
            async move {
                read_until(&mut stream, "copied").await;
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        })
        .await
    };
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&format!("{url} retry=3"), &[]).await;
    send(
        Method::POST,
        &proxy.url("/order"),
        &[],
        Bytes::from("copied"),
    )
    .await;
    assert_eq!(settled(&proxy, &url).await, (0, 1, 0));
    // The copy ends as one outcome only after its last try: no retry can follow it.
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(outcomes(&proxy, &url).await, (0, 1, 0));
    proxy.stop().await;
}

#[tokio::test]
async fn a_get_answered_503_twice_is_sent_three_times() {
    let seen = Arc::new(AtomicUsize::new(0));
    let addr = {
        let seen = seen.clone();
        raw_server(move |mut stream| {
            let seen = seen.clone();
            async move {
                read_until(&mut stream, "\r\n\r\n").await;
                let status = if seen.fetch_add(1, Ordering::SeqCst) < 2 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let head =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
            }
        })
        .await
    };
    let url = format!("http://{addr}");
    let (proxy, _main) = proxy_with(&format!("{url} retry=3"), &[]).await;
    get(&proxy.url("/page")).await;
    assert_eq!(settled(&proxy, &url).await, (1, 0, 2));
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_eq!(listed["options"]["retry"], 3, "{listed}");
    assert_eq!(listed["state"], "alive", "{listed}");
    proxy.stop().await;
}
