//! Recording mirrors (`file:///PATH`) and `trafficmirror replay`: files written by the
//! proxy read back by a reader written here (not the program's), GoReplay's own format
//! replayed, replay timing and exit codes, and a recording cut by `kill -9`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

const SEPARATOR: &[u8] = b"\n\xf0\x9f\x90\xb5\xf0\x9f\x99\x88\xf0\x9f\x99\x89\n";

/// One record as this independent reader sees it.
#[derive(Debug)]
struct Rec {
    kind: String,
    id: String,
    timestamp: i128,
    latency: i128,
    /// The HTTP/1.1 message: start line, headers (lower-cased names), body.
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Splits at every separator; the meta line by spaces; the head at the empty line; the
/// body by `Content-Length`. Panics on anything else: the proxy's files must be exact.
fn read_records(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let at = rest
            .windows(SEPARATOR.len())
            .position(|w| w == SEPARATOR)
            .expect("every record ends with the separator");
        let record = &rest[..at];
        rest = &rest[at + SEPARATOR.len()..];
        let nl = record.iter().position(|&b| b == b'\n').unwrap();
        let meta = std::str::from_utf8(&record[..nl]).unwrap();
        let fields: Vec<&str> = meta.split(' ').collect();
        assert_eq!(fields.len(), 4, "meta line {meta:?}");
        let message = &record[nl + 1..];
        let head_end = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = std::str::from_utf8(&message[..head_end]).unwrap();
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        let body = message[head_end + 4..].to_vec();
        if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
            assert_eq!(body.len(), len.parse::<usize>().unwrap(), "{start}");
        } else {
            assert!(body.is_empty(), "a body without Content-Length: {start}");
        }
        out.push(Rec {
            kind: fields[0].to_owned(),
            id: fields[1].to_owned(),
            timestamp: fields[2].parse().unwrap(),
            latency: fields[3].parse().unwrap(),
            start,
            headers,
            body,
        });
    }
    out
}

impl Rec {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Waits until the mirror `url` counts `n` copies `key`.
async fn counted(proxy: &TestProxy, url: &str, key: &str, n: u64) {
    eventually(&format!("{n} copies {key} at {url}"), || async {
        proxy
            .mirror_json(url)
            .await
            .is_some_and(|m| m[key].as_u64() == Some(n))
    })
    .await;
}

#[tokio::test]
async fn copies_are_written_as_goreplay_records_read_back_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.gor");
    let url = format!("file://{}", path.display());
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main says hi"), &[]).await;
    proxy
        .put_ok(&format!(
            "url={url}&remove_header=Authorization&set_header=X-Recorded:1&method=GET,POST"
        ))
        .await;
    let before = now_ns();
    send(
        Method::POST,
        &proxy.url("/orders?id=7"),
        &[("authorization", "Bearer secret"), ("x-kept", "yes")],
        "{\"n\":1}",
    )
    .await;
    send(Method::GET, &proxy.url("/a"), &[], Bytes::new()).await;
    // Filtered out by method=: not written.
    send(Method::DELETE, &proxy.url("/gone"), &[], Bytes::new()).await;
    send(Method::GET, &proxy.url("/b?x=%25Y"), &[], Bytes::new()).await;
    counted(&proxy, &url, "succeeded", 3).await;
    let after = now_ns();
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_eq!(listed["filtered"], 1);
    assert_eq!(listed["failed"], 0);

    let records = read_records(&std::fs::read(&path).unwrap());
    assert_eq!(records.len(), 3);
    let starts: Vec<&str> = records.iter().map(|r| r.start.as_str()).collect();
    assert_eq!(
        starts,
        [
            "POST /orders?id=7 HTTP/1.1",
            "GET /a HTTP/1.1",
            "GET /b?x=%25Y HTTP/1.1"
        ]
    );
    let mut last = before;
    for r in &records {
        assert_eq!(r.kind, "1");
        assert_eq!(r.latency, -1);
        assert!(r.id.len() >= 24, "{}", r.id);
        assert!(r.id.bytes().all(|b| b.is_ascii_hexdigit()), "{}", r.id);
        assert!(r.timestamp >= last && r.timestamp <= after, "{r:?}");
        last = r.timestamp;
        assert_eq!(r.header("authorization"), None, "redacted");
        assert_eq!(r.header("x-recorded"), Some("1"));
    }
    let ids: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(records[0].body, b"{\"n\":1}");
    assert_eq!(records[0].header("x-kept"), Some("yes"));
    // The client's `Host`, as HTTP/1.1 requires one.
    let client_host = proxy.addr.to_string();
    assert_eq!(records[0].header("host"), Some(client_host.as_str()));
    assert_eq!(records[1].body, b"");
    proxy.stop().await;
}

#[tokio::test]
async fn record_answers_adds_mains_answer_with_the_same_id_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.gor");
    let url = format!("file://{}", path.display());
    let main_reply = Reply::With(
        StatusCode::CREATED,
        vec![("x-main", "1")],
        Bytes::from_static(b"created"),
    );
    let (_main, proxy) = TestProxy::in_front_of(main_reply, &[]).await;
    proxy
        .put_ok(&format!("url={url}&record_answers=true"))
        .await;
    send(Method::PUT, &proxy.url("/thing"), &[], "v").await;
    counted(&proxy, &url, "succeeded", 1).await;
    let records = read_records(&std::fs::read(&path).unwrap());
    assert_eq!(records.len(), 2, "{records:?}");
    let (request, answer) = (&records[0], &records[1]);
    assert_eq!(request.kind, "1");
    assert_eq!(answer.kind, "2");
    assert_eq!(answer.id, request.id);
    assert_eq!(answer.timestamp, request.timestamp);
    assert!(answer.latency > 0, "{answer:?}");
    assert_eq!(answer.start, "HTTP/1.1 201 Created");
    assert_eq!(answer.header("x-main"), Some("1"));
    assert_eq!(answer.body, b"created");
    proxy.stop().await;
    // Replayed against a service that answers the same, every answer matches.
    let same = MockBackend::start(Reply::With(
        StatusCode::CREATED,
        vec![("x-main", "1")],
        Bytes::from_static(b"created"),
    ))
    .await;
    let (code, stdout, stderr) =
        replay(&[path.to_str().unwrap(), "--to", &same.url(), "--compare"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: compared 1, mismatched 0"),
        "{stdout}"
    );
    assert_eq!(same.next().await.method, Method::PUT);
}

#[tokio::test]
async fn file_urls_are_listed_as_given_and_refused_with_a_host_or_relative_path() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok(""), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    // `%` is `%25` in a query string.
    let given = format!("file://{}/rec-%Y%m%d.gor.gz", dir.path().display());
    let query = given.replace('%', "%25");
    proxy
        .put_ok(&format!("url={query}&max_file_size=1MiB"))
        .await;
    let listed = proxy.mirror_json(&given).await.expect("listed as given");
    assert_eq!(listed["options"]["max_file_size"], 1 << 20);
    assert_eq!(listed["protocol"], "file");
    for bad in ["file://host/x.gor", "file://x.gor"] {
        let answer = proxy.put(&format!("url={bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(answer.text().contains(bad), "{}", answer.text());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn past_max_total_size_copies_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/rec.gor", dir.path().display());
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy.put_ok(&format!("url={url}&max_total_size=500")).await;
    for _ in 0..3 {
        // Each record is over 300 bytes: the first fits, the others do not.
        let answer = send(Method::POST, &proxy.url("/x"), &[], vec![b'b'; 100]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "main is never slowed or failed"
        );
    }
    // The first drop makes the recording refuse copies as they are offered for a
    // second (not sent, only dropped), so the later ones may never be sent.
    eventually("3 copies done", || async {
        let m = proxy.mirror_json(&url).await.unwrap();
        let n = |k: &str| m[k].as_u64().unwrap();
        m["queued"] == 0 && n("succeeded") + n("failed") + n("dropped") == 3
    })
    .await;
    let listed = proxy.mirror_json(&url).await.unwrap();
    let size = std::fs::metadata(dir.path().join("rec.gor")).unwrap().len();
    // The copy that found the cap reached was `sent` and ends `failed`; a copy offered
    // within the next second is `dropped` without being sent.
    assert_eq!(listed["succeeded"], 1, "{listed} file {size} bytes");
    let failed = listed["failed"].as_u64().unwrap();
    assert!(failed >= 1, "{listed}");
    assert_eq!(
        listed["failed"].as_u64().unwrap() + listed["dropped"].as_u64().unwrap(),
        2
    );
    assert_eq!(listed["sent"].as_u64().unwrap(), 1 + failed, "{listed}");
    assert_eq!(listed["state"], "alive", "{listed}");
    assert!(std::fs::metadata(dir.path().join("rec.gor")).unwrap().len() <= 500);
    assert_eq!(main.count(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn a_file_url_is_no_main_target() {
    let sandbox = Sandbox::new();
    let (code, _, stderr, _) = run_in(&sandbox, &["--main", "file:///tmp/x.gor"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("file:///tmp/x.gor"), "{stderr}");
}

// ===== replay =====

/// Runs `trafficmirror replay ARGS` (bounded); exit code, stdout, stderr.
pub(crate) async fn replay(args: &[&str]) -> (Option<i32>, String, String) {
    let sandbox = Sandbox::new();
    let mut command = tokio::process::Command::from(sandbox.command());
    command.arg("replay").args(args);
    let out = tokio::time::timeout(WAIT * 2, command.output())
        .await
        .expect("replay ends in time")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `trafficmirror replay FILE --to TARGET --speed 0`, which must exit 0; its
/// stdout and stderr.
async fn replay_at_once(file: &Path, target: &MockBackend) -> (String, String) {
    let file = file.to_str().unwrap();
    let (code, stdout, stderr) = replay(&[file, "--to", &target.url(), "--speed", "0"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    (stdout, stderr)
}

/// A recording in GoReplay's documented format, written by hand: a 4-field and a
/// 3-field meta line, an answer (type 2) and a replayed answer (type 3) to be ignored,
/// and a last record torn by a crash.
pub(crate) fn goreplay_fixture(dir: &Path) -> std::path::PathBuf {
    let sep = "\n🐵🙈🙉\n";
    let text = [
        "1 8f3c0a1b2c3d4e5f60718293 1700000000000000000 0\nPOST /api/items?x=1 HTTP/1.1\r\nHost: prod.example\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\":\"b\"}",
        "2 8f3c0a1b2c3d4e5f60718293 1700000000000000000 1500000\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "3 8f3c0a1b2c3d4e5f60718293 1700000000000000000 1600000\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "1 0a0b0c0d0e0f101112131415 1700000000001000000\nGET /health HTTP/1.1\r\nHost: prod.example\r\nUser-Agent: gor\r\n\r\n",
    ]
    .join(sep)
        + sep
        + "1 ffff 1700000000002000000 -1\nGET /torn HT";
    let path = dir.join("requests_0.gor");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_goreplay_file_replays_its_requests_and_names_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_fixture(dir.path());
    let target = MockBackend::start(Reply::ok("fine")).await;
    let target_url = format!("{}/base", target.url());
    let (code, stdout, stderr) =
        replay(&[file.to_str().unwrap(), "--to", &target_url, "--speed", "0"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let first = target.next().await;
    assert_eq!(first.method, Method::POST);
    assert_eq!(first.uri, "/base/api/items?x=1");
    assert_eq!(&first.body[..], b"{\"a\":\"b\"}");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(
        first.header("host"),
        Some(target.url().trim_start_matches("http://"))
    );
    let second = target.next().await;
    assert_eq!(second.method, Method::GET);
    assert_eq!(second.uri, "/base/health");
    assert_eq!(second.header("user-agent"), Some("gor"));
    target
        .assert_nothing_within(Duration::from_millis(100))
        .await;
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with(
            "replay: sent 2, answered 2 (2xx 2, 3xx 0, 4xx 0, 5xx 0), failed 0, skipped 1, p50 "
        ),
        "{summary}"
    );
    assert!(summary.ends_with(" ms"), "{summary}");
    assert!(
        stderr.contains("requests_0.gor record 4: torn record"),
        "{stderr}"
    );
}

#[tokio::test]
async fn replay_keeps_the_recorded_gaps_scaled_by_speed() {
    let dir = tempfile::tempdir().unwrap();
    let sep = "\n🐵🙈🙉\n";
    let mut text = String::new();
    // Four requests 200 ms apart, in two files merged by timestamp.
    for (i, file) in [(0, "a"), (1, "b"), (2, "a"), (3, "b")] {
        let ts = 1_700_000_000_000_000_000i128 + i * 200_000_000;
        let record = format!("1 {i:024x} {ts} -1\nGET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n{sep}");
        let path = dir.path().join(format!("{file}.gor"));
        let mut old = std::fs::read(&path).unwrap_or_default();
        old.extend_from_slice(record.as_bytes());
        std::fs::write(&path, old).unwrap();
        text.push_str(&record);
    }
    let target = MockBackend::start(Reply::ok("")).await;
    let glob = format!("{}/*.gor", dir.path().display());
    let url = target.url();
    let run = tokio::spawn(async move { replay(&[&glob, "--to", &url, "--speed", "2"]).await });
    let mut arrivals = Vec::new();
    for i in 0..4 {
        let request = target.next().await;
        arrivals.push(tokio::time::Instant::now());
        assert_eq!(request.uri.path(), format!("/r{i}"));
    }
    let (code, stdout, stderr) = run.await.unwrap();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        // 200 ms recorded at speed 2: about 100 ms (never the recorded 200 ms, and
        // not all at once).
        assert!(
            gap >= Duration::from_millis(70) && gap <= Duration::from_millis(170),
            "{gap:?}"
        );
    }
}

#[tokio::test]
async fn replay_exit_codes_tell_usage_from_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.gor");
    let (code, _, stderr) =
        replay(&[missing.to_str().unwrap(), "--to", "http://127.0.0.1:1"]).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("no readable source"), "{stderr}");

    let file = goreplay_fixture(dir.path());
    let closed = format!("http://{}", closed_addr().await);
    let (code, stdout, stderr) =
        replay(&[file.to_str().unwrap(), "--to", &closed, "--speed", "0"]).await;
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("replay: sent 2, answered 0"), "{stdout}");
    assert!(stderr.contains("never answered"), "{stderr}");

    let (code, _, _) = replay(&[
        file.to_str().unwrap(),
        "--to",
        "http://a",
        "--speed",
        "fast",
    ])
    .await;
    assert_eq!(code, Some(2));
    let (code, _, stderr) = replay(&[file.to_str().unwrap(), "--to", "file:///x"]).await;
    assert_eq!(code, Some(2), "{stderr}");
}

#[tokio::test]
async fn replay_filters_by_method_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_fixture(dir.path());
    let target = MockBackend::start(Reply::ok("")).await;
    let (code, stdout, _) = replay(&[
        file.to_str().unwrap(),
        "--to",
        &target.url(),
        "--speed",
        "0",
        "--method",
        "GET",
        "--path",
        "/he",
    ])
    .await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("replay: sent 1, answered 1"), "{stdout}");
    assert_eq!(target.next().await.uri, "/health");
}

#[tokio::test]
async fn a_recording_cut_by_kill_9_replays_every_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.gor.gz");
    let main = MockBackend::start(Reply::ok("ok")).await;
    let mirror = format!("file://{}", path.display());
    let binary = Binary::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    for i in 0..5 {
        send(Method::POST, &binary.url(&format!("/first/{i}")), &[], "x").await;
    }
    // Written and flushed: listed as succeeded.
    let listing = binary.url("/targets?format=json");
    eventually("5 copies recorded", || async {
        let json: serde_json::Value = serde_json::from_slice(&get(&listing).await.body).unwrap();
        json[0]["succeeded"] == 5
    })
    .await;
    // More traffic while the process is killed.
    let url = binary.url("/second");
    let traffic = tokio::spawn(async move {
        for _ in 0..200 {
            let mut req = http::Request::new(http_body_util::Full::new(Bytes::from_static(b"y")));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = url.parse().unwrap();
            if client().request(req).await.is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    binary.signal("KILL");
    let _ = tokio::time::timeout(WAIT, traffic).await;

    let target = MockBackend::start(Reply::ok("")).await;
    let (stdout, _) = replay_at_once(&path, &target).await;
    let summary = stdout.lines().last().unwrap();
    let sent: usize = summary
        .strip_prefix("replay: sent ")
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(sent >= 5, "{summary}");
    assert!(summary.contains(&format!("answered {sent} ")), "{summary}");
    // `--speed 0` sends up to 64 at once: they may arrive in any order.
    let mut arrived = Vec::new();
    for _ in 0..sent {
        arrived.push(target.next().await.uri.to_string());
    }
    arrived.sort();
    let mut expected: Vec<String> = (0..5).map(|i| format!("/first/{i}")).collect();
    expected.extend(std::iter::repeat_n("/second".to_owned(), sent - 5));
    assert_eq!(arrived, expected);
}

/// A recording with answers, as a recording mirror writes it: each request followed by
/// main's answer (type 2, same ID).
fn recording_with_answers(dir: &Path) -> std::path::PathBuf {
    let sep = "\n🐵🙈🙉\n";
    let mut text = String::new();
    for (i, (path, body)) in [
        ("/same", "{\"v\":1,\"ts\":1}"),
        ("/differs", "{\"v\":2,\"ts\":1}"),
    ]
    .iter()
    .enumerate()
    {
        let ts = 1_700_000_000_000_000_000i128 + i as i128;
        text.push_str(&format!(
            "1 {i:024x} {ts} -1\nGET {path} HTTP/1.1\r\nHost: h\r\n\r\n{sep}"
        ));
        text.push_str(&format!(
            "2 {i:024x} {ts} 1000\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}{sep}",
            body.len()
        ));
    }
    let file = dir.join("answers.gor");
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test]
async fn replay_compare_names_the_differing_endpoint_and_sets_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = recording_with_answers(dir.path());
    let file = file.to_str().unwrap();
    // The candidate answers `{"v":1,"ts":2}` everywhere: `/same` differs only in the
    // ignored `/ts`, `/differs` in `/v` too.
    let target = MockBackend::start(Reply::With(
        StatusCode::OK,
        vec![("content-type", "application/json")],
        Bytes::from_static(b"{\"v\":1,\"ts\":2}"),
    ))
    .await;
    let url = target.url();
    let base = [
        file,
        "--to",
        url.as_str(),
        "--speed",
        "0",
        "--compare",
        "--ignore",
        "/ts",
    ];
    let (code, stdout, stderr) = replay(&base).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("replay: sent 2, answered 2"), "{stdout}");
    assert!(
        stdout.contains("replay: mismatch GET /differs: 1 of 1 differ; fields: /v (1); first: "),
        "{stdout}"
    );
    assert!(stdout.contains("\"pointer\":\"/v\""), "{stdout}");
    assert!(!stdout.contains("GET /same"), "{stdout}");
    assert!(
        stdout.contains("replay: compared 2, mismatched 1 (50.00%)"),
        "{stdout}"
    );

    let mut within = base.to_vec();
    within.extend(["--max-mismatch-rate", "50%"]);
    let (code, stdout, stderr) = replay(&within).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // Without --compare the answers are not looked at.
    let (code, _, _) = replay(&base[..5]).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn replay_output_records_the_replay_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = goreplay_fixture(dir.path());
    let output = dir.path().join("out/replayed.gor");
    let target = MockBackend::start(Reply::ok("v1")).await;
    let (code, stdout, stderr) = replay(&[
        fixture.to_str().unwrap(),
        "--to",
        &target.url(),
        "--speed",
        "0",
        "--concurrency",
        "1",
        "--output",
        output.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let records = read_records(&std::fs::read(&output).unwrap());
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["1", "2", "1", "2"]);
    assert_eq!(records[0].start, "POST /api/items?x=1 HTTP/1.1");
    assert_eq!(records[0].body, b"{\"a\":\"b\"}");
    assert_eq!(records[1].id, records[0].id);
    assert_eq!(records[1].body, b"v1");
    assert_eq!(records[3].start, "HTTP/1.1 200 OK");
    // The next run compares against this one: a changed answer is a mismatch.
    target.set_reply(Reply::ok("v2"));
    let (code, stdout, stderr) = replay(&[
        output.to_str().unwrap(),
        "--to",
        &target.url(),
        "--speed",
        "0",
        "--compare",
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: compared 2, mismatched 2"),
        "{stdout}"
    );
}

#[tokio::test]
async fn replay_to_an_h2c_target_speaks_http2() {
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_fixture(dir.path());
    let target = MockBackend::start(Reply::ok("")).await;
    let url = format!("h2c://{}", target.addr);
    let (code, stdout, stderr) =
        replay(&[file.to_str().unwrap(), "--to", &url, "--speed", "0"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let first = target.next().await;
    assert_eq!(first.version, http::Version::HTTP_2);
    assert_eq!(first.uri.path(), "/api/items");
    assert_eq!(&first.body[..], b"{\"a\":\"b\"}");
}

#[tokio::test]
async fn replay_loops_at_its_rate_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_fixture(dir.path());
    let target = MockBackend::start(Reply::ok("")).await;
    let sandbox = Sandbox::new();
    let mut command = tokio::process::Command::from(sandbox.command());
    command
        .args(["replay", file.to_str().unwrap(), "--to", &target.url()])
        .args(["--loop", "--speed", "0", "--rate", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    let started = tokio::time::Instant::now();
    // The two requests of the file, then again from the start.
    let paths: Vec<String> = next_paths(&target, 5).await;
    assert_eq!(
        paths,
        [
            "/api/items",
            "/health",
            "/api/items",
            "/health",
            "/api/items"
        ]
    );
    // 20 a second: five take at least 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("replay: sent "), "{stdout}");
}

/// The paths of the next `n` requests at `target`.
async fn next_paths(target: &MockBackend, n: usize) -> Vec<String> {
    let mut paths = Vec::new();
    for _ in 0..n {
        paths.push(target.next().await.uri.path().to_owned());
    }
    paths
}

#[tokio::test]
async fn shutdown_leaves_every_recorded_copy_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.gor.gz");
    let main = MockBackend::start(Reply::ok("ok")).await;
    let mirror = format!("file://{}", path.display());
    let binary = Binary::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    for i in 0..20 {
        send(
            Method::GET,
            &binary.url(&format!("/s/{i}")),
            &[],
            Bytes::new(),
        )
        .await;
    }
    binary.terminate_within(WAIT).await;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap()),
        &mut text,
    )
    .unwrap();
    let records = read_records(&text);
    assert_eq!(records.len(), 20);
}

#[tokio::test]
async fn a_record_is_timestamped_when_its_request_arrived_not_when_its_body_ended() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.gor");
    let url = format!("file://{}", path.display());
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy.put_ok(&format!("url={url}")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let before_head = now_ns();
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    // A slow client: the body comes 200 ms after the head.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_body = now_ns();
    stream.write_all(b"body").await.unwrap();
    read_until(&mut stream, "ok").await;
    counted(&proxy, &url, "succeeded", 1).await;
    let records = read_records(&std::fs::read(&path).unwrap());
    assert_eq!(records[0].body, b"body");
    let ts = records[0].timestamp;
    assert!(
        ts >= before_head && ts < before_body,
        "{ts} not in [{before_head}, {before_body})"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_write_error_is_a_failed_copy_that_counts_toward_health() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the recording's folder should be: every write fails.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let url = format!("file://{}/rec.gor", blocker.display());
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    proxy.put_ok(&format!("url={url}")).await;
    // Five consecutive failures make a mirror failing (docs/shadowing.md, "Health").
    for i in 1..=5 {
        let answer = send(Method::GET, &proxy.url("/x"), &[], Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::OK);
        counted(&proxy, &url, "failed", i).await;
    }
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_eq!(listed["state"], "failing", "{listed}");
    assert_eq!(main.count(), 5);
    proxy.stop().await;
}

/// A proxy (with `args`) in front of a mock main, and a recording mirror writing
/// `rec.gor` in `folder` (`""` or `"name/"`) of a fresh directory, with `options`.
async fn recording_proxy(
    folder: &str,
    args: &[&str],
    options: &str,
) -> (tempfile::TempDir, String, MockBackend, TestProxy) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/{folder}rec.gor", dir.path().display());
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), args).await;
    proxy.put_ok(&format!("url={url}{options}")).await;
    (dir, url, main, proxy)
}

/// The mirror's `[succeeded, failed, dropped, queued]`.
async fn recording_outcomes(proxy: &TestProxy, url: &str) -> [u64; 4] {
    let m = proxy.mirror_json(url).await.expect("listed");
    ["succeeded", "failed", "dropped", "queued"].map(|k| m[k].as_u64().unwrap())
}

/// `n` POSTs through the proxy at once: every answer `200` from main, all within
/// [`WAIT`] (a failing disk slows only the recording thread).
async fn posts_at_once(proxy: &TestProxy, n: usize, path: &str) {
    let mut all = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = proxy.url(&format!("{path}/{i}"));
        all.spawn(async move { send(Method::POST, &url, &[], "payload").await.status });
    }
    let statuses = tokio::time::timeout(WAIT, all.join_all())
        .await
        .expect("main answers every request in time while the disk fails");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

/// The IDs and paths of every record in the recording's files under `dir`.
fn recorded_in(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for rec in read_records(&bytes) {
            let path = rec.start.split(' ').nth(1).unwrap().to_owned();
            out.push((rec.id, path));
        }
    }
    out
}

/// docs/record-replay.md, "Files": write errors are failed copies that count toward
/// health; main is never slowed. The recording's folder is replaced by a regular file
/// mid-run (a disk gone read-only, as root cannot be stopped by `chmod`), then put back.
#[tokio::test]
async fn a_recording_whose_folder_goes_mid_run_fails_copies_and_recovers() {
    // One record a file: each copy opens a file, as a rotation does.
    let (dir, url, main, proxy) =
        recording_proxy("rec/", &["--retry-after", "200ms"], "&max_file_size=1").await;
    let folder = dir.path().join("rec");
    posts_at_once(&proxy, 5, "/before").await;
    eventually("5 written", || async {
        recording_outcomes(&proxy, &url).await == [5, 0, 0, 0]
    })
    .await;

    std::fs::rename(&folder, dir.path().join("moved")).unwrap();
    std::fs::write(&folder, "not a folder").unwrap();
    posts_at_once(&proxy, 20, "/during").await;
    eventually("every copy settled", || async {
        let [succeeded, failed, dropped, queued] = recording_outcomes(&proxy, &url).await;
        queued == 0 && succeeded + failed + dropped == 25
    })
    .await;
    let [succeeded, failed, _, _] = recording_outcomes(&proxy, &url).await;
    assert_eq!(succeeded, 5, "nothing written while the folder is gone");
    assert!(failed >= 5, "{failed} failed");
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_ne!(listed["state"], "alive", "{listed}");

    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(dir.path().join("moved"), &folder).unwrap();
    eventually("alive again once its trial is written", || async {
        send(Method::POST, &proxy.url("/after"), &[], "payload").await;
        proxy.mirror_json(&url).await.unwrap()["state"] == "alive"
    })
    .await;
    posts_at_once(&proxy, 5, "/after").await;
    eventually("every copy settled", || async {
        recording_outcomes(&proxy, &url).await[3] == 0
    })
    .await;
    let [succeeded, failed, dropped, _] = recording_outcomes(&proxy, &url).await;
    let requests = main.count() as u64;
    assert_eq!(
        succeeded + failed + dropped,
        requests,
        "each copy counted once"
    );
    // What is on disk is exactly what was counted written, each copy once.
    let recorded = recorded_in(&folder);
    assert_eq!(recorded.len() as u64, succeeded);
    let mut ids: Vec<&String> = recorded.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), recorded.len(), "no record twice");
    assert!(recorded.iter().all(|(_, p)| !p.starts_with("/during")));
    assert_eq!(
        recorded
            .iter()
            .filter(|(_, p)| p.starts_with("/before"))
            .count(),
        5
    );
    proxy.stop().await;
}

/// docs/record-replay.md, `max_total_size`: past it copies are dropped (health
/// untouched), under load too; deleting old files frees room, looked up at the next
/// file opened.
#[tokio::test]
async fn max_total_size_under_load_drops_and_deleting_files_frees_room() {
    let (dir, url, main, proxy) =
        recording_proxy("", &[], "&max_file_size=1&max_total_size=2000").await;
    posts_at_once(&proxy, 30, "/load").await;
    eventually("every copy settled", || async {
        let [succeeded, failed, dropped, queued] = recording_outcomes(&proxy, &url).await;
        queued == 0 && succeeded + failed + dropped == 30
    })
    .await;
    // Queued copies that find the cap reached end `failed` (health untouched), the
    // ones offered after that `dropped`.
    let [written, failed, dropped, _] = recording_outcomes(&proxy, &url).await;
    assert!(
        written >= 1 && failed + dropped >= 1,
        "{written} written, {failed} failed, {dropped} dropped"
    );
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 2000, "{on_disk} bytes");
    assert_eq!(recorded_in(dir.path()).len() as u64, written);
    let listed = proxy.mirror_json(&url).await.unwrap();
    assert_eq!(listed["state"], "alive", "{listed}");

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    // Looked up again at most once a second: within WAIT, a copy is written.
    eventually("a copy written again", || async {
        let answer = send(Method::POST, &proxy.url("/room"), &[], "payload").await;
        assert_eq!(answer.status, StatusCode::OK);
        eventually("settled", || async {
            recording_outcomes(&proxy, &url).await[3] == 0
        })
        .await;
        recording_outcomes(&proxy, &url).await[0] == written + 1
    })
    .await;
    let [_, failed, dropped, _] = recording_outcomes(&proxy, &url).await;
    assert_eq!(
        written + 1 + failed + dropped,
        main.count() as u64,
        "each copy counted once"
    );
    let recorded = recorded_in(dir.path());
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1, "/room");
    proxy.stop().await;
}

/// Three request records as a recording mirror writes them (the first one's body holds
/// the separator, as a client may send it); where the last one starts.
fn three_records() -> (Vec<u8>, usize) {
    let sep = std::str::from_utf8(SEPARATOR).unwrap();
    let records = [
        format!(
            "1 {:024x} 1700000000000000000 -1\nPOST /r/0 HTTP/1.1\r\nContent-Length: {}\r\n\r\nab{sep}cd",
            0,
            4 + SEPARATOR.len()
        ),
        format!(
            "1 {:024x} 1700000000001000000 -1\nGET /r/1 HTTP/1.1\r\nHost: prod\r\n\r\n",
            1
        ),
        format!(
            "1 {:024x} 1700000000002000000 -1\nPOST /r/2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nlast",
            2
        ),
    ];
    let mut bytes = Vec::new();
    let mut before_last = 0;
    for (i, record) in records.iter().enumerate() {
        if i == 2 {
            before_last = bytes.len();
        }
        bytes.extend_from_slice(record.as_bytes());
        bytes.extend_from_slice(SEPARATOR);
    }
    (bytes, before_last)
}

/// Replays `file` to `target`; checks the summary's `sent` and `skipped`, a torn record
/// named when skipped, and the requests that arrived.
async fn replay_cut(file: &Path, target: &MockBackend, whole: usize, skipped: &[usize]) {
    let (stdout, stderr) = replay_at_once(file, target).await;
    let summary = stdout.lines().last().unwrap_or_default();
    let torn = skipped
        .iter()
        .find(|&&n| summary.contains(&format!("skipped {n},")))
        .unwrap_or_else(|| panic!("skipped one of {skipped:?}: {summary}"));
    assert!(
        summary.starts_with(&format!("replay: sent {whole}, answered {whole} ")),
        "{summary}"
    );
    if *torn == 1 {
        assert!(stderr.contains("record 2: torn record"), "{stderr}");
    }
    let first = target.next().await;
    assert_eq!(first.uri, "/r/0");
    assert_eq!(first.body.len(), 4 + SEPARATOR.len());
    assert_eq!(target.next().await.uri, "/r/1");
    if whole == 3 {
        assert_eq!(target.next().await.uri, "/r/2");
    }
}

/// docs/record-replay.md: after a crash a file holds whole records and at most one torn
/// one at its end, which `replay` skips, naming it. The last record is cut at offsets
/// across it (its meta line, head, body and separator), the separator in the first
/// record's body is no cut, and a `.gz` file cut inside its last gzip member (one per
/// batch, as a recording mirror writes them) loses only that record.
#[tokio::test]
async fn replay_of_a_file_cut_inside_its_last_record_sends_every_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let target = MockBackend::start(Reply::ok("")).await;
    let (bytes, before_last) = three_records();
    let step = ((bytes.len() - before_last) / 10).max(1);
    let mut cuts: Vec<usize> = (before_last + 1..bytes.len()).step_by(step).collect();
    cuts.extend([bytes.len() - SEPARATOR.len(), bytes.len() - 1]);
    let file = dir.path().join("cut.gor");
    for at in cuts {
        std::fs::write(&file, &bytes[..at]).unwrap();
        replay_cut(&file, &target, 2, &[1]).await;
    }
    for (at, whole) in [(before_last, 2), (bytes.len(), 3)] {
        std::fs::write(&file, &bytes[..at]).unwrap();
        replay_cut(&file, &target, whole, &[0]).await;
    }

    // One gzip member per record; the last one cut in its header and in its data (a
    // cut in its 8-byte trailer leaves the record whole: it is sent).
    let mut gz = Vec::new();
    let mut last_member = 0;
    for (i, part) in [&bytes[..before_last], &bytes[before_last..]]
        .iter()
        .enumerate()
    {
        if i == 1 {
            last_member = gz.len();
        }
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, part).unwrap();
        gz.extend(encoder.finish().unwrap());
    }
    let file = dir.path().join("cut.gor.gz");
    for at in [
        last_member + 1,
        last_member + 12,
        (last_member + gz.len()) / 2,
    ] {
        std::fs::write(&file, &gz[..at]).unwrap();
        // A member cut before any of its bytes decode leaves nothing torn.
        replay_cut(&file, &target, 2, &[0, 1]).await;
    }
    target
        .assert_nothing_within(Duration::from_millis(50))
        .await;
}
