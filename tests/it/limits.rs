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
    // Slow enough that the copies overlap: without a bound each would get a connection.
    let slow = Reply::After(Duration::from_millis(20), Box::new(Reply::ok("m")));
    let (_main, [mirror], proxy) = TestProxy::with_mirrors(
        Reply::ok("ok"),
        [slow],
        &["--max-connections-per-target", "4", "--threads", "2"],
    )
    .await;
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
    let (main, proxy) = TestProxy::in_front_of(
        Reply::After(Duration::from_millis(20), Box::new(Reply::ok("ok"))),
        &["--max-connections-per-target", "2", "--threads", "2"],
    )
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

/// What the [`eof_reporting_mirror`] saw.
#[derive(Debug, PartialEq, Eq)]
enum AtMirror {
    /// A request head for this path, on the connection with this index.
    Request(String, usize),
    /// The proxy closed the connection with this index.
    Closed(usize),
}

/// A mirror that answers every request head with `200` on keep-alive connections
/// (`/slow` after 4 s) and reports requests and connection ends.
async fn eof_reporting_mirror() -> (String, mpsc::UnboundedReceiver<AtMirror>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let events_tx = events_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        let request: Vec<u8> = head.drain(..end + 4).collect();
                        let text = String::from_utf8_lossy(&request);
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let _ = events_tx.send(AtMirror::Request(path.clone(), index));
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_secs(4)).await;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nm";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = events_tx.send(AtMirror::Closed(index));
            });
            index += 1;
        }
    });
    (url, events)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<AtMirror>, within: Duration) -> AtMirror {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("an event at the mirror in time")
        .unwrap()
}

async fn remove_mirror(proxy: &TestProxy, mirror: &str) {
    let removed = send(
        Method::DELETE,
        &proxy.admin_url(&format!("?url={mirror}")),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK);
}

#[tokio::test]
async fn removing_a_mirror_closes_its_idle_connections() {
    let (mirror, mut events) = eof_reporting_mirror().await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy.add_mirrors(&[&mirror]).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/a")).await.status, StatusCode::OK);
    }
    eventually("the copies are answered", || async {
        proxy.mirror_json(&mirror).await.unwrap()["succeeded"] == 3
    })
    .await;
    let mut open = Vec::new();
    while let Ok(AtMirror::Request(_, index)) = events.try_recv() {
        open.push(index);
    }
    assert_eq!(open.len(), 3, "no connection closed early");
    remove_mirror(&proxy, &mirror).await;
    match next_event(&mut events, WAIT).await {
        AtMirror::Closed(index) => assert!(open.contains(&index)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn removing_a_mirror_closes_its_idle_connections_while_a_copy_is_in_flight() {
    let (mirror, mut events) = eof_reporting_mirror().await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &["--threads", "1"]).await;
    proxy.add_mirrors(&[&mirror]).await;
    // A copy that the mirror answers only after 4 s, on connection `slow` ...
    get(&proxy.url("/slow")).await;
    let AtMirror::Request(_, slow) = next_event(&mut events, WAIT).await else {
        panic!("the slow copy first");
    };
    // ... and one answered at once, on another connection, idle afterwards.
    get(&proxy.url("/fast")).await;
    let AtMirror::Request(path, idle) = next_event(&mut events, WAIT).await else {
        panic!("then the fast copy");
    };
    assert_eq!((path.as_str(), idle != slow), ("/fast", true));
    eventually("the fast copy is answered", || async {
        proxy.mirror_json(&mirror).await.unwrap()["succeeded"] == 1
    })
    .await;
    remove_mirror(&proxy, &mirror).await;
    // The idle connection closes now, not when the slow copy ends.
    let event = next_event(&mut events, Duration::from_millis(1500)).await;
    assert_eq!(event, AtMirror::Closed(idle));
    // The copy in flight is still delivered, and its connection closed after it.
    let event = next_event(&mut events, WAIT).await;
    assert_eq!(event, AtMirror::Closed(slow));
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

#[tokio::test]
async fn copies_lost_to_our_own_fd_exhaustion_fail_and_leave_health_alone() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    // Closes every connection after its answer: each copy needs a new socket.
    let mirror = MockBackend::start(Reply::With(
        StatusCode::OK,
        vec![("connection", "close")],
        Bytes::from_static(b"m"),
    ))
    .await;
    let mut bin = Binary::start_with_ulimit(
        "ulimit -n 48",
        &[
            "-vv",
            "--main",
            &main.url(),
            "--mirror",
            &mirror.url(),
            "--threads",
            "1",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    // Warm-up: main's connection stays in the pool, the mirror's is closed. Wait until
    // the proxy has closed its side of that one and of the client's connection: a
    // descriptor freed later would let the copies below connect after all.
    assert_eq!(get(&bin.url("/warm-up")).await.status, StatusCode::OK);
    mirror.next().await;
    let port = mirror.addr.port();
    let proxy_port: u16 = bin.addr.rsplit(':').next().unwrap().parse().unwrap();
    eventually("the proxy closed its warm-up connections", || async move {
        sockets(Side::Remote, port) == 0 && sockets(Side::Local, proxy_port) == 0
    })
    .await;
    // Take every descriptor the process has left: the first connection is accepted
    // first, the last ones wait in the backlog.
    let mut first = TcpStream::connect(&bin.addr).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(&bin.addr).await.unwrap());
    }
    bin.wait_for_stderr("accept fails: no descriptor left", |log| {
        log.contains("accept failed")
    })
    .await;
    // More copies than it takes to make a mirror failing (5), each unable to connect.
    for i in 0..6 {
        let request = format!("GET /copy{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        first.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until(&mut first, "\r\n\r\nok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    bin.wait_for_stderr("six copies failed", |log| {
        log.matches("mirror copy failed: out of file descriptors")
            .count()
            == 6
    })
    .await;
    drop((first, held));
    let listing = get(&bin.url("/targets?format=json")).await;
    let json: serde_json::Value = serde_json::from_slice(&listing.body).unwrap();
    let m = &json[0];
    assert_eq!(m["state"], "alive", "{m}");
    assert_eq!((&m["sent"], &m["succeeded"]), (&7.into(), &1.into()), "{m}");
    // Sent, so `failed`; our own limit, so the mirror stays `alive`.
    assert_eq!((&m["failed"], &m["dropped"]), (&6.into(), &0.into()), "{m}");
    bin.terminate_within(Duration::from_secs(5)).await;
}

/// Which end of a connection a port is matched against.
#[derive(Clone, Copy)]
enum Side {
    Local,
    Remote,
}

/// Sockets on this host whose `side` port is `port` and that still hold a descriptor
/// (established, or closed by the peer and not yet by us), from /proc/net/tcp{,6}.
fn sockets(side: Side, port: u16) -> usize {
    let port = format!("{port:04X}");
    let column = match side {
        Side::Local => 1,
        Side::Remote => 2,
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|fields| {
            let at = fields.get(column).and_then(|r| r.rsplit(':').next());
            let state = fields.get(3).map(String::as_str);
            at == Some(port.as_str()) && matches!(state, Some("01" | "08"))
        })
        .count()
}
