//! Mirroring gRPC (docs/shadowing.md, "How requests are handled"): copies carry the
//! call's `:path`, metadata, `te: trailers` and message bytes, and what is left of its
//! `grpc-timeout`; HTTP/1.1 mirrors, oversized and unfinished calls are skipped; gRPC
//! errors keep a mirror alive; main's statuses are counted in the scrape.

use std::time::Duration;

use tokio::net::TcpStream;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};

use crate::support::grpc::{
    COUNT, ECHO, EchoRequest, FAIL_CODE, GrpcBackend, GrpcCall, GrpcClient, frame,
};
use crate::support::{Binary, TestProxy, WAIT, eventually, get};

fn echo(text: &str) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        text: text.into(),
        ..Default::default()
    })
}

/// A proxy in front of an h2c gRPC main, with `mirrors` added through the admin API
/// (each a URL, optionally followed by `&option=value`).
async fn proxy_for(main: &GrpcBackend, mirrors: &[String], args: &[&str]) -> TestProxy {
    let main_url = main.h2c_url();
    let mut all = vec!["--main", main_url.as_str()];
    all.extend_from_slice(args);
    let proxy = TestProxy::start(&all).await;
    for mirror in mirrors {
        proxy.put_ok(&format!("url={mirror}")).await;
    }
    proxy
}

/// The mirror's counters, by name.
async fn counter(proxy: &TestProxy, url: &str, name: &str) -> u64 {
    let entry = proxy.mirror_json(url).await.expect("mirror listed");
    entry[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {entry}"))
}

/// The next call a backend received on `path`, skipping others.
async fn next_on(backend: &GrpcBackend, path: &str) -> GrpcCall {
    loop {
        let call = backend.next().await;
        if call.path == path {
            return call;
        }
    }
}

fn timeout_of(call: &GrpcCall) -> Duration {
    let value = call.header("grpc-timeout").expect("a grpc-timeout");
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

#[tokio::test]
async fn a_copy_carries_the_calls_path_metadata_te_and_bytes() {
    let main = GrpcBackend::start_h2c().await;
    let mirror = GrpcBackend::start_h2c().await;
    let proxy = proxy_for(&main, &[mirror.h2c_url()], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);

    let mut request = echo("copy me ü");
    request
        .metadata_mut()
        .insert("x-tenant", AsciiMetadataValue::from_static("blue"));
    request.metadata_mut().insert_bin(
        "trace-bin",
        BinaryMetadataValue::from_bytes(&[0, 0xff, b'\n', 7]),
    );
    let reply = client.echo(request).await.unwrap().into_inner();
    assert_eq!(reply.text, "copy me ü");

    let at_main = next_on(&main, ECHO).await;
    let at_mirror = next_on(&mirror, ECHO).await;
    assert_eq!(at_mirror.path, "/echo.Echo/Echo");
    assert_eq!(at_mirror.version, http::Version::HTTP_2);
    assert_eq!(at_mirror.header("te"), Some("trailers"));
    assert_eq!(at_mirror.header("x-tenant"), Some("blue"));
    assert_eq!(at_mirror.header("trace-bin"), at_main.header("trace-bin"));
    let sent = BinaryMetadataValue::from_bytes(&[0, 0xff, b'\n', 7]);
    assert_eq!(
        at_mirror.headers["trace-bin"].as_bytes(),
        sent.as_encoded_bytes()
    );
    assert_eq!(
        at_mirror.header("content-type"),
        Some("application/grpc"),
        "{at_mirror:?}"
    );
    let message = frame(&EchoRequest {
        text: "copy me ü".into(),
        ..Default::default()
    });
    assert_eq!(at_main.body, message);
    assert_eq!(at_mirror.body, message);

    // A client-streaming call: every message, in order, byte for byte.
    let sum = client
        .sum(tonic::Request::new(vec![5, -3, 1 << 40]))
        .await
        .unwrap();
    assert_eq!(sum.get_ref().count, 3);
    let at_main = next_on(&main, "/echo.Echo/Sum").await;
    let at_mirror = next_on(&mirror, "/echo.Echo/Sum").await;
    assert_eq!(at_mirror.body, at_main.body);
    // Each message: 5 bytes of framing, a tag and the varint (1, 10 and 6 bytes).
    assert_eq!(at_mirror.body.len(), 5 + 2 + 5 + 11 + 5 + 7);
    eventually("both copies succeeded", || async {
        counter(&proxy, &mirror.h2c_url(), "succeeded").await == 2
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_copys_grpc_timeout_is_reduced_by_its_wait() {
    // An ordered mirror that keeps the copy of a first call open until released: the
    // copy of a second call (made after main answered the first) waits in its queue.
    let main = GrpcBackend::start_h2c().await;
    let mirror = GrpcBackend::start_h2c_paced().await;
    let proxy = proxy_for(&main, &[format!("{}&ordered=true", mirror.h2c_url())], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);

    let mut first = client
        .count(tonic::Request::new(EchoRequest {
            text: "first".into(),
            count: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    while first.message().await.unwrap().is_some() {}
    // The mirror has the first copy, and answers it only in part.
    next_on(&mirror, COUNT).await;

    const WAITED: Duration = Duration::from_millis(300);
    let mut second = echo("second");
    second.set_timeout(Duration::from_secs(10));
    client.echo(second).await.unwrap();
    let at_main = next_on(&main, ECHO).await;
    // The call reached the proxy before main had it: the copy waits at least WAITED.
    let arrived_by = tokio::time::Instant::now();
    mirror
        .assert_nothing_within(Duration::from_millis(100))
        .await;
    tokio::time::sleep_until(arrived_by + WAITED).await;
    mirror.release();
    let at_mirror = next_on(&mirror, ECHO).await;

    let client_timeout = timeout_of(&at_main);
    assert!(client_timeout <= Duration::from_secs(10), "{at_main:?}");
    let copy_timeout = timeout_of(&at_mirror);
    assert!(
        copy_timeout + WAITED <= client_timeout,
        "the copy's {copy_timeout:?} is not {WAITED:?} less than main's {client_timeout:?}"
    );
    // Not reduced by more than the copy waited, give or take the test's own pace.
    assert!(
        copy_timeout + WAIT >= client_timeout,
        "{copy_timeout:?} vs {client_timeout:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_call_to_an_http_mirror_is_skipped_and_logged_once() {
    let main = GrpcBackend::start_h2c().await;
    let http_mirror = GrpcBackend::start_h2c().await;
    let h2c_mirror = GrpcBackend::start_h2c().await;
    let main_url = main.h2c_url();
    let http_url = http_mirror.http_url();
    let h2c_url = h2c_mirror.h2c_url();
    let proxy = Binary::start(&[
        "--main", &main_url, "--mirror", &http_url, "--mirror", &h2c_url,
    ])
    .await;
    let client = GrpcClient::h2c(proxy.addr.parse().unwrap());
    for i in 0..3 {
        let reply = client.echo(echo(&format!("call {i}"))).await.unwrap();
        assert_eq!(reply.get_ref().text, format!("call {i}"));
        next_on(&h2c_mirror, ECHO).await;
    }
    http_mirror
        .assert_nothing_within(Duration::from_millis(200))
        .await;
    // An ordinary HTTP/1.1 request still goes to both.
    let plain = get(&format!("http://{}/plain", proxy.addr)).await;
    assert_eq!(plain.status, http::StatusCode::OK, "{}", plain.text());
    let listing = get(&format!("http://{}/targets?format=json", proxy.addr)).await;
    let listing: Vec<serde_json::Value> = serde_json::from_slice(&listing.body).unwrap();
    let http_entry = listing.iter().find(|m| m["url"] == http_url.as_str());
    let http_entry = http_entry.expect("http mirror listed");
    assert_eq!(http_entry["skipped"], 3, "{http_entry}");
    assert_eq!(http_entry["state"], "alive", "{http_entry}");
    let h2c_entry = listing
        .iter()
        .find(|m| m["url"] == h2c_url.as_str())
        .unwrap();
    assert_eq!(h2c_entry["skipped"], 0, "{h2c_entry}");

    let stderr = proxy.terminate_within(WAIT).await;
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gRPC calls are not mirrored"))
        .collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    assert!(logged[0].contains(&http_url), "{stderr}");
}

#[tokio::test]
async fn an_oversized_client_streaming_call_is_skipped() {
    let main = GrpcBackend::start_h2c().await;
    let mirror = GrpcBackend::start_h2c().await;
    let proxy = proxy_for(&main, &[mirror.h2c_url()], &["--max-body-size", "40"]).await;
    let client = GrpcClient::h2c(proxy.addr);
    // 10 messages of 7 bytes each: 70 bytes, over the 40 allowed.
    let numbers: Vec<i64> = (1..=10).collect();
    let sum = client.sum(tonic::Request::new(numbers)).await.unwrap();
    assert_eq!((sum.get_ref().total, sum.get_ref().count), (55, 10));
    assert_eq!(next_on(&main, "/echo.Echo/Sum").await.body.len(), 70);
    eventually("the oversized call is skipped", || async {
        counter(&proxy, &mirror.h2c_url(), "skipped").await == 1
    })
    .await;
    // Within the limit it is mirrored.
    let sum = client.sum(tonic::Request::new(vec![1, 2])).await.unwrap();
    assert_eq!(sum.get_ref().total, 3);
    let copy = next_on(&mirror, "/echo.Echo/Sum").await;
    assert_eq!(copy.body.len(), 14);
    assert_eq!(counter(&proxy, &mirror.h2c_url(), "sent").await, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_call_main_ended_before_its_request_stream_is_skipped() {
    // Main answers an unknown method at once (Trailers-Only UNIMPLEMENTED), before the
    // client has finished its request stream; the client then finishes it.
    let main = GrpcBackend::start_h2c().await;
    let mirror = GrpcBackend::start_h2c().await;
    let proxy = proxy_for(&main, &[mirror.h2c_url()], &[]).await;

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/echo.Echo/Nope", proxy.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let message = frame(&EchoRequest {
        text: "one".into(),
        ..Default::default()
    });
    stream.send_data(message.clone(), false).unwrap();
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("main's answer in time")
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "12", "{response:?}");
    assert!(response.body().is_end_stream(), "a Trailers-Only answer");
    // The call is over for main; the client finishes its stream anyway.
    stream.send_data(message, true).unwrap();

    eventually("the unfinished call is skipped", || async {
        counter(&proxy, &mirror.h2c_url(), "skipped").await == 1
    })
    .await;
    mirror
        .assert_nothing_within(Duration::from_millis(200))
        .await;
    assert_eq!(counter(&proxy, &mirror.h2c_url(), "sent").await, 0);
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_error_statuses_keep_a_mirror_alive() {
    let main = GrpcBackend::start_h2c().await;
    let mirror = GrpcBackend::start_h2c().await;
    let proxy = proxy_for(&main, &[mirror.h2c_url()], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    for i in 0..10 {
        let status = client.fail(echo(&format!("no {i}"))).await.unwrap_err();
        assert_eq!(status.code(), FAIL_CODE);
    }
    eventually("ten copies answered", || async {
        counter(&proxy, &mirror.h2c_url(), "succeeded").await == 10
    })
    .await;
    let entry = proxy.mirror_json(&mirror.h2c_url()).await.unwrap();
    assert_eq!(entry["state"], "alive", "{entry}");
    assert_eq!(entry["failed"], 0, "{entry}");
    assert_eq!(entry["protocol"], "h2c", "{entry}");
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_calls_are_counted_by_status_in_the_scrape() {
    let main = GrpcBackend::start_h2c().await;
    let proxy = proxy_for(&main, &[], &[]).await;
    let scrape = || async {
        let resp = get(&proxy.admin_url("/metrics")).await;
        assert_eq!(resp.status, http::StatusCode::OK);
        resp.text()
    };
    assert!(
        !scrape()
            .await
            .contains("trafficmirror_grpc_requests_total{"),
        "no series before the first call"
    );
    let client = GrpcClient::h2c(proxy.addr);
    for _ in 0..2 {
        client.echo(echo("ok")).await.unwrap();
    }
    client.fail(echo("no")).await.unwrap_err();
    // A server-streaming call: its status comes in the trailers after the messages.
    let mut stream = client
        .count(tonic::Request::new(EchoRequest {
            text: "n".into(),
            count: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    // Not a gRPC call: not counted there.
    get(&proxy.url("/plain")).await;

    let fail = i32::from(FAIL_CODE);
    let text = scrape().await;
    for (code, count) in [(0, 3), (fail, 1), (14, 0)] {
        let line = format!("trafficmirror_grpc_requests_total{{grpc_status=\"{code}\"}} {count}");
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    let series = text
        .lines()
        .filter(|l| l.starts_with("trafficmirror_grpc_requests_total{"))
        .count();
    assert_eq!(series, 17, "{text}");
    proxy.stop().await;
}
