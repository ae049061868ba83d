//! The backend of bench/soak for what nginx cannot answer (bench/README.md, "Soak"):
//! gRPC calls over h2c (a gRPC-framed echo with `grpc-status` in the trailers) and a
//! JSON document with a timestamp, for a baseline and a candidate to be compared.
//!
//! Usage: `soak-backend LISTEN FLAVOR` (a socket address; `main`, `stable` or
//! `candidate`). One single-threaded runtime; HTTP/1.1 and h2c (prior knowledge) on the
//! same port.
//!
//! - a request with `Content-Type: application/grpc…`: the body is read and sent back
//!   as the answer (`application/grpc`), then the trailer `grpc-status: 0`;
//! - `GET /json`: `{"plan":…,"served_at":NANOS,"items":[1,2,3]}`; `served_at` differs on
//!   every answer (the noise a baseline shows); the `candidate` answers `"trial"`
//!   instead of `"free"` to every 20th `/json` (the regression);
//! - `GET /__count`: how many requests it answered besides this one (plain text);
//! - anything else: the body is read and dropped, the answer is `ok`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, Infallible>;

struct State {
    candidate: bool,
    answered: AtomicU64,
    json: AtomicU64,
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: soak-backend LISTEN main|stable|candidate";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let candidate = match args.next().as_deref() {
        Some("main" | "stable") => false,
        Some("candidate") => true,
        _ => return Err(usage.into()),
    };
    let state = Arc::new(State {
        candidate,
        answered: AtomicU64::new(0),
        json: AtomicU64::new(0),
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, state))
}

async fn serve(listen: SocketAddr, state: Arc<State>) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            // A connection that ends badly (a peer killed) is no concern of the soak.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Error> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if req.uri().path() == "/__count" {
        let n = state.answered.load(Ordering::Relaxed);
        return Ok(Response::new(full(n.to_string())));
    }
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let response = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Full::new(body)
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(body)?
    } else if path == "/json" {
        let n = state.json.fetch_add(1, Ordering::Relaxed);
        let plan = if state.candidate && n % 20 == 19 {
            "trial"
        } else {
            "free"
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(full(format!(
                "{{\"plan\":\"{plan}\",\"served_at\":{nanos},\"items\":[1,2,3]}}"
            )))?
    } else {
        Response::new(full("ok".to_owned()))
    };
    state.answered.fetch_add(1, Ordering::Relaxed);
    Ok(response)
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}
