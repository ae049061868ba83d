//! Comparing gRPC answers (docs/comparing.md, "gRPC answers"), end to end with a real
//! tonic main and h2c mirrors: `grpc-status`, then the messages, as JSON with
//! `--grpc-descriptors` (and the `ignore=` pointers), else byte for byte.

use serde_json::{Value, json};
use tonic::Code;

use crate::support::grpc::{
    EchoRequest, GrpcBackend, GrpcClient, Twist, next_message, write_echo_descriptor_set,
};
use crate::support::*;

fn echo(text: &str) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        text: text.into(),
        ..Default::default()
    })
}

/// A gRPC main, a proxy in front of it (`--main h2c://…` and `extra`), and one h2c
/// comparing mirror per `(twist, options)`, added with `compare=true` and `options`.
async fn setup<const N: usize>(
    mirrors: [(Twist, &str); N],
    extra: &[&str],
) -> (GrpcBackend, [GrpcBackend; N], TestProxy) {
    let main = GrpcBackend::start_h2c().await;
    let main_url = main.h2c_url();
    let mut args = vec!["--main", main_url.as_str()];
    args.extend_from_slice(extra);
    let proxy = TestProxy::start(&args).await;
    let mut started = Vec::with_capacity(N);
    for (twist, options) in mirrors {
        let mirror = GrpcBackend::start_h2c_twisted(twist).await;
        proxy
            .put_ok(&format!("url={}&compare=true{options}", mirror.h2c_url()))
            .await;
        started.push(mirror);
    }
    let Ok(mirrors) = <[GrpcBackend; N]>::try_from(started) else {
        unreachable!("one backend per twist")
    };
    (main, mirrors, proxy)
}

/// Waits until `n` copies to `mirror` were compared (or not); returns its `compare`.
async fn settled(proxy: &TestProxy, mirror: &GrpcBackend, n: u64) -> Value {
    let url = mirror.h2c_url();
    let stats = || async {
        proxy
            .mirror_json(&url)
            .await
            .unwrap_or_else(|| panic!("{url} is listed"))["compare"]
            .clone()
    };
    eventually(&format!("{n} comparisons done at {url}"), || async {
        let s = stats().await;
        s["compared"].as_u64().unwrap_or(0) + s["not_compared"].as_u64().unwrap_or(0) >= n
    })
    .await;
    stats().await
}

/// The `/mismatches` records of `mirror`.
async fn mismatches(proxy: &TestProxy, mirror: &GrpcBackend) -> Vec<Value> {
    let resp = get(&proxy.admin_url(&format!("/mismatches?url={}", mirror.h2c_url()))).await;
    assert_eq!(resp.status, http::StatusCode::OK, "{}", resp.text());
    serde_json::from_slice(&resp.body).expect("a JSON array")
}

fn counts(s: &Value) -> (u64, u64, u64) {
    (
        s["compared"].as_u64().unwrap(),
        s["matched"].as_u64().unwrap(),
        s["mismatched"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn same_grpc_answers_match_unary_streaming_and_failing() {
    let (_main, [mirror], proxy) = setup([(Twist::None, "")], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    assert_eq!(client.echo(echo("hi")).await.unwrap().get_ref().text, "hi");
    let mut stream = client
        .count(tonic::Request::new(EchoRequest {
            text: "n".into(),
            count: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    while next_message(&mut stream).await.unwrap().is_some() {}
    // Both fail alike: the same status and message.
    assert_eq!(
        client.fail(echo("no")).await.unwrap_err().code(),
        crate::support::grpc::FAIL_CODE
    );
    let stats = settled(&proxy, &mirror, 3).await;
    assert_eq!(counts(&stats), (3, 3, 0), "{stats}");
    assert_eq!(mismatches(&proxy, &mirror).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_different_grpc_status_is_a_status_mismatch() {
    let (_main, [mirror], proxy) = setup([(Twist::Status(Code::NotFound), "")], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    // The client gets main's answer.
    assert_eq!(client.echo(echo("hi")).await.unwrap().get_ref().text, "hi");
    let stats = settled(&proxy, &mirror, 1).await;
    assert_eq!(counts(&stats), (1, 0, 1), "{stats}");
    // The status differs; so do the messages (main sent one, the mirror none).
    assert_eq!(
        stats["mismatches"],
        json!({"status": 1, "headers": 0, "body": 1}),
        "{stats}"
    );
    let records = mismatches(&proxy, &mirror).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["path_and_query"], "/echo.Echo/Echo");
    assert_eq!(
        (
            record["main_status"].as_u64(),
            record["mirror_status"].as_u64()
        ),
        (Some(200), Some(200))
    );
    assert_eq!(
        record["difference"],
        json!({"kind": "grpc_status", "main": "0", "mirror": "5"})
    );
}

#[tokio::test]
async fn with_descriptors_a_different_field_names_its_pointer_unless_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let descriptors = write_echo_descriptor_set(dir.path());
    let (_main, [plain, ignoring], proxy) = setup(
        [(Twist::Text("!"), ""), (Twist::Text("!"), "&ignore=/text")],
        &["--grpc-descriptors", descriptors.to_str().unwrap()],
    )
    .await;
    let client = GrpcClient::h2c(proxy.addr);
    assert_eq!(client.echo(echo("hi")).await.unwrap().get_ref().text, "hi");

    let stats = settled(&proxy, &plain, 1).await;
    assert_eq!(counts(&stats), (1, 0, 1), "{stats}");
    assert_eq!(
        stats["mismatches"],
        json!({"status": 0, "headers": 0, "body": 1}),
        "{stats}"
    );
    let records = mismatches(&proxy, &plain).await;
    assert_eq!(
        records[0]["difference"],
        json!({"kind": "message_json_pointer", "index": 0, "pointer": "/text",
               "main": "\"hi\"", "mirror": "\"hi!\""})
    );

    let stats = settled(&proxy, &ignoring, 1).await;
    assert_eq!(counts(&stats), (1, 1, 0), "{stats}");
}

#[tokio::test]
async fn without_descriptors_the_message_index_and_byte_offset_are_named() {
    // Without descriptors messages are bytes: a JSON pointer has nothing to hide.
    let (_main, [mirror], proxy) = setup([(Twist::Text("!"), "&ignore=/text")], &[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    assert_eq!(client.echo(echo("hi")).await.unwrap().get_ref().text, "hi");
    let stats = settled(&proxy, &mirror, 1).await;
    assert_eq!(counts(&stats), (1, 0, 1), "{stats}");
    let records = mismatches(&proxy, &mirror).await;
    // `EchoReply.text` is field 1: its tag, then its length, which differs (2 and 3).
    assert_eq!(
        records[0]["difference"],
        json!({"kind": "message_byte_offset", "index": 0, "offset": 1})
    );
}

/// A bad `--grpc-descriptors` file is a one-line start-up error naming it (exit 2),
/// from the flag, its variable and the config file alike.
#[test]
fn a_bad_descriptor_file_is_a_one_line_start_up_error() {
    let sandbox = Sandbox::new();
    let garbage = sandbox.write("work/garbage.pb", "\u{7f}\u{7f} not a descriptor set");
    let empty = sandbox.write("work/empty.pb", "");
    let (garbage, empty) = (garbage.to_str().unwrap(), empty.to_str().unwrap());
    let fails = |args: &[&str], env: &[(&str, &str)], wanted: &[&str]| {
        let args = [&["--listen", "127.0.0.1:0"][..], args].concat();
        let (code, stdout, stderr, _) = run_in(&sandbox, &args, env);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        for want in wanted {
            assert!(stderr.contains(want), "{args:?}: {want:?} not in {stderr}");
        }
    };
    fails(
        &["--grpc-descriptors", "absent.pb"],
        &[],
        &["--grpc-descriptors", "absent.pb"],
    );
    fails(
        &["--grpc-descriptors", garbage],
        &[],
        &["not a protobuf FileDescriptorSet", garbage],
    );
    fails(
        &[],
        &[("TRAFFICMIRROR_GRPC_DESCRIPTORS", empty)],
        &["describes no gRPC service", empty],
    );
    sandbox.write(
        "work/trafficmirror.yaml",
        &format!("grpc-descriptors: {garbage}\n"),
    );
    fails(
        &[],
        &[],
        &[garbage, "trafficmirror.yaml", "\"grpc-descriptors\""],
    );
}
