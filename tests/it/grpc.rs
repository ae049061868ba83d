//! gRPC through the proxy with a real tonic client and server: calls, streams, status,
//! metadata and trailers pass unchanged; the proxy's own errors are gRPC answers.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::support::grpc::{
    EchoRequest, FAIL_CODE, FAIL_DETAIL, FAIL_DETAIL_KEY, FAIL_DETAILS, GrpcBackend, GrpcCall,
    GrpcClient, Number, frame, next_message,
};
use crate::support::{TestProxy, WAIT, closed_addr, read_until};

fn echo(text: &str) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        text: text.into(),
        ..Default::default()
    })
}

/// The test service itself, without the proxy: what every other test relies on.
#[tokio::test]
async fn the_test_service_answers_directly() {
    let backend = GrpcBackend::start_h2c().await;
    let client = GrpcClient::h2c(backend.addr);
    let reply = client.echo(echo("hi")).await.unwrap().into_inner();
    assert_eq!(reply.text, "hi");
    let call = backend.next().await;
    assert_eq!(call.path, "/echo.Echo/Echo");
    assert_eq!(call.header("te"), Some("trailers"));

    let mut stream = client
        .count(tonic::Request::new(EchoRequest {
            text: "n".into(),
            count: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    for index in 0..3 {
        assert_eq!(
            next_message(&mut stream).await.unwrap().unwrap().index,
            index
        );
    }
    assert!(next_message(&mut stream).await.unwrap().is_none());

    let sum = client
        .sum(tonic::Request::new(vec![1, 2, 39]))
        .await
        .unwrap();
    assert_eq!((sum.get_ref().total, sum.get_ref().count), (42, 3));

    let status = client.fail(echo("nope ü")).await.unwrap_err();
    assert_eq!(status.code(), FAIL_CODE);
    assert_eq!(status.message(), "nope ü");
    assert_eq!(status.details(), FAIL_DETAILS);
    let detail = status.metadata().get_bin(FAIL_DETAIL_KEY).unwrap();
    assert_eq!(detail.to_bytes().unwrap().as_ref(), FAIL_DETAIL);

    let mut slow = echo("slow");
    slow.get_mut().delay_ms = 5_000;
    slow.set_timeout(std::time::Duration::from_millis(200));
    assert_eq!(
        client.echo(slow).await.unwrap_err().code(),
        Code::DeadlineExceeded
    );

    let set = crate::support::grpc::echo_descriptor_set();
    let decoded =
        <prost_types::FileDescriptorSet as prost::Message>::decode(set.as_slice()).unwrap();
    assert_eq!(decoded.file[0].service[0].method.len(), 4);
}

// ===== through the proxy =====

/// A gRPC main backend and a proxy in front of it (`--main h2c://…` and `args`).
async fn grpc_proxy(args: &[&str]) -> (GrpcBackend, TestProxy) {
    let main = GrpcBackend::start_h2c().await;
    let url = main.h2c_url();
    let mut all = vec!["--main", url.as_str()];
    all.extend_from_slice(args);
    (main, TestProxy::start(&all).await)
}

fn with_metadata<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    let metadata = request.metadata_mut();
    metadata.insert("x-user", MetadataValue::from_static("ada"));
    metadata.insert_bin(
        "x-trace-bin",
        MetadataValue::from_bytes(&[0, 0xff, 0x10, b'\r', b'\n']),
    );
    request
}

/// The call's metadata as main received it.
fn assert_metadata(call: &GrpcCall) {
    assert_eq!(call.header("x-user"), Some("ada"));
    // Binary metadata travels base64-encoded; it must arrive as the client wrote it.
    let sent = tonic::metadata::MetadataValue::<tonic::metadata::Binary>::from_bytes(&[
        0, 0xff, 0x10, b'\r', b'\n',
    ]);
    assert_eq!(
        call.headers["x-trace-bin"].as_bytes(),
        sent.as_encoded_bytes(),
        "binary metadata unchanged"
    );
    assert_eq!(call.header("te"), Some("trailers"));
    assert!(
        call.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/grpc")),
        "{:?}",
        call.headers
    );
}

#[tokio::test]
async fn a_unary_call_passes_unchanged_both_ways() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    let request = EchoRequest {
        text: "héllo".into(),
        ..Default::default()
    };
    let reply = client
        .echo(with_metadata(tonic::Request::new(request.clone())))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "héllo");
    let call = main.next().await;
    assert_eq!(call.path, "/echo.Echo/Echo");
    assert_eq!(call.version, http::Version::HTTP_2);
    assert_metadata(&call);
    assert_eq!(call.body, frame(&request), "the message's bytes unchanged");
    proxy.stop().await;
}

#[tokio::test]
async fn a_server_stream_reaches_the_client_as_main_sends_it() {
    let main = GrpcBackend::start_h2c_paced().await;
    let url = main.h2c_url();
    let proxy = TestProxy::start(&["--main", &url]).await;
    let client = GrpcClient::h2c(proxy.addr);
    let mut stream = client
        .count(tonic::Request::new(EchoRequest {
            text: "tick".into(),
            count: 3,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Main holds message 2 back until released: message 1 arriving first proves the
    // proxy forwards each message as it comes, not the answer once complete.
    for index in 0..3 {
        let message = next_message(&mut stream).await.unwrap().unwrap();
        assert_eq!(
            (message.index, message.text),
            (index, format!("tick {index}"))
        );
        main.release();
    }
    assert!(next_message(&mut stream).await.unwrap().is_none());
    // The stream ended with main's status, from its trailers.
    assert!(stream.trailers().await.unwrap().is_some());
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_stream_reaches_main_message_by_message() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    let reply = client
        .sum(with_metadata(tonic::Request::new(vec![5, -2, 1 << 40])))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().total, 3 + (1 << 40));
    assert_eq!(reply.get_ref().count, 3);
    let call = main.next().await;
    assert_eq!(call.path, "/echo.Echo/Sum");
    assert_metadata(&call);
    let expected: Vec<u8> = [5, -2, 1 << 40]
        .into_iter()
        .flat_map(|value| frame(&Number { value }))
        .collect();
    assert_eq!(call.body, expected);
    proxy.stop().await;
}

#[tokio::test]
async fn an_error_status_with_message_details_and_binary_metadata_passes_unchanged() {
    let (_main, proxy) = grpc_proxy(&[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    let status = client
        .fail(echo("precondition failed: 100% ünïcode\nline two"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), FAIL_CODE);
    assert_eq!(
        status.message(),
        "precondition failed: 100% ünïcode\nline two"
    );
    assert_eq!(status.details(), FAIL_DETAILS);
    let detail = status.metadata().get_bin(FAIL_DETAIL_KEY).unwrap();
    assert_eq!(detail.to_bytes().unwrap().as_ref(), FAIL_DETAIL);
    proxy.stop().await;
}

#[tokio::test]
async fn grpc_timeout_reaches_main_and_an_expired_deadline_is_deadline_exceeded() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let client = GrpcClient::h2c(proxy.addr);
    let mut quick = echo("quick");
    quick.set_timeout(Duration::from_secs(30));
    client.echo(quick).await.unwrap();
    let sent = main.next().await;
    assert_eq!(sent.header("grpc-timeout"), Some("30000000u"));

    let mut slow = echo("slow");
    slow.get_mut().delay_ms = 10_000;
    slow.set_timeout(Duration::from_millis(200));
    let status = client.echo(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    proxy.stop().await;
}

// ===== the proxy's own answers to gRPC calls =====

#[tokio::test]
async fn main_unreachable_is_unavailable() {
    let closed = closed_addr().await;
    let proxy = TestProxy::start(&["--main", &format!("h2c://{closed}")]).await;
    let status = GrpcClient::h2c(proxy.addr)
        .echo(echo("anyone?"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "main target unreachable");
    proxy.stop().await;
}

#[tokio::test]
async fn main_timeout_is_deadline_exceeded() {
    let (_main, proxy) = grpc_proxy(&["--main-timeout", "200ms"]).await;
    let mut slow = echo("slow");
    slow.get_mut().delay_ms = 10_000;
    let status = GrpcClient::h2c(proxy.addr).echo(slow).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "main target did not answer within --main-timeout"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_grpc_call_to_an_http1_main_is_unavailable_naming_h2c() {
    let main = GrpcBackend::start_h2c().await;
    let proxy = TestProxy::start(&["--main", &main.http_url()]).await;
    let status = GrpcClient::h2c(proxy.addr)
        .echo(echo("over HTTP/1.1?"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("h2c://"), "{status:?}");
    // Not sent: HTTP/1.1 cannot carry it.
    main.assert_nothing_within(Duration::from_millis(200)).await;
    proxy.stop().await;
}

/// The proxy's own gRPC answer on the wire: Trailers-Only (`200`, `application/grpc`,
/// the status in the head, no body), seen by an HTTP/2 client that is not gRPC-aware.
#[tokio::test]
async fn the_proxys_own_grpc_answer_is_trailers_only() {
    let closed = closed_addr().await;
    let proxy = TestProxy::start(&["--main", &format!("h2c://{closed}")]).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(proxy.url("/echo.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(&EchoRequest::default())))
        .unwrap();
    let answer = tokio::time::timeout(WAIT, client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "application/grpc");
    assert_eq!(answer.headers()["grpc-status"], "14");
    assert_eq!(answer.headers()["grpc-message"], "main target unreachable");
    assert!(answer.body().is_end_stream(), "no body, no trailers");
    proxy.stop().await;
}

// ===== TLS on the listener, mirrors =====

#[tokio::test]
async fn a_grpc_client_over_tls_reaches_an_h2c_main() {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (main, proxy) = grpc_proxy(&[
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ])
    .await;
    let client = GrpcClient::tls(proxy.addr, "localhost", &ca.pem());
    let reply = client.echo(with_metadata(echo("over TLS"))).await.unwrap();
    assert_eq!(reply.get_ref().text, "over TLS");
    let call = main.next().await;
    assert_eq!(call.path, "/echo.Echo/Echo");
    assert_metadata(&call);
    assert_eq!(call.header("x-forwarded-proto"), Some("https"));
    proxy.stop().await;
}

#[tokio::test]
async fn an_h2c_mirror_gets_the_call_with_its_path_metadata_and_bytes() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let mirror = GrpcBackend::start_h2c().await;
    proxy.add_mirrors(&[&mirror.h2c_url()]).await;
    let request = EchoRequest {
        text: "copy me".into(),
        count: 7,
        delay_ms: 0,
    };
    GrpcClient::h2c(proxy.addr)
        .echo(with_metadata(tonic::Request::new(request.clone())))
        .await
        .unwrap();
    let at_main = main.next().await;
    let copy = mirror.next().await;
    assert_eq!(copy.path, "/echo.Echo/Echo");
    assert_eq!(copy.version, http::Version::HTTP_2);
    assert_metadata(&copy);
    assert_eq!(copy.body, frame(&request));
    assert_eq!(copy.body, at_main.body);
    proxy.stop().await;
}

// ===== trailers between protocols =====

/// Reads an HTTP/1.1 chunked answer up to the end of its trailer section.
async fn read_chunked_answer(stream: &mut TcpStream) -> String {
    let head = read_until(stream, "\r\n\r\n").await;
    if head.contains("\r\n0\r\n")
        && head.ends_with("\r\n\r\n")
        && head.matches("\r\n\r\n").count() > 1
    {
        return head;
    }
    let mut all = head;
    loop {
        let after_last_chunk = all.find("\r\n0\r\n").map(|i| &all[i + 2..]);
        if after_last_chunk.is_some_and(|rest| rest.contains("\r\n\r\n")) {
            return all;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {all}");
        all.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn an_http1_client_talks_grpc_to_an_h2c_main_with_trailers_both_ways() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let message = frame(&echo("chunked").into_inner());
    let mut request = format!(
        "POST /echo.Echo/Echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc\r\n\
         te: trailers\r\ntrailer: x-request-check\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
        message.len()
    )
    .into_bytes();
    request.extend_from_slice(&message);
    request.extend_from_slice(b"\r\n0\r\nx-request-check: 42\r\n\r\n");
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = read_chunked_answer(&mut stream).await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(
        lower.contains("\r\ntrailer: grpc-status, grpc-message, grpc-status-details-bin\r\n"),
        "{answer}"
    );
    let trailers = &lower[lower.find("\r\n0\r\n").unwrap()..];
    assert!(trailers.contains("\r\ngrpc-status: 0\r\n"), "{answer}");

    let call = main.next().await;
    assert_eq!(call.body, message);
    let trailers = call.trailers.expect("the request's trailers reached main");
    assert_eq!(trailers["x-request-check"], "42");
    proxy.stop().await;
}

#[tokio::test]
async fn an_http1_client_without_te_trailers_gets_no_trailer_declaration() {
    let (_main, proxy) = grpc_proxy(&[]).await;
    let message = frame(&echo("no te").into_inner());
    let mut request = format!(
        "POST /echo.Echo/Echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc\r\n\
         content-length: {}\r\n\r\n",
        message.len()
    )
    .into_bytes();
    request.extend_from_slice(&message);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = read_chunked_answer(&mut stream).await.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("\r\ntrailer:"), "{answer}");
    assert!(!answer.contains("grpc-status: 0"), "{answer}");
    proxy.stop().await;
}

/// An HTTP/1.1 main that records the request's trailers and answers with a body and
/// a declared trailer.
async fn http1_main_with_trailers() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<HeaderMap>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let collected = req.into_body().collect().await.unwrap();
                        let _ = tx.send(collected.trailers().cloned().unwrap_or_default());
                        let (sender, body) =
                            http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
                        let mut sender = sender;
                        tokio::spawn(async move {
                            let _ = sender.send_data(Bytes::from_static(b"answer")).await;
                            let mut trailers = HeaderMap::new();
                            trailers.insert("x-answer-check", "7".parse().unwrap());
                            let _ = sender.send_trailers(trailers).await;
                        });
                        let response = http::Response::builder()
                            .header("trailer", "x-answer-check")
                            .body(body)
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_http2_client_and_an_http1_main_exchange_trailers() {
    let (main, mut received) = http1_main_with_trailers().await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main}")]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (mut body_tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    tokio::spawn(async move {
        let _ = body_tx.send_data(Bytes::from_static(b"question")).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-request-check", "42".parse().unwrap());
        let _ = body_tx.send_trailers(trailers).await;
    });
    let request = http::Request::post(proxy.url("/upload"))
        .header("te", "trailers")
        // An HTTP/1.1 hop sends only the trailers a `Trailer` header names.
        .header("trailer", "x-request-check")
        .body(body)
        .unwrap();
    let answer = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    let collected = tokio::time::timeout(WAIT, answer.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("main's trailers arrived");
    assert_eq!(trailers["x-answer-check"], "7");
    assert_eq!(collected.to_bytes(), "answer");
    let at_main = tokio::time::timeout(WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_main["x-request-check"], "42");
    proxy.stop().await;
}

#[tokio::test]
async fn a_malformed_grpc_request_is_internal() {
    let (main, proxy) = grpc_proxy(&[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo.Echo/Echo HTTP/1.1\r\nhost: a\r\nhost: b\r\n\
              content-type: application/grpc\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, "\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: application/grpc\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\ngrpc-status: 13\r\n"), "{head}");
    assert!(head.contains("\r\ngrpc-message: bad request: "), "{head}");
    main.assert_nothing_within(Duration::from_millis(100)).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_grpc_request_stream_is_deadline_exceeded() {
    let (_main, proxy) = grpc_proxy(&["--body-read-timeout", "200ms"]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (mut body_tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    // Half a message, then nothing more (the sender is kept, so the stream stays open).
    let message = frame(&echo("stalled").into_inner());
    body_tx.send_data(message.slice(..4)).await.unwrap();
    let request = http::Request::post(proxy.url("/echo.Echo/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let answer = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(
        answer.headers()["grpc-status"],
        "4",
        "{:?}",
        answer.headers()
    );
    drop(body_tx);
}

/// Not gRPC: an HTTP/2 main learns of a stalled body by a reset, yet the client's
/// answer is still `408`, as with an HTTP/1.1 main.
#[tokio::test]
async fn a_stalled_body_to_an_h2c_main_is_408() {
    let (_main, proxy) = grpc_proxy(&["--body-read-timeout", "200ms"]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /echo.Echo/Echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let head = read_until(&mut stream, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    proxy.stop().await;
}
