//! Load harness comparing [`Pool`] with hyper-util's `client::pool::cache` on the same
//! work, for `bench/pool-compare` (which starts an nginx target and reads the figures).
//! Ignored by `cargo test`: it needs a target and measures, it does not check.
//!
//! Both variants run like a worker: one current-thread runtime, `CONCURRENCY` tasks each
//! sending GETs in a loop on keep-alive HTTP/1.1 connections and reading every answer to
//! its end; only the pool differs. With `cache`, each task holds a clone of the cache
//! (clones share one list) and, per request, takes a connection, waits until it is ready,
//! sends, reads the body and drops the connection, which puts it back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::pool::cache;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::Pool;
use crate::body::BoxError;
use crate::target_url::TargetUrl;

const CONCURRENCY: usize = 50;

/// Opens a connection for the cache the way [`Pool`] does (same connector, same I/O
/// type), counting how many it opened.
#[derive(Clone)]
struct Connect {
    connector: HttpsConnector<HttpConnector>,
    opened: Arc<AtomicUsize>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<SendRequest<Empty<Bytes>>, BoxError>> + Send>>;

impl Service<Uri> for Connect {
    type Response = SendRequest<Empty<Bytes>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, origin: Uri) -> Self::Future {
        let mut connector = self.connector.clone();
        self.opened.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let io = connector.call(origin).await?;
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            Ok(sender)
        })
    }
}

fn request(host: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/")
        .header(header::HOST, host)
        .body(Empty::new())
        .expect("a valid request")
}

async fn with_own_pool(target: &TargetUrl, host: String, per_task: usize) -> Option<usize> {
    let tls = crate::tls::client_config(None, false).expect("TLS settings");
    let pool: Arc<Pool<Empty<Bytes>>> = Arc::new(Pool::new(target, &tls, 256));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (pool, host) = (pool.clone(), host.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let response = pool.send(request(&host)).await.expect("answer");
                    response.into_body().collect().await.expect("body");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    None // bounded by the pool; not counted
}

async fn with_cache(target: &TargetUrl, host: String, per_task: usize) -> Option<usize> {
    let tls = crate::tls::client_config(None, false).expect("TLS settings");
    let opened = Arc::new(AtomicUsize::new(0));
    let connect = Connect {
        connector: super::connector(&tls, target.transport()),
        opened: opened.clone(),
    };
    let cache = cache::builder()
        .executor(TokioExecutor::new())
        .build(connect);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (mut cache, host, origin) = (cache.clone(), host.clone(), target.origin());
            tokio::spawn(async move {
                let uri = origin.clone();
                for _ in 0..per_task {
                    std::future::poll_fn(|cx| cache.poll_ready(cx))
                        .await
                        .expect("ready");
                    let mut conn = cache.call(uri.clone()).await.expect("connection");
                    conn.inner_mut().ready().await.expect("connection ready");
                    let response = conn
                        .inner_mut()
                        .send_request(request(&host))
                        .await
                        .expect("answer");
                    response.into_body().collect().await.expect("body");
                    drop(conn); // back to the cache
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    Some(opened.load(Ordering::Relaxed))
}

/// The process's user + system CPU time in clock ticks (`/proc/self/stat`; a tick is
/// 10 ms, `USER_HZ` = 100 on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) // utime, stime (fields 14 and 15 of the whole line)
}

#[test]
#[ignore = "a load harness for bench/pool-compare, not a check"]
fn pool_compare() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let target = TargetUrl::parse(&env("TM_POOL_TARGET")).expect("a target URL");
    let variant = env("TM_POOL_VARIANT");
    let requests: usize = env("TM_POOL_REQUESTS").parse().expect("a request count");
    let per_task = requests.div_ceil(CONCURRENCY);
    let addr = target
        .origin()
        .authority()
        .expect("an authority")
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (cpu, started) = (cpu_ticks(), Instant::now());
    let opened = runtime.block_on(async {
        match variant.as_str() {
            "own" => with_own_pool(&target, addr.clone(), per_task).await,
            "cache" => with_cache(&target, addr.clone(), per_task).await,
            other => panic!("TM_POOL_VARIANT is own or cache, not {other}"),
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let done = per_task * CONCURRENCY;
    #[allow(clippy::cast_precision_loss)]
    let (rate, cpu_us) = (
        done as f64 / elapsed,
        cpu_ticks().saturating_sub(cpu) as f64 * 10_000.0 / done as f64,
    );
    println!(
        "\npool-compare variant={variant} requests={done} seconds={elapsed:.2} req_per_s={rate:.0} cpu_us_per_req={cpu_us:.1} connections_opened={}",
        opened.map_or("-".to_owned(), |n| n.to_string())
    );
}
