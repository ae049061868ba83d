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
