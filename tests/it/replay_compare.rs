//! `replay --compare` (docs/record-replay.md, "Replaying"): a gRPC call recorded with its
//! answer's trailers and replayed to an `h2c://` service, answers matched to their
//! requests by record ID, compressed bodies decoded, mismatches per endpoint.

use std::path::Path;

use bytes::Bytes;
use http::StatusCode;
use tonic::Code;

use crate::support::grpc::{
    ECHO, EchoRequest, GrpcBackend, GrpcClient, Twist, write_echo_descriptor_set,
};
use crate::support::*;

/// Runs `trafficmirror replay ARGS` (bounded); exit code, stdout, stderr.
async fn replay(args: &[&str]) -> (Option<i32>, String, String) {
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

/// Records one `Echo` call made through a proxy in front of a tonic service, with
/// `record_answers=true`, into `dir/grpc.gor`.
async fn record_one_echo(dir: &Path) -> std::path::PathBuf {
    let main = GrpcBackend::start_h2c().await;
    let proxy = TestProxy::start(&["--main", &main.h2c_url()]).await;
    let path = dir.join("grpc.gor");
    let url = format!("file://{}", path.display());
    proxy
        .put_ok(&format!("url={url}&record_answers=true"))
        .await;
    let client = GrpcClient::h2c(proxy.addr);
    let reply = client
        .echo(tonic::Request::new(EchoRequest {
            text: "hello".into(),
            ..Default::default()
        }))
        .await
        .expect("main answers through the proxy");
    assert_eq!(reply.into_inner().text, "hello");
    eventually("the call is recorded", || async {
        proxy
            .mirror_json(&url)
            .await
            .is_some_and(|m| m["succeeded"].as_u64() == Some(1))
    })
    .await;
    proxy.stop().await;
    path
}

#[tokio::test]
async fn a_grpc_call_is_recorded_with_its_trailers_and_replayed_to_an_h2c_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_one_echo(dir.path()).await;
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // Main's answer, chunked with its trailer section (RFC 9112 §7.1.2): the status
    // survives the recording.
    let answer = text
        .split("\n🐵🙈🙉\n")
        .find(|r| r.starts_with("2 "))
        .expect("main's answer is recorded");
    assert!(
        answer.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("\r\n0\r\ngrpc-status: 0\r\n"), "{answer:?}");

    // Replayed to a service that answers the same: it arrives as a gRPC call over
    // HTTP/2 that tonic decodes (it echoes the text), and matches.
    let same = GrpcBackend::start_h2c().await;
    let file = path.to_str().unwrap();
    let (code, stdout, stderr) =
        replay(&[file, "--to", &same.h2c_url(), "--speed", "0", "--compare"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: compared 1, mismatched 0"),
        "{stdout}"
    );
    let call = same.next().await;
    assert_eq!(call.path, ECHO);
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_eq!(call.header("content-type"), Some("application/grpc"));

    // A service that fails the call: the recorded `grpc-status` 0 in trailers differs.
    let failing = GrpcBackend::start_h2c_twisted(Twist::Status(Code::NotFound)).await;
    let (code, stdout, stderr) =
        replay(&[file, "--to", &failing.h2c_url(), "--speed", "0", "--compare"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: mismatch POST /echo.Echo/Echo: 1 of 1 differ; fields: body (1), grpc-status (1); first: {\"kind\":\"grpc_status\",\"main\":\"0\",\"mirror\":\"5\"}"),
        "{stdout}"
    );

    // A service answering another message: with the descriptors, the field is named.
    let other = GrpcBackend::start_h2c_twisted(Twist::Text("!")).await;
    let descriptors = write_echo_descriptor_set(dir.path());
    let (code, stdout, stderr) = replay(&[
        file,
        "--to",
        &other.h2c_url(),
        "--speed",
        "0",
        "--compare",
        "--grpc-descriptors",
        descriptors.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("fields: /text (1)"), "{stdout}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// GoReplay's way of writing answers: after other requests' records, not right after
/// their own request.
fn interleaved_recording(dir: &Path) -> std::path::PathBuf {
    let sep = "\n🐵🙈🙉\n";
    let answer = |id: &str, body: &str| {
        format!(
            "2 {id} 1700000000000000500 1000\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}{sep}",
            body.len()
        )
    };
    let request = |id: &str, path: &str, ts: u64| {
        format!("1 {id} {ts} -1\nGET {path} HTTP/1.1\r\nHost: h\r\n\r\n{sep}")
    };
    let text = [
        request("aaaaaaaaaaaaaaaaaaaaaaaa", "/users/17", 1_700_000_000_000_000_000),
        request("bbbbbbbbbbbbbbbbbbbbbbbb", "/users/18", 1_700_000_000_000_000_001),
        answer("bbbbbbbbbbbbbbbbbbbbbbbb", r#"{"id":18,"total":2}"#),
        answer("aaaaaaaaaaaaaaaaaaaaaaaa", r#"{"id":17,"total":1}"#),
    ]
    .concat();
    let path = dir.join("interleaved.gor");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn answers_are_matched_by_id_decoded_and_summarised_per_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = interleaved_recording(dir.path());
    // The candidate answers gzip: `{"id":17,"total":1}` everywhere. Matched by ID, the
    // answer to /users/17 is the same once decoded and /users/18 differs in /id and
    // /total; matched by position, both would differ.
    let body = gzip(br#"{ "total": 1, "id": 17 }"#);
    let target = MockBackend::start(Reply::With(
        StatusCode::OK,
        vec![
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        Bytes::from(body),
    ))
    .await;
    let url = target.url();
    let args = [
        file.to_str().unwrap(),
        "--to",
        url.as_str(),
        "--speed",
        "0",
        "--compare",
    ];
    let (code, stdout, stderr) = replay(&args).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("replay: sent 2, answered 2"), "{stdout}");
    assert!(
        lines[1].starts_with(
            "replay: mismatch GET /users/{id}: 1 of 2 differ; fields: /id (1), /total (1); first: "
        ),
        "{stdout}"
    );
    assert_eq!(
        lines[2], "replay: compared 2, mismatched 1 (50.00%), allowed 0.00%",
        "{stdout}"
    );
    // Ignoring both fields, every answer matches.
    let mut ignoring = args.to_vec();
    ignoring.extend(["--ignore", "/id", "--ignore", "/total"]);
    let (code, stdout, stderr) = replay(&ignoring).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("replay: compared 2, mismatched 0"), "{stdout}");
}
