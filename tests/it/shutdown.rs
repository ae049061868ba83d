//! docs/operations.md, "Shutdown", run against the real binary: SIGTERM/SIGINT drain and exit 0.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let main = MockBackend::start(Reply::After(
        Duration::from_millis(800),
        Box::new(Reply::ok("slow but complete")),
    ))
    .await;
    let bin = Binary::start(&["-v", "--main", &main.url()]).await;
    let url = bin.url("/slow");
    let request = tokio::spawn(async move { send(Method::GET, &url, &[], Bytes::new()).await });
    main.next().await; // main has the request: it is in flight
    bin.signal("TERM");
    let resp = request.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "slow but complete");
    let (code, stderr) = bin.wait(WAIT).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("shutdown complete"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn sigint_without_traffic_exits_0_promptly() {
    let bin = Binary::start(&["-v"]).await;
    bin.signal("INT");
    let (code, stderr) = bin.wait(Duration::from_secs(2)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGINT"), "{stderr}");
}

#[tokio::test]
async fn queued_mirror_copies_are_delivered_before_exit() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let mirror = MockBackend::start(Reply::After(
        Duration::from_millis(500),
        Box::new(Reply::ok("m")),
    ))
    .await;
    let bin = Binary::start(&["-v", "--main", &main.url(), "--mirror", &mirror.url()]).await;
    for i in 0..3 {
        send(Method::POST, &bin.url(&format!("/c{i}")), &[], "copy").await;
    }
    mirror.next().await; // the copies are at the mirror, answers pending
    bin.signal("TERM");
    let (code, stderr) = bin.wait(WAIT).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("undelivered=0"), "{stderr}");
    assert_eq!(mirror.count(), 3);
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain_and_reports_undelivered_copies() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s); // accept, never answer
            let _ = seen_tx.send(());
        }
    });
    let bin = Binary::start(&[
        "--main",
        &main.url(),
        "--mirror",
        &hung_url,
        "--mirror-timeout",
        "30s",
        "--shutdown-timeout",
        "500ms",
    ])
    .await;
    send(Method::GET, &bin.url("/x"), &[], Bytes::new()).await;
    tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap(); // copy is in flight
    let stderr = bin.terminate_within(Duration::from_secs(3)).await;
    assert!(stderr.contains("undelivered=1"), "{stderr}");
}

#[tokio::test]
async fn admin_login_flood_uses_one_thread_and_sigterm_still_exits_in_time() {
    // Each wrong login costs a bcrypt check (~0.3 s at cost 10 in a debug build); the
    // flood is far more work than the shutdown timeout allows.
    let hash = bcrypt::hash("right", 10).unwrap();
    let path = std::env::temp_dir().join(format!("tm-flood-{}.txt", std::process::id()));
    std::fs::write(&path, format!("admin:{hash}\n")).unwrap();
    let bin = Binary::start(&[
        "--password",
        path.to_str().unwrap(),
        "--threads",
        "1",
        "--shutdown-timeout",
        "1s",
    ])
    .await;
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let wrong = [("authorization", "Basic YWRtaW46d3Jvbmc=")]; // admin:wrong
    for _ in 0..30 {
        let (url, answered_tx) = (bin.url("/targets"), answered_tx.clone());
        tokio::spawn(async move {
            let resp = send(Method::GET, &url, &wrong, Bytes::new()).await;
            let _ = answered_tx.send(resp.status);
        });
    }
    // The flood is being worked on once the first answer is out.
    let first = tokio::time::timeout(WAIT, answered.recv()).await.unwrap();
    assert_eq!(first, Some(StatusCode::UNAUTHORIZED));
    // One check at a time: not a thread per waiting login.
    let threads = bin.thread_names();
    eprintln!("threads during the flood: {threads:?}");
    assert!(threads.len() <= 8, "{threads:?}");
    bin.terminate_within(Duration::from_secs(3)).await; // --shutdown-timeout is 1s
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn a_clean_shutdown_reports_each_mirrors_copies_at_the_default_level() {
    let main = MockBackend::start(Reply::ok("ok")).await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let failing = MockBackend::start(Reply::status(503)).await;
    // Default verbosity: warnings only.
    let bin = Binary::start(&[
        "--main",
        &main.url(),
        "--mirror",
        &format!("{},{}", mirror.url(), failing.url()),
    ])
    .await;
    for i in 0..3 {
        send(Method::POST, &bin.url(&format!("/c{i}")), &[], "copy").await;
    }
    for _ in 0..3 {
        mirror.next().await;
        failing.next().await;
    }
    let stderr = bin.terminate_within(Duration::from_secs(3)).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("shutdown complete"))
        .unwrap_or_else(|| panic!("no shutdown line: {stderr}"));
    assert!(line.contains("WARN"), "{line}");
    let counts = "sent=3 delivered=3 failed=0 dropped=0 undelivered=0";
    assert!(
        line.contains(&format!("{} {counts}", mirror.url())),
        "{line}"
    );
    let counts = "sent=3 delivered=0 failed=3 dropped=0 undelivered=0";
    assert!(
        line.contains(&format!("{} {counts}", failing.url())),
        "{line}"
    );
}

/// How long after `--shutdown-timeout` the process may still be running.
const EXIT_MARGIN: Duration = Duration::from_millis(150);

/// A mirror that accepts connections and never answers; says when a copy reached it.
async fn hung_mirror() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
            let _ = seen_tx.send(());
        }
    });
    (url, seen_rx)
}

#[tokio::test]
async fn exit_comes_within_the_shutdown_timeout_with_a_hung_mirror_and_silent_clients() {
    use tokio::io::AsyncWriteExt;
    let main = MockBackend::start(Reply::ok("ok")).await;
    let (hung, mut seen) = hung_mirror().await;
    let timeout = Duration::from_millis(500);
    let bin = Binary::start(&[
        "--main",
        &main.url(),
        "--mirror",
        &hung,
        "--mirror-timeout",
        "30s",
        "--shutdown-timeout",
        "500ms",
    ])
    .await;
    // Clients that never speak, stop mid-head, or open HTTP/2 and then never read (so
    // they never acknowledge the PING sent with the GOAWAY).
    let fds = bin.open_fds();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(&bin.addr).await.unwrap());
    }
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&bin.addr).await.unwrap();
        s.write_all(b"GET /half HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        silent.push(s);
    }
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&bin.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        silent.push(s);
    }
    eventually("the proxy holds the 12 connections", || async {
        bin.open_fds() >= fds + 12
    })
    .await;
    for i in 0..5 {
        send(Method::POST, &bin.url(&format!("/c{i}")), &[], "copy").await;
    }
    tokio::time::timeout(WAIT, seen.recv()).await.unwrap(); // copies are in flight
    let (code, took, stderr) = bin.terminate_by(timeout + EXIT_MARGIN).await;
    eprintln!("exit {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("shutdown timeout reached"),
        "took {took:?}: {stderr}"
    );
    drop(silent);
}

/// The names of the kernel functions the process's threads are blocked in.
fn blocked_in(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("wchan")).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_file_read_that_never_returns_does_not_hold_the_exit() {
    let sandbox = Sandbox::new();
    let targets = sandbox.write("work/targets.txt", "http://127.0.0.1:1\n");
    let bin = Binary::start_in(
        sandbox,
        &[
            "--listen",
            "127.0.0.1:0",
            "--targets-file",
            targets.to_str().unwrap(),
            "--shutdown-timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    // A targets file on a hung mount: here a FIFO nobody writes, whose open blocks the
    // next poll's read (on a blocking-pool thread) for ever.
    std::fs::remove_file(&targets).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&targets)
        .status()
        .unwrap();
    assert!(made.success());
    let pid = bin.pid();
    eventually("the targets file read is blocked in open()", || async {
        blocked_in(pid).iter().any(|w| w == "wait_for_partner")
    })
    .await;
    let (code, took, stderr) = bin
        .terminate_by(Duration::from_millis(300) + EXIT_MARGIN)
        .await;
    eprintln!("exit {took:?} after SIGTERM");
    assert_eq!(code, Some(0), "{stderr}");
}
