//! Resource limits: the open-files limit, connections per target, accept errors.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::support::*;

/// "Max open files" (soft, hard) from /proc/PID/limits.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in {limits}"));
    let mut values = line["Max open files".len()..].split_whitespace();
    let soft = values.next().unwrap().to_owned();
    let hard = values.next().unwrap().to_owned();
    (soft, hard)
}

#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    // Started with a soft limit below the hard one, as most systems do (1024).
    let soft = (hard / 2).min(1024);
    assert!(soft < hard, "this host's hard limit {hard} leaves no room");
    let bin = Binary::start_with_ulimit(&format!("ulimit -Sn {soft}"), &[]).await;
    let (soft_now, hard_now) = open_files_limits(bin.pid());
    assert_eq!(hard_now, hard.to_string());
    assert_eq!(soft_now, hard_now, "soft limit raised to the hard limit");
    bin.terminate_within(Duration::from_secs(3)).await;
}

/// Sends `count` GET requests to `url` at once; returns their statuses.
async fn burst(url: &str, count: usize) -> Vec<StatusCode> {
    let mut all = JoinSet::new();
    for i in 0..count {
        let url = format!("{url}/burst/{i}");
        all.spawn(async move { get(&url).await.status });
    }
    tokio::time::timeout(WAIT * 2, all.join_all())
        .await
        .expect("every request answered")
}

#[tokio::test]
async fn a_burst_of_copies_opens_at_most_the_bound_of_connections_to_a_mirror() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    // Slow enough that the copies overlap: without a bound each would get a connection.
    let mirror = MockBackend::start(Reply::After(
        Duration::from_millis(20),
        Box::new(Reply::ok("m")),
    ))
    .await;
    let proxy = TestProxy::start(&[
        "--main",
        &main.url(),
        "--max-connections-per-target",
        "4",
        "--threads",
        "2",
    ])
    .await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    let statuses = burst(&proxy.url(""), 100).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    eventually("all 100 copies delivered", || async {
        proxy.mirror_json(&mirror.url()).await.unwrap()["succeeded"] == 100
    })
    .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!((&m["dropped"], &m["failed"]), (&0.into(), &0.into()), "{m}");
    let opened = mirror.connections.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("connections opened to the mirror: {opened}");
    assert!(opened <= 4, "{opened} connections opened to the mirror");
}

#[tokio::test]
async fn a_burst_of_requests_opens_at_most_the_bound_of_connections_to_main() {
    let main = MockBackend::start(Reply::After(
        Duration::from_millis(20),
        Box::new(Reply::ok("ok")),
    ))
    .await;
    let proxy = TestProxy::start(&[
        "--main",
        &main.url(),
        "--max-connections-per-target",
        "2",
        "--threads",
        "2",
    ])
    .await;
    let statuses = burst(&proxy.url(""), 40).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let opened = main.connections.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("connections opened to main: {opened}");
    assert!(opened <= 2, "{opened} connections opened to main");
}

/// A mirror that answers every request head with `200` on keep-alive connections and
/// reports each connection's end (EOF from the proxy) on the channel.
async fn eof_reporting_mirror() -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nm";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (url, closed)
}

#[tokio::test]
async fn removing_a_mirror_closes_its_idle_connections() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let (mirror, mut closed) = eof_reporting_mirror().await;
    let proxy = TestProxy::start(&["--main", &main.url()]).await;
    proxy.add_mirrors(&[&mirror]).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/a")).await.status, StatusCode::OK);
    }
    eventually("the copies are answered", || async {
        proxy.mirror_json(&mirror).await.unwrap()["succeeded"] == 3
    })
    .await;
    // The connections are idle in the mirror's pools now.
    assert!(closed.try_recv().is_err(), "a connection closed early");
    let removed = send(
        Method::DELETE,
        &proxy.admin_url(&format!("?url={mirror}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK);
    tokio::time::timeout(WAIT, closed.recv())
        .await
        .expect("the removed mirror's idle connection is closed")
        .unwrap();
}

#[tokio::test]
async fn accept_errors_are_logged_at_most_once_a_second() {
    // A hard limit of 48 descriptors: the binary needs ~16 of its own, so the burst
    // below runs it out and the rest of the connections wait in the backlog, where
    // every accept fails with EMFILE until one is closed.
    let main = MockBackend::start(Reply::ok("ok")).await;
    let bin = Binary::start_with_ulimit(
        "ulimit -n 48",
        &[
            "--main",
            &main.url(),
            "--threads",
            "1",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(&bin.addr).await.unwrap());
    }
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await; // the observation window, not a synchronisation
    let stderr = bin.terminate_within(Duration::from_secs(5)).await;
    drop(held);
    let lines = stderr.matches("accept failed").count();
    eprintln!("accept-error lines in {window:?}: {lines}");
    assert!(lines >= 1, "the accept errors are reported: {stderr}");
    assert!(lines <= 4, "{lines} lines in {window:?}: {stderr}");
    assert!(
        stderr.contains("held_back="),
        "the lines held back are counted: {stderr}"
    );
}
