//! Shared test helpers: an in-process proxy on 127.0.0.1:0, mock backends that record
//! what they receive, an HTTP client, and bounded waits.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use trafficmirror::cli::Cli;
use trafficmirror::{Config, Listeners};

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

// ===== the proxy under test =====

/// A proxy running in this process on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// Where the admin endpoint is (`addr` unless `--targets-address` was given).
    pub admin_addr: SocketAddr,
    pub admin_path: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    /// Starts a proxy with these flags (as on the command line, without the program
    /// name). `--listen` is always 127.0.0.1:0; when `--targets-address` is among the
    /// flags it is replaced by 127.0.0.1:0 too.
    pub async fn start(args: &[&str]) -> TestProxy {
        Self::start_tuned(args, |_| {}).await
    }

    /// [`TestProxy::start`], with `tune` changing the configuration first (settings
    /// that are not flags, such as short retry intervals).
    pub async fn start_tuned(args: &[&str], tune: impl FnOnce(&mut Config)) -> TestProxy {
        let mut argv = vec!["trafficmirror"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_args(argv).expect("test flags parse");
        let mut config = Config::from_cli(&cli).expect("test flags are valid");
        tune(&mut config);
        let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = main.local_addr().unwrap();
        let admin = match config.listener.admin_address {
            Some(_) => vec![TcpListener::bind("127.0.0.1:0").await.unwrap()],
            None => Vec::new(),
        };
        let admin_addr = admin.first().map_or(addr, |l| l.local_addr().unwrap());
        let admin_path = config.admin.path.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            main: vec![main],
            admin,
        };
        let task = tokio::spawn(trafficmirror::run(config, listeners, async {
            let _ = stopped.await;
        }));
        TestProxy {
            addr,
            admin_addr,
            admin_path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, query: &str) -> String {
        format!("http://{}{}{query}", self.admin_addr, self.admin_path)
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("proxy stops in time")
                .expect("proxy task did not panic")
                .expect("proxy started its workers");
        }
    }

    /// Adds mirrors through the admin API and checks the answer.
    pub async fn add_mirrors(&self, urls: &[&str]) {
        let query: Vec<String> = urls.iter().map(|u| format!("url={u}")).collect();
        let resp = send(
            Method::PUT,
            &self.admin_url(&format!("?{}", query.join("&"))),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }

    /// `PUT` on the admin endpoint with this query string (without `?`).
    pub async fn put(&self, query: &str) -> Answer {
        send(
            Method::PUT,
            &self.admin_url(&format!("?{query}")),
            &[],
            Bytes::new(),
        )
        .await
    }

    /// A `PUT` that must succeed.
    pub async fn put_ok(&self, query: &str) {
        let resp = self.put(query).await;
        assert_eq!(resp.status, StatusCode::OK, "PUT ?{query}: {}", resp.text());
    }

    /// The JSON listing.
    pub async fn mirrors_json(&self) -> Vec<serde_json::Value> {
        let resp = get(&self.admin_url("?format=json")).await;
        assert_eq!(resp.status, StatusCode::OK);
        serde_json::from_slice(&resp.body).expect("JSON listing")
    }

    /// Bytes held for mirrors right now (`GET <admin>/status`).
    pub async fn buffered_bytes(&self) -> u64 {
        let resp = get(&self.admin_url("/status")).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let status: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON");
        status["buffered_bytes"].as_u64().expect("buffered_bytes")
    }

    /// Waits (bounded) until no byte is held for mirrors any more.
    pub async fn budget_drained(&self, what: &str) {
        eventually(what, || async { self.buffered_bytes().await == 0 }).await;
    }

    /// The JSON entry of one mirror, if listed.
    pub async fn mirror_json(&self, url: &str) -> Option<serde_json::Value> {
        self.mirrors_json()
            .await
            .into_iter()
            .find(|m| m["url"] == url)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ===== the real binary =====

/// A fresh directory for one run of the binary, removed on drop: `work/` is its working
/// directory and `home/` its `HOME`, so neither the developer's `./trafficmirror.yaml` nor
/// `~/.trafficmirror/trafficmirror.yaml` (nor an inherited `TRAFFICMIRROR_*` variable)
/// reaches the binary under test.
pub struct Sandbox {
    root: std::path::PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "tm-sandbox-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["work", "home"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        Sandbox { root }
    }

    /// The binary's working directory.
    pub fn work(&self) -> std::path::PathBuf {
        self.root.join("work")
    }

    /// The binary's `HOME`.
    pub fn home(&self) -> std::path::PathBuf {
        self.root.join("home")
    }

    /// Writes `content` to `relative` (e.g. `work/trafficmirror.yaml`), creating folders.
    pub fn write(&self, relative: &str, content: &str) -> std::path::PathBuf {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        path
    }

    /// A command for the built binary in this sandbox.
    pub fn command(&self) -> std::process::Command {
        self.command_for(env!("CARGO_BIN_EXE_trafficmirror"))
    }

    /// A command for `program` in this sandbox (e.g. a shell that execs the binary).
    pub fn command_for(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.current_dir(self.work()).env("HOME", self.home());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TRAFFICMIRROR_") {
                cmd.env_remove(name);
            }
        }
        cmd
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The built binary, running, and what it printed at start-up.
pub struct Binary {
    child: tokio::process::Child,
    /// The proxy address from the first banner line.
    pub addr: String,
    /// The five lines printed at start-up.
    pub banner: Vec<String>,
    /// stderr read so far, once [`Binary::wait_for_stderr`] started reading it.
    stderr_log: Option<(Arc<Mutex<String>>, JoinHandle<()>)>,
    /// Dropped after the child, which `kill_on_drop` ends.
    _sandbox: Sandbox,
}

impl Binary {
    /// Starts the binary listening on 127.0.0.1:0 with `args`.
    pub async fn start(args: &[&str]) -> Binary {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_with(&all, &[]).await
    }

    /// Starts the binary with exactly `args` and extra environment variables, in a fresh
    /// [`Sandbox`].
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Binary {
        Self::start_in(Sandbox::new(), args, env).await
    }

    /// Starts the binary in `sandbox` (its working directory and `HOME`) with exactly
    /// `args` and extra environment variables.
    pub async fn start_in(sandbox: Sandbox, args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut command = sandbox.command();
        command.args(args).envs(env.iter().copied());
        Self::spawn(sandbox, command).await
    }

    /// Starts the binary in a fresh [`Sandbox`] through `sh -c 'ULIMITS && exec BINARY
    /// ARGS'` (e.g. `ulimit -Sn 1024`), listening on 127.0.0.1:0 with `args`.
    pub async fn start_with_ulimit(ulimit: &str, args: &[&str]) -> Binary {
        let sandbox = Sandbox::new();
        let mut command = sandbox.command_for("sh");
        command
            .arg("-c")
            .arg(format!("{ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_trafficmirror"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Self::spawn(sandbox, command).await
    }

    /// Starts `command` (the binary, or something that execs it) and reads its banner.
    async fn spawn(sandbox: Sandbox, command: std::process::Command) -> Binary {
        let mut child = tokio::process::Command::from(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        for _ in 0..5 {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("banner in time")
                .unwrap()
                .expect("a banner line");
            banner.push(line);
        }
        let first = &banner[0];
        // "trafficmirror: listening on 127.0.0.1:PORT -> main URL"
        // (or, for the demo, "proxy on http://127.0.0.1:PORT -> …")
        let addr = first
            .split_whitespace()
            .map(|w| w.trim_start_matches("http://"))
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .trim_end_matches(',')
            .to_owned();
        Binary {
            child,
            addr,
            banner,
            stderr_log: None,
            _sandbox: sandbox,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// A `PUT /targets?{query}` on the binary's listener that must succeed.
    pub async fn put_ok(&self, query: &str) {
        let url = self.url(&format!("/targets?{query}"));
        let resp = send(Method::PUT, &url, &[], Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::OK, "PUT ?{query}: {}", resp.text());
    }

    /// Names of the process's threads (Linux: from /proc).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.id().expect("still running");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .map(|name| name.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many file descriptors the process holds (Linux: entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id().expect("still running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd is readable")
            .count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and checks that the process exits 0 within `limit`; returns stderr.
    pub async fn terminate_within(self, limit: Duration) -> String {
        self.signal("TERM");
        let (code, stderr) = self.wait(limit).await;
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    }

    /// Sends SIGTERM and polls for the exit until `limit` has passed since the signal;
    /// panics if the process is still running then. Returns the exit code, how long the
    /// exit took, and stderr.
    pub async fn terminate_by(mut self, limit: Duration) -> (Option<i32>, Duration, String) {
        self.signal("TERM");
        let signalled = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            let waited = signalled.elapsed();
            assert!(
                waited <= limit,
                "still running {waited:?} after SIGTERM (limit {limit:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let took = signalled.elapsed();
        let (code, stderr) = self.wait(WAIT).await;
        assert_eq!(code, status.code());
        (code, took, stderr)
    }

    /// Waits (bounded) for the exit; returns the status code and stderr.
    pub async fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("process exits in time")
            .unwrap();
        let mut stderr = String::new();
        match self.stderr_log.take() {
            Some((text, reader)) => {
                let _ = tokio::time::timeout(WAIT, reader).await;
                stderr = text.lock().unwrap().clone();
            }
            None => {
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .await
                    .unwrap();
            }
        }
        (status.code(), stderr)
    }

    /// Reads stderr in the background from now on (so the pipe never fills up) and
    /// waits until `check` holds for all of it read so far; panics after [`WAIT`].
    pub async fn wait_for_stderr(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        if self.stderr_log.is_none() {
            let mut pipe = self.child.stderr.take().unwrap();
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            let reader = tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            self.stderr_log = Some((text, reader));
        }
        let text = self.stderr_log.as_ref().unwrap().0.clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(&text.lock().unwrap()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}; stderr so far:\n{}",
                text.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the binary to completion in `sandbox` with `args` and `env` (bounded by
/// [`WAIT`]); returns the exit code, stdout, stderr and how long it ran.
pub fn run_in(
    sandbox: &Sandbox,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String, Duration) {
    let started = std::time::Instant::now();
    let mut child = sandbox
        .command()
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + WAIT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

// ===== mock backends =====

/// One request as a backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a backend answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, extra headers and body.
    With(StatusCode, Vec<(&'static str, &'static str)>, Bytes),
    /// Wait, then answer.
    After(Duration, Box<Reply>),
    /// Never answer (keeps the connection open).
    Hang,
}

impl Reply {
    pub fn ok(body: &'static str) -> Reply {
        Reply::With(StatusCode::OK, vec![], Bytes::from_static(body.as_bytes()))
    }

    pub fn status(status: u16) -> Reply {
        Reply::With(StatusCode::from_u16(status).unwrap(), vec![], Bytes::new())
    }
}

type Behavior = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A backend on 127.0.0.1:0 that records every request into a channel.
pub struct MockBackend {
    pub addr: SocketAddr,
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    behavior: Arc<Mutex<Behavior>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub total: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl MockBackend {
    /// A backend that answers every request with `reply`.
    pub async fn start(reply: Reply) -> MockBackend {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), reply).await
    }

    pub async fn start_on(listener: TcpListener, reply: Reply) -> MockBackend {
        Self::start_with(listener, reply, None).await
    }

    /// A backend speaking HTTPS with `tls`.
    pub async fn start_tls(reply: Reply, tls: tokio_rustls::TlsAcceptor) -> MockBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_with(listener, reply, Some(tls)).await
    }

    async fn start_with(
        listener: TcpListener,
        reply: Reply,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockBackend {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let behavior: Arc<Mutex<Behavior>> =
            Arc::new(Mutex::new(Arc::new(move |_: &Recorded| reply.clone())));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let state = (
            tx,
            behavior.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            total.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, behavior, in_flight, max_in_flight, total) = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, behavior) = (tx.clone(), behavior.clone());
                        let (in_flight, max_in_flight, total) =
                            (in_flight.clone(), max_in_flight.clone(), total.clone());
                        async move {
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            max_in_flight.fetch_max(now, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes());
                            let recorded = Recorded {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            };
                            let reply = (behavior.lock().unwrap().clone())(&recorded);
                            total.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(recorded);
                            let response = answer(reply).await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        MockBackend {
            addr,
            received: tokio::sync::Mutex::new(rx),
            behavior,
            in_flight,
            max_in_flight,
            total,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Answers each request with what `f` makes of it, from now on.
    pub fn set_behavior(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.behavior.lock().unwrap() = Arc::new(f);
    }

    /// Changes what the backend answers from now on.
    pub fn set_reply(&self, reply: Reply) {
        *self.behavior.lock().unwrap() = Arc::new(move |_| reply.clone());
    }

    /// The next recorded request; panics after [`WAIT`].
    pub async fn next(&self) -> Recorded {
        tokio::time::timeout(WAIT, self.received.lock().await.recv())
            .await
            .expect("backend received a request in time")
            .expect("backend channel open")
    }

    /// Asserts that nothing more arrives within `quiet`.
    pub async fn assert_nothing_within(&self, quiet: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(quiet, self.received.lock().await.recv()).await {
            panic!("unexpected request at backend: {} {}", r.method, r.uri);
        }
    }

    pub fn count(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(reply: Reply) -> Response<Full<Bytes>> {
    let mut reply = reply;
    loop {
        match reply {
            Reply::With(status, headers, body) => {
                let mut response = Response::new(Full::new(body));
                *response.status_mut() = status;
                for (k, v) in headers {
                    response
                        .headers_mut()
                        .append(HeaderName::from_static(k), HeaderValue::from_static(v));
                }
                return response;
            }
            Reply::After(delay, next) => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
            Reply::Hang => std::future::pending::<()>().await,
        }
    }
}

/// An address where nothing listens (connections are refused).
///
/// The port stays bound, without listening, until the test process ends: a port that
/// was merely freed can be handed to the next `bind(0)` of a test running alongside,
/// once to the proxy under test itself, which then forwarded to itself until its
/// headers grew too large (431 instead of 502). The socket has `SO_REUSEADDR`, so a
/// test may still listen on the address later, as `TcpListener::bind` sets it too.
pub async fn closed_addr() -> SocketAddr {
    static RESERVED: std::sync::Mutex<Vec<tokio::net::TcpSocket>> =
        std::sync::Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    RESERVED.lock().unwrap().push(socket);
    addr
}

// ===== client =====

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request through a fresh HTTP/1.1 client and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::new(Full::new(body.into()));
    *req.method_mut() = method;
    *req.uri_mut() = url.parse().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let resp = tokio::time::timeout(WAIT, client().request(req))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body reads")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Answer {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// Sends raw bytes to `addr` and reads until the server closes (bounded by `WAIT`).
pub async fn raw(addr: impl tokio::net::ToSocketAddrs, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until `needle` has arrived; panics on close or after [`WAIT`].
pub async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read succeeds");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `s` to its end: the peer must close it within `within`.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, within: Duration, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut rest))
        .await
        .expect(what)
        .expect("read succeeds");
}

/// A server on 127.0.0.1:0 that hands every accepted connection to `script`.
pub async fn raw_server<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream));
        }
    });
    addr
}

/// Reads a request head (up to the blank line); returns it, with whatever body bytes
/// came along. Empty when the peer closed first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// What a request sent on a spawned task got back, within [`WAIT`].
pub async fn answer_of<T, E: std::fmt::Debug>(pending: tokio::task::JoinHandle<Result<T, E>>) -> T {
    tokio::time::timeout(WAIT, pending)
        .await
        .expect("an answer within WAIT")
        .expect("the request task ended")
        .expect("the request got an answer")
}

/// Polls `check` until it returns true; panics after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
pub mod external;
pub mod grpc;

// ===== the common set-up: a main backend, the proxy in front, recording mirrors =====

impl TestProxy {
    /// A recording main backend answering `reply`, and a proxy started with
    /// `--main <that backend>` followed by `args`.
    pub async fn in_front_of(reply: Reply, args: &[&str]) -> (MockBackend, TestProxy) {
        let main = MockBackend::start(reply).await;
        let main_url = main.url();
        let mut all = vec!["--main", main_url.as_str()];
        all.extend_from_slice(args);
        let proxy = TestProxy::start(&all).await;
        (main, proxy)
    }

    /// [`TestProxy::in_front_of`], plus one recording mirror backend per reply in
    /// `mirrors`, added (in that order) through the admin API.
    pub async fn with_mirrors<const N: usize>(
        reply: Reply,
        mirrors: [Reply; N],
        args: &[&str],
    ) -> (MockBackend, [MockBackend; N], TestProxy) {
        let (main, proxy) = TestProxy::in_front_of(reply, args).await;
        let mut started = Vec::with_capacity(N);
        for reply in mirrors {
            started.push(MockBackend::start(reply).await);
        }
        let urls: Vec<String> = started.iter().map(MockBackend::url).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        proxy.add_mirrors(&urls).await;
        let Ok(mirrors) = <[MockBackend; N]>::try_from(started) else {
            unreachable!("one backend per reply")
        };
        (main, mirrors, proxy)
    }
}
