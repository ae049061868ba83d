//! `replay --compare` (docs/record-replay.md, "Replaying"): a gRPC call recorded with its
//! answer's trailers and replayed to an `h2c://` service, answers matched to their
//! requests by record ID, compressed bodies decoded, mismatches per endpoint.

use std::path::Path;

use bytes::Bytes;
use http::StatusCode;
use tonic::Code;

use crate::record::replay;
use crate::support::grpc::{
    ECHO, EchoRequest, GrpcBackend, GrpcClient, Twist, write_echo_descriptor_set,
};
use crate::support::*;

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
    let (code, stdout, stderr) = replay(&[
        file,
        "--to",
        &failing.h2c_url(),
        "--speed",
        "0",
        "--compare",
    ])
    .await;
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
        request(
            "aaaaaaaaaaaaaaaaaaaaaaaa",
            "/users/17",
            1_700_000_000_000_000_000,
        ),
        request(
            "bbbbbbbbbbbbbbbbbbbbbbbb",
            "/users/18",
            1_700_000_000_000_000_001,
        ),
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
    assert!(
        lines[0].starts_with("replay: sent 2, answered 2"),
        "{stdout}"
    );
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
    // An endpoint pattern names the template.
    let mut named = args.to_vec();
    named.extend(["--endpoint", "/users/:user"]);
    let (code, stdout, stderr) = replay(&named).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: mismatch GET /users/:user: 1 of 2 differ;"),
        "{stdout}"
    );
    // Ignoring both fields, every answer matches.
    let mut ignoring = args.to_vec();
    ignoring.extend(["--ignore", "/id", "--ignore", "/total"]);
    let (code, stdout, stderr) = replay(&ignoring).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("replay: compared 2, mismatched 0"),
        "{stdout}"
    );
}

/// A capture as GoReplay writes it, written here by hand from its code (buger/goreplay):
/// `protocol.go` `payloadHeader` writes the meta line `"%c %s %d %d\n"` (type, 24 hex
/// ID, timestamp ns, latency ns); `input_raw.go` stamps a request (type `1`) with its
/// start and its own duration as latency, and its answer (type `2`) with the same ID
/// (from the TCP stream), the answer's own start and duration; `output_http.go` adds
/// replayed answers as type `3`; `output_file.go` writes meta, message, then
/// `"\n🐵🙈🙉\n"`, gzip for a `.gz` name; `input_file.go` ends a record at a line that
/// is the separator without its first `LF` and drops that `LF` from the record.
fn goreplay_capture(dir: &Path) -> std::path::PathBuf {
    let sep = "\n🐵🙈🙉\n";
    let records = [
        "1 0a1b2c3d4e5f60718293a4b5 1700000000000000000 120000\nGET /orders/101 HTTP/1.1\r\nHost: shop\r\n\r\n",
        "1 ffeeddccbbaa998877665544 1700000000000200000 90000\nPOST /orders HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n7\r\n{\"n\":1}\r\n0\r\n\r\n",
        "2 ffeeddccbbaa998877665544 1700000000000400000 300000\nHTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"id\":9}",
        "3 ffeeddccbbaa998877665544 1700000000000500000 310000\nHTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        "2 0a1b2c3d4e5f60718293a4b5 1700000000000300000 250000\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"id\":101}",
    ];
    // Two gzip members, as a file appended to after a restart.
    let mut bytes = gzip((records[..2].join(sep) + sep).as_bytes());
    bytes.extend(gzip((records[2..].join(sep) + sep).as_bytes()));
    let path = dir.join("requests_0.gor.gz");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_goreplay_capture_replays_and_compares_answers_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_capture(dir.path());
    // Answers `{"id":101}` to everything: the GET matches, the POST (201 {"id":9}) not.
    let target = MockBackend::start(Reply::With(
        StatusCode::OK,
        vec![("content-type", "application/json")],
        Bytes::from_static(b"{\"id\":101}"),
    ))
    .await;
    let (code, stdout, stderr) = replay(&[
        file.to_str().unwrap(),
        "--to",
        &target.url(),
        "--speed",
        "0",
        "--concurrency",
        "1",
        "--compare",
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let get = target.next().await;
    assert_eq!(get.uri, "/orders/101");
    let post = target.next().await;
    assert_eq!(post.uri, "/orders");
    assert_eq!(&post.body[..], b"{\"n\":1}");
    target
        .assert_nothing_within(std::time::Duration::from_millis(100))
        .await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(
            "replay: sent 2, answered 2 (2xx 2, 3xx 0, 4xx 0, 5xx 0), failed 0, skipped 0,"
        ),
        "{stdout}{stderr}"
    );
    assert!(
        lines[1].starts_with(
            "replay: mismatch POST /orders: 1 of 1 differ; fields: /id (1), status (1); first: "
        ),
        "{stdout}"
    );
    assert_eq!(
        lines[2],
        "replay: compared 2, mismatched 1 (50.00%), allowed 0.00%"
    );
}
