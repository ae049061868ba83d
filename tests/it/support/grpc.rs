//! A real gRPC service for the tests, without protoc: the messages are `prost` derives,
//! the server dispatches by path to `tonic::server::Grpc` the way generated code does,
//! and the client calls through `tonic::client::Grpc` over hyper's HTTP/2 client.
//!
//! The service `echo.Echo`:
//! - `Echo(EchoRequest) -> EchoReply` (unary; waits `delay_ms` first),
//! - `Count(EchoRequest) -> stream EchoReply` (`count` replies; a paced backend waits
//!   for [`GrpcBackend::release`] before each reply after the first),
//! - `Sum(stream Number) -> SumReply` (client streaming),
//! - `Fail(EchoRequest)`: always the error status [`FAIL_CODE`] with `text` as its
//!   message, binary metadata [`FAIL_DETAIL_KEY`] = [`FAIL_DETAIL`] and details
//!   [`FAIL_DETAILS`] (`grpc-status-details-bin`).
//!
//! The backend honours `grpc-timeout` as gRPC servers do (DEADLINE_EXCEEDED when the
//! answer is not ready in time) and records every call: path, metadata, the raw body
//! bytes (the length-prefixed messages as they arrived) and the request trailers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

use super::WAIT;

// ===== messages =====

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    /// How many replies `Count` sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// How long `Echo` waits before answering.
    #[prost(uint64, tag = "3")]
    pub delay_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub index: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Number {
    #[prost(int64, tag = "1")]
    pub value: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SumReply {
    #[prost(int64, tag = "1")]
    pub total: i64,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

pub const ECHO: &str = "/echo.Echo/Echo";
pub const COUNT: &str = "/echo.Echo/Count";
pub const SUM: &str = "/echo.Echo/Sum";
pub const FAIL: &str = "/echo.Echo/Fail";

/// The status `Fail` answers with.
pub const FAIL_CODE: Code = Code::FailedPrecondition;
/// The binary metadata `Fail` adds to its status (bytes that are not text).
pub const FAIL_DETAIL_KEY: &str = "detail-bin";
pub const FAIL_DETAIL: &[u8] = &[0, 1, 2, 0xfe, 0xff, b'\n', b':'];
/// `Fail`'s status details (`grpc-status-details-bin`).
pub const FAIL_DETAILS: &[u8] = &[8, 9, 0x12, 3, b'a', 0xc3, 0xa9];

/// One message as gRPC frames it on the wire: uncompressed flag, 4-byte length, bytes.
pub fn frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed.freeze()
}

// ===== the descriptor set of the same service =====

/// A `FileDescriptorSet` (as `protoc --descriptor_set_out` writes it) describing
/// `echo.proto`: the messages and the service above.
pub fn echo_descriptor_set() -> Vec<u8> {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto,
    };
    fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            json_name: Some(name.into()),
            ..Default::default()
        }
    }
    fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: fields,
            ..Default::default()
        }
    }
    fn method(
        name: &str,
        input: &str,
        output: &str,
        streams: (bool, bool),
    ) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(format!(".echo.{input}")),
            output_type: Some(format!(".echo.{output}")),
            client_streaming: Some(streams.0),
            server_streaming: Some(streams.1),
            ..Default::default()
        }
    }
    let file = FileDescriptorProto {
        name: Some("echo.proto".into()),
        package: Some("echo".into()),
        syntax: Some("proto3".into()),
        message_type: vec![
            message(
                "EchoRequest",
                vec![
                    field("text", 1, Type::String),
                    field("count", 2, Type::Uint32),
                    field("delay_ms", 3, Type::Uint64),
                ],
            ),
            message(
                "EchoReply",
                vec![
                    field("text", 1, Type::String),
                    field("index", 2, Type::Uint32),
                ],
            ),
            message("Number", vec![field("value", 1, Type::Int64)]),
            message(
                "SumReply",
                vec![
                    field("total", 1, Type::Int64),
                    field("count", 2, Type::Uint32),
                ],
            ),
        ],
        service: vec![ServiceDescriptorProto {
            name: Some("Echo".into()),
            method: vec![
                method("Echo", "EchoRequest", "EchoReply", (false, false)),
                method("Count", "EchoRequest", "EchoReply", (false, true)),
                method("Sum", "Number", "SumReply", (true, false)),
                method("Fail", "EchoRequest", "EchoReply", (false, false)),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

/// [`echo_descriptor_set`] written to a file in `dir` (for `--grpc-descriptors`).
pub fn write_echo_descriptor_set(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("echo.pb");
    std::fs::write(&path, echo_descriptor_set()).unwrap();
    path
}

// ===== the server =====

/// One call as the backend received it.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// The request's `:path`, e.g. `/echo.Echo/Echo`.
    pub path: String,
    pub version: http::Version,
    /// Every header (the call's metadata included).
    pub headers: HeaderMap,
    /// The request body as it arrived: the length-prefixed messages.
    pub body: Bytes,
    /// The request's trailers, if it had any.
    pub trailers: Option<HeaderMap>,
}

impl GrpcCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A gRPC server on 127.0.0.1:0 (h2c, and HTTP/1.1 for whoever tries) that records
/// every call it receives.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<GrpcCall>>,
    gate: Option<Arc<Semaphore>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    calls: mpsc::UnboundedSender<GrpcCall>,
    gate: Option<Arc<Semaphore>>,
}

impl GrpcBackend {
    /// A backend speaking HTTP/2 with prior knowledge (`h2c://`).
    pub async fn start_h2c() -> GrpcBackend {
        Self::start(None).await
    }

    /// [`GrpcBackend::start_h2c`], where `Count` sends each reply after the first only
    /// once [`GrpcBackend::release`] allows it.
    pub async fn start_h2c_paced() -> GrpcBackend {
        Self::start(Some(Arc::new(Semaphore::new(0)))).await
    }

    async fn start(gate: Option<Arc<Semaphore>>) -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            calls: tx,
            gate: gate.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(serve(shared, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcBackend {
            addr,
            received: tokio::sync::Mutex::new(rx),
            gate,
            task,
        }
    }

    /// `h2c://127.0.0.1:PORT`, for `--main` or a mirror.
    pub fn h2c_url(&self) -> String {
        format!("h2c://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` (the same server, spoken to as an HTTP/1.1 target).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets a paced `Count` send one more reply.
    pub fn release(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(1);
        }
    }

    /// The next call received (recorded once the server is done reading its request),
    /// waiting at most [`WAIT`].
    pub async fn next(&self) -> GrpcCall {
        let mut rx = self.received.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the gRPC backend received a call in time")
            .expect("the gRPC backend is running")
    }

    /// Asserts that no call arrives within `quiet`.
    pub async fn assert_nothing_within(&self, quiet: Duration) {
        let mut rx = self.received.lock().await;
        if let Ok(Some(call)) = tokio::time::timeout(quiet, rx.recv()).await {
            panic!("unexpected gRPC call: {call:?}");
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Request<B> = http::Request<B>;

/// Records the request body's frames as the server reads them; the call is reported
/// when the server is done with the body (dropped it).
struct Recording {
    inner: Incoming,
    call: Option<GrpcCall>,
    body: BytesMut,
    calls: mpsc::UnboundedSender<GrpcCall>,
}

impl Body for Recording {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.body.extend_from_slice(data);
            } else if let Some(trailers) = frame.trailers_ref() {
                let trailers = trailers.clone();
                if let Some(call) = self.call.as_mut() {
                    call.trailers = Some(trailers);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            call.body = std::mem::take(&mut self.body).freeze();
            let _ = self.calls.send(call);
        }
    }
}

/// A tower service made of a closure (what tonic's `Grpc::unary` & co. call).
struct Handler<F>(F);

impl<F, Req, Res, Fut> tower_service::Service<Req> for Handler<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Res, Status>>,
{
    type Response = Res;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        (self.0)(req)
    }
}

/// A stream of replies fed by a channel.
struct Replies(mpsc::Receiver<Result<EchoReply, Status>>);

impl Stream for Replies {
    type Item = Result<EchoReply, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// `grpc-timeout`: an integer and a unit (gRPC over HTTP/2, "Requests").
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

async fn serve(shared: Shared, req: Request<Incoming>) -> http::Response<tonic::body::Body> {
    let (parts, body) = req.into_parts();
    let call = GrpcCall {
        path: parts.uri.path().to_owned(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Bytes::new(),
        trailers: None,
    };
    let body = Recording {
        inner: body,
        call: Some(call),
        body: BytesMut::new(),
        calls: shared.calls.clone(),
    };
    let deadline = grpc_timeout(&parts.headers);
    let req = Request::from_parts(parts, body);
    let answer = dispatch(shared, req);
    match deadline {
        None => answer.await,
        Some(deadline) => match tokio::time::timeout(deadline, answer).await {
            Ok(answer) => answer,
            Err(_) => Status::deadline_exceeded("Deadline expired before operation could complete")
                .into_http(),
        },
    }
}

async fn dispatch(shared: Shared, req: Request<Recording>) -> http::Response<tonic::body::Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        ECHO => {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let echo = Handler(|req: tonic::Request<EchoRequest>| async move {
                let req = req.into_inner();
                tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
                Ok(tonic::Response::new(EchoReply {
                    text: req.text,
                    index: 0,
                }))
            });
            grpc.unary(echo, req).await
        }
        COUNT => {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let gate = shared.gate.clone();
            let count = Handler(move |req: tonic::Request<EchoRequest>| {
                let gate = gate.clone();
                async move {
                    let req = req.into_inner();
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(async move {
                        for index in 0..req.count {
                            if index > 0 {
                                if let Some(gate) = &gate {
                                    let Ok(permit) = gate.acquire().await else {
                                        return;
                                    };
                                    permit.forget();
                                }
                            }
                            let reply = EchoReply {
                                text: format!("{} {index}", req.text),
                                index,
                            };
                            if tx.send(Ok(reply)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok(tonic::Response::new(Replies(rx)))
                }
            });
            grpc.server_streaming(count, req).await
        }
        SUM => {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<SumReply, Number>::default());
            let sum = Handler(|req: tonic::Request<Streaming<Number>>| async move {
                let mut numbers = req.into_inner();
                let mut reply = SumReply::default();
                while let Some(number) = numbers.message().await? {
                    reply.total += number.value;
                    reply.count += 1;
                }
                Ok(tonic::Response::new(reply))
            });
            grpc.client_streaming(sum, req).await
        }
        FAIL => {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let fail = Handler(|req: tonic::Request<EchoRequest>| async move {
                let mut metadata = MetadataMap::new();
                metadata.insert_bin(FAIL_DETAIL_KEY, MetadataValue::from_bytes(FAIL_DETAIL));
                Err::<tonic::Response<EchoReply>, _>(Status::with_details_and_metadata(
                    FAIL_CODE,
                    req.into_inner().text,
                    Bytes::from_static(FAIL_DETAILS),
                    metadata,
                ))
            });
            grpc.unary(fail, req).await
        }
        _ => Status::unimplemented(format!("no method {path}")).into_http(),
    }
}

// ===== the client =====

/// A gRPC client of `echo.Echo` on one address, over HTTP/2 (h2c or TLS). It has no
/// deadline of its own: a `grpc-timeout` set on a request is only sent, so what the
/// caller sees when it expires is what the server (or the proxy) answered.
#[derive(Clone)]
pub struct GrpcClient<C> {
    grpc: tonic::client::Grpc<Client<C, tonic::body::Body>>,
}

impl GrpcClient<HttpConnector> {
    /// Calls `addr` over cleartext HTTP/2 with prior knowledge.
    pub fn h2c(addr: SocketAddr) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let origin: Uri = format!("http://{addr}").parse().unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::with_origin(client, origin),
        }
    }
}

impl GrpcClient<hyper_rustls::HttpsConnector<HttpConnector>> {
    /// Calls `addr` over TLS (ALPN `h2`), trusting the PEM certificate `ca_pem` and
    /// checking that the server's certificate names `host`.
    pub fn tls(addr: SocketAddr, host: &str, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let mut reader = std::io::Cursor::new(ca_pem.as_bytes());
        for cert in rustls_pki_types::pem::PemObject::pem_reader_iter(&mut reader) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let origin: Uri = format!("https://{host}:{}", addr.port()).parse().unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::with_origin(client, origin),
        }
    }
}

impl<C> GrpcClient<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn ready(&self) -> tonic::client::Grpc<Client<C, tonic::body::Body>> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.expect("the HTTP/2 client is ready");
        grpc
    }

    /// Any unary call of the service (by path: [`ECHO`], [`FAIL`]).
    pub async fn unary<Req, Res>(
        &self,
        path: &'static str,
        request: tonic::Request<Req>,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Req: Message + Send + Sync + 'static,
        Res: Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.ready().await;
        let path = http::uri::PathAndQuery::from_static(path);
        grpc.unary(request, path, ProstCodec::<Req, Res>::default())
            .await
    }

    pub async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.unary(ECHO, request).await
    }

    pub async fn fail(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.unary(FAIL, request).await
    }

    pub async fn count(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Streaming<EchoReply>>, Status> {
        let mut grpc = self.ready().await;
        let path = http::uri::PathAndQuery::from_static(COUNT);
        grpc.server_streaming(
            request,
            path,
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
    }

    /// `Sum` of `numbers`, sent as a stream of messages.
    pub async fn sum(
        &self,
        request: tonic::Request<Vec<i64>>,
    ) -> Result<tonic::Response<SumReply>, Status> {
        let mut grpc = self.ready().await;
        let path = http::uri::PathAndQuery::from_static(SUM);
        let request = request.map(|numbers| {
            tonic::codegen::tokio_stream::iter(numbers.into_iter().map(|value| Number { value }))
        });
        grpc.client_streaming(request, path, ProstCodec::<Number, SumReply>::default())
            .await
    }
}

/// The next message of a response stream, waiting at most [`WAIT`].
pub async fn next_message<T>(stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the next message arrived in time")
}

/// Collects a whole body (for raw HTTP checks of gRPC answers).
pub async fn collect_body<B: Body>(body: B) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    body.collect().await.unwrap().to_bytes()
}
