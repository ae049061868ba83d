//! `trafficmirror demo`: the product working with no other software. One process runs a
//! demo main, two demo mirrors — `stable` (`role=baseline`), which answers like main but
//! for a timestamp, and
//! `candidate`, which is slower and differs on a share of requests — the proxy with both
//! mirrors comparing, and a gentle stream of traffic through it. Ctrl-C stops it all.
//!
//! The demo servers are a few lines of hyper each; they only exist for this command.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::run;
use crate::cli::Cli;
use crate::config::Config;
use crate::server::Listeners;

/// How a demo backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// The service in production.
    Main,
    /// The same release: answers exactly like main.
    Stable,
    /// A new release: 40 ms slower, and one user in seven gets a different plan; order
    /// creation answers 200 instead of 201.
    Candidate,
}

/// Runs the demo until `shutdown` resolves. `listen` is the proxy's address; `rate` the
/// generated requests per second.
///
/// # Errors
/// A message when a server cannot be started (e.g. the port is in use).
pub async fn demo(
    listen: &str,
    rate: u32,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let main = backend(Flavor::Main).await?;
    let stable = backend(Flavor::Stable).await?;
    let candidate = backend(Flavor::Candidate).await?;
    // No `ignore=/served_at`: the timestamp differs on every answer of both mirrors, and
    // the baseline is what tells that noise from the candidate's real regressions.
    let baseline = format!("http://{stable} compare=true role=baseline");
    let candidate_option = format!("http://{candidate} compare=true");
    let args = [
        "trafficmirror".to_owned(),
        "--listen".to_owned(),
        listen.to_owned(),
        "--main".to_owned(),
        format!("http://{main}"),
        "--mirror".to_owned(),
        baseline,
        "--mirror".to_owned(),
        candidate_option,
        "--shutdown-timeout".to_owned(),
        "2s".to_owned(),
    ];
    let cli = Cli::try_parse_args(args).map_err(|e| e.to_string())?;
    let config = Config::from_cli(&cli).map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config.listener)
        .await
        .map_err(|e| e.to_string())?;
    let proxy = listeners
        .main
        .first()
        .and_then(|l| l.local_addr().ok())
        .ok_or("no listener")?;
    let proxy = match proxy.ip() {
        ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], proxy.port())),
        _ => proxy,
    };
    banner(proxy, main, stable, candidate, &config.admin.path, rate);
    let stop = CancellationToken::new();
    tokio::spawn(traffic(proxy, rate, stop.clone()));
    let stopping = stop.clone();
    let result = run(config, listeners, async move {
        shutdown.await;
        stopping.cancel();
    })
    .await;
    stop.cancel();
    result.map_err(|e| e.to_string())
}

fn banner(
    proxy: SocketAddr,
    main: SocketAddr,
    stable: SocketAddr,
    candidate: SocketAddr,
    admin: &str,
    rate: u32,
) {
    let url = format!("http://{proxy}{admin}");
    // Write errors are ignored: a closed stdout (`| head -1`) must not stop the demo.
    let _ = writeln!(
        std::io::stdout().lock(),
        "trafficmirror demo: proxy on http://{proxy} -> main http://{main}\n  \
         mirrors, both comparing their answers with main's:\n    \
         stable     http://{stable}  (role=baseline: like main; its differences are noise)\n    \
         candidate  http://{candidate}  (40 ms slower; differs for one user in seven)\n  \
         sending {rate} requests per second through the proxy\n\n  \
         status page:     {url}  (open it in a browser)\n  \
         list (JSON):     curl '{url}?format=json'\n  \
         mismatches:      curl '{url}/mismatches?url=http://{candidate}'\n  \
         per endpoint:    curl '{url}/endpoints?url=http://{candidate}'\n  \
         verdict:         curl '{url}/verdict?url=http://{candidate}'\n  \
         report:          {url}/report?url=http://{candidate}  (open it in a browser)\n  \
         metrics:         curl {url}/metrics\n  \
         a request:       curl http://{proxy}/users/7\n  \
         sample 10 %:     curl -X PUT '{url}?url=http://{stable}&percent=10&compare=true&role=baseline'\n  \
         Ctrl-C stops everything."
    );
}

/// Starts one demo backend on a free loopback port.
async fn backend(flavor: Flavor) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start a demo server: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot start a demo server: {e}"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(flavor, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    flavor: Flavor,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if flavor == Flavor::Candidate {
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Nanoseconds: two backends never stamp the same instant, so the field differs on
    // every answer (noise the baseline cancels).
    let served_at = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    let path = parts.uri.path();
    let (status, json) = match (&parts.method, path.strip_prefix("/users/")) {
        (&Method::GET, Some(id)) => {
            let id: u64 = id.parse().unwrap_or(0);
            let mut plan = if id % 3 == 0 { "pro" } else { "free" };
            if flavor == Flavor::Candidate && id % 7 == 0 {
                plan = "trial";
            }
            let json = serde_json::json!({
                "id": id,
                "name": format!("user-{id}"),
                "plan": plan,
                "served_at": served_at,
            });
            (StatusCode::OK, json)
        }
        (&Method::POST, _) if path == "/orders" => {
            let status = match flavor {
                Flavor::Candidate => StatusCode::OK,
                _ => StatusCode::CREATED,
            };
            let json = serde_json::json!({"status": "created", "bytes": body.len(), "served_at": served_at});
            (status, json)
        }
        _ => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found", "path": path}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// A gentle stream of requests through the proxy: user lookups and, one in five, an
/// order.
async fn traffic(proxy: SocketAddr, rate: u32, stop: CancellationToken) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let period = Duration::from_secs(1) / rate.max(1);
    let mut tick = tokio::time::interval(period);
    for n in 0u64.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let request = if n % 5 == 4 {
            Request::post(format!("http://{proxy}/orders"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(format!("{{\"user\":{}}}", n % 50))))
        } else {
            Request::get(format!("http://{proxy}/users/{}", n % 50)).body(Full::default())
        };
        let Ok(request) = request else { continue };
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(response) = client.request(request).await {
                let _ = response.into_body().collect().await;
            }
        });
    }
}
