//! gRPC through the proxy with a real tonic client and server: calls, streams, status,
//! metadata and trailers pass unchanged; the proxy's own errors are gRPC answers.

use tonic::Code;

use crate::support::grpc::{
    EchoRequest, FAIL_CODE, FAIL_DETAIL, FAIL_DETAIL_KEY, FAIL_DETAILS, GrpcBackend, GrpcClient,
    next_message,
};

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
