//! `spill=file:///PATH`: copies a mirror failed or dropped are written as GoReplay
//! request records (read back here by a reader of this file's own, not the program's),
//! counted `spilled`, and `trafficmirror replay` redelivers them.

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::support::*;

const SEPARATOR: &[u8] = b"\n\xf0\x9f\x90\xb5\xf0\x9f\x99\x88\xf0\x9f\x99\x89\n";

/// The request lines and bodies of the request records (type 1) in a GoReplay file.
fn spilled_requests(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let at = rest
            .windows(SEPARATOR.len())
            .position(|w| w == SEPARATOR)
            .expect("every record ends with the separator");
        let record = &rest[..at];
        rest = &rest[at + SEPARATOR.len()..];
        let nl = record.iter().position(|&b| b == b'\n').unwrap();
        let meta = std::str::from_utf8(&record[..nl]).unwrap();
        assert_eq!(meta.split(' ').count(), 4, "meta line {meta:?}");
        if !meta.starts_with("1 ") {
            continue;
        }
        let message = &record[nl + 1..];
        let head_end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&message[..head_end]).unwrap();
        let start = head.split("\r\n").next().unwrap().to_owned();
        out.push((start, message[head_end + 4..].to_vec()));
    }
    out
}

fn sorted_starts(path: &std::path::Path) -> Vec<String> {
    let mut starts: Vec<String> = spilled_requests(path).into_iter().map(|r| r.0).collect();
    starts.sort();
    starts
}

/// Waits until the mirror `url` counts `n` copies `spilled`, none queued.
async fn spilled(proxy: &TestProxy, url: &str, n: u64) -> serde_json::Value {
    eventually(&format!("{n} copies spilled at {url}"), || async {
        proxy
            .mirror_json(url)
            .await
            .is_some_and(|m| m["spilled"] == n && m["queued"] == 0)
    })
    .await;
    proxy.mirror_json(url).await.unwrap()
}

#[tokio::test]
async fn failed_copies_are_spilled_counted_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spill.gor");
    let refusing = format!("http://{}", closed_addr().await);
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!("url={refusing}&spill=file://{}", file.display()))
        .await;
    for i in 0..3 {
        let body = Bytes::from(format!("body {i}"));
        let answer = send(Method::POST, &proxy.url(&format!("/s/{i}")), &[], body).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let listed = spilled(&proxy, &refusing, 3).await;
    assert_eq!(
        listed["failed"].as_u64().unwrap() + listed["dropped"].as_u64().unwrap(),
        3,
        "each spilled copy is also failed or dropped: {listed}"
    );
    assert!(listed["failed"].as_u64().unwrap() >= 1, "{listed}");
    assert_eq!(
        listed["options"]["spill"],
        format!("file://{}", file.display())
    );
    let mut records = spilled_requests(&file);
    records.sort();
    assert_eq!(
        records,
        (0..3)
            .map(|i| (
                format!("POST /s/{i} HTTP/1.1"),
                format!("body {i}").into_bytes()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(main.count(), 3);
    proxy.stop().await;

    // The spill file is a recording: replay redelivers every copy.
    let target = MockBackend::start(Reply::ok("again")).await;
    let sandbox = Sandbox::new();
    let mut command = tokio::process::Command::from(sandbox.command());
    command
        .arg("replay")
        .arg(&file)
        .args(["--to", &target.url()]);
    command.args(["--speed", "0"]);
    let out = tokio::time::timeout(WAIT * 2, command.output())
        .await
        .expect("replay ends in time")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = target.next().await;
        got.push((r.uri.path().to_owned(), r.body.clone()));
    }
    got.sort();
    assert_eq!(
        got,
        (0..3)
            .map(|i| (format!("/s/{i}"), Bytes::from(format!("body {i}"))))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn copies_dropped_by_a_full_queue_are_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spill.gor");
    // Accepts connections, never answers: the first copy holds the only queue slot.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (_main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &[
            "--max-queued-requests",
            "1",
            "--mirror-timeout",
            "30s",
            "--shutdown-timeout",
            "200ms",
        ],
    )
    .await;
    proxy
        .put_ok(&format!("url={hung}&spill=file://{}", file.display()))
        .await;
    for i in 0..3 {
        let answer = get(&proxy.url(&format!("/q/{i}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    eventually("2 copies spilled", || async {
        proxy
            .mirror_json(&hung)
            .await
            .is_some_and(|m| m["spilled"] == 2)
    })
    .await;
    let listed = proxy.mirror_json(&hung).await.unwrap();
    assert_eq!(listed["dropped"], 2, "{listed}");
    assert_eq!(listed["queued"], 1, "{listed}");
    assert_eq!(listed["failed"], 0, "{listed}");
    assert_eq!(
        sorted_starts(&file),
        ["GET /q/1 HTTP/1.1", "GET /q/2 HTTP/1.1"]
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_mirror_without_spill_writes_nothing_and_counts_none() {
    // Two failing mirrors, one spilling into the directory: only its copy is written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spill.gor");
    let refusing = format!("http://{}", closed_addr().await);
    let spilling = format!("http://{}", closed_addr().await);
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy.add_mirrors(&[&refusing]).await;
    proxy
        .put_ok(&format!("url={spilling}&spill=file://{}", file.display()))
        .await;
    get(&proxy.url("/n")).await;
    spilled(&proxy, &spilling, 1).await;
    eventually("the copy failed", || async {
        proxy
            .mirror_json(&refusing)
            .await
            .is_some_and(|m| m["failed"] == 1 && m["queued"] == 0)
    })
    .await;
    let listed = proxy.mirror_json(&refusing).await.unwrap();
    assert_eq!(listed["spilled"], 0, "{listed}");
    assert!(listed["options"]["spill"].is_null(), "{listed}");
    proxy.stop().await;
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["spill.gor"]);
    assert_eq!(sorted_starts(&file), ["GET /n HTTP/1.1"]);
}

#[tokio::test]
async fn copies_still_under_way_at_shutdown_are_spilled_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spill.gor");
    // Reads each copy's head, says so, and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = hung.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                read_until(&mut stream, "\r\n\r\n").await;
                let _ = seen_tx.send(());
                std::future::pending::<()>().await;
                drop(stream);
            });
        }
    });
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!("{hung_url} spill=file://{}", file.display());
    let bin = Binary::start(&[
        "--main",
        &main.url(),
        "--mirror",
        &mirror,
        "--mirror-timeout",
        "30s",
        "--shutdown-timeout",
        "800ms",
    ])
    .await;
    for i in 0..3 {
        let answer = get(&bin.url(&format!("/late/{i}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    for _ in 0..3 {
        tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("the copy reached the mirror in time");
    }
    // Nothing is spilled while the copies are under way.
    assert!(spilled_requests(&file).is_empty());
    let started = std::time::Instant::now();
    let stderr = bin
        .terminate_within(std::time::Duration::from_secs(2))
        .await;
    // Within --shutdown-timeout (and the exit's few milliseconds).
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("shutdown complete"))
        .unwrap_or_else(|| panic!("no complete shutdown: {stderr}"));
    // Cut short, each copy is `failed` (the counts add up: sent = succeeded + failed),
    // and `spilled`.
    assert!(
        line.contains(&format!(
            "{hung_url} sent=3 delivered=0 failed=3 dropped=0 undelivered=0 spilled=3"
        )),
        "{line}"
    );
    assert_eq!(
        sorted_starts(&file),
        [
            "GET /late/0 HTTP/1.1",
            "GET /late/1 HTTP/1.1",
            "GET /late/2 HTTP/1.1"
        ]
    );
}
