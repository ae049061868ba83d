//! NATS JetStream mirrors and `replay nats://…` (docs/fleet.md), against a real
//! `nats-server -js` on a free loopback port with a temporary store.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::support::external::require;
use crate::support::{Binary, MockBackend, Reply, Sandbox, TestProxy, WAIT, eventually, get, send};

/// A `nats-server -js` on 127.0.0.1, killed on drop.
struct NatsServer {
    program: std::path::PathBuf,
    child: tokio::process::Child,
    port: u16,
    store: Sandbox,
    /// Extra flags, kept for a restart.
    args: Vec<String>,
}

impl NatsServer {
    /// Starts a server, or `None` (after one note line) when nats-server is missing.
    async fn start(test: &str, args: &[&str]) -> Option<NatsServer> {
        let program = require(test, &["nats-server"], "apt-get install nats-server")?.remove(0);
        let store = Sandbox::new();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, port) = Self::spawn(&program, &store, &args, None).await;
        Some(NatsServer {
            program,
            child,
            port,
            store,
            args,
        })
    }

    /// Runs nats-server (port `-1`: one the system picks) and reads its port from its
    /// log once it is ready.
    async fn spawn(
        program: &std::path::Path,
        store: &Sandbox,
        args: &[String],
        port: Option<u16>,
    ) -> (tokio::process::Child, u16) {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = tokio::process::Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(store.work())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut found = None;
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    found = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                }
                if line.contains("Server is ready") {
                    return;
                }
            }
            panic!("nats-server ended before it was ready");
        };
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("nats-server ready in time");
        // Keep draining its log so its pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, found.expect("nats-server printed its port"))
    }

    fn url(&self, subject: &str) -> String {
        format!("nats://127.0.0.1:{}/{subject}", self.port)
    }

    async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Starts it again on the same port with the same store.
    async fn restart(&mut self) {
        let (child, _) = Self::spawn(&self.program, &self.store, &self.args, Some(self.port)).await;
        self.child = child;
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let flag = |name: &str| {
            let at = self.args.iter().position(|a| a == name)?;
            self.args.get(at + 1).cloned()
        };
        let mut options = async_nats::ConnectOptions::new();
        if let (Some(user), Some(pass)) = (flag("--user"), flag("--pass")) {
            options = options.user_and_password(user, pass);
        }
        let client = options
            .connect(format!("127.0.0.1:{}", self.port))
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    }

    /// Creates `stream` holding `subject`.
    async fn create_stream(&self, stream: &str, subject: &str) -> async_nats::jetstream::Context {
        let js = self.jetstream().await;
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    }

    async fn messages_in(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// One request record in the recording format, as a NATS mirror publishes it.
fn record(id: &str, path: &str) -> Bytes {
    Bytes::from(format!(
        "1 {id} 1700000000000000000 -1\nGET {path} HTTP/1.1\r\nHost: prod\r\n\r\n\n\u{1F435}\u{1F648}\u{1F649}\n"
    ))
}

/// Publishes `n` records to `subject`, paths `/i/0` … with message ids `id-0` ….
async fn publish_records(js: &async_nats::jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(record(&format!("{i:024x}"), &format!("/i/{i}")))
            .message_id(format!("id-{i}"));
        js.send_publish(subject.to_owned(), message)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Waits until the mirror listed as `listed` has `n` copies acknowledged.
async fn acknowledged(proxy: &TestProxy, listed: &str, n: u64) {
    eventually(&format!("{n} copies acknowledged"), || async {
        proxy
            .mirror_json(listed)
            .await
            .is_some_and(|m| m["succeeded"] == n)
    })
    .await;
}

/// A server whose stream holds `n` records on `subject`, and a target answering each
/// after `delay_ms`; `None` when nats-server is missing.
async fn with_records(
    test: &str,
    subject: &str,
    n: usize,
    delay_ms: u64,
) -> Option<(NatsServer, MockBackend)> {
    let nats = NatsServer::start(test, &[]).await?;
    let js = nats
        .create_stream(&subject.replace('.', "_"), subject)
        .await;
    publish_records(&js, subject, n).await;
    let answer = Reply::After(Duration::from_millis(delay_ms), Box::new(Reply::ok("")));
    Some((nats, MockBackend::start(answer).await))
}

/// `trafficmirror replay …` running in the background.
struct Replayer {
    child: tokio::process::Child,
    _sandbox: Sandbox,
}

impl Replayer {
    /// `replay SOURCE --durable DURABLE --to TO --speed 0 EXTRA…`.
    fn start(source: &str, durable: &str, to: &str, extra: &[&str]) -> Replayer {
        let mut args = vec![source, "--durable", durable, "--to", to, "--speed", "0"];
        args.extend_from_slice(extra);
        Self::start_args(&args)
    }

    fn start_args(args: &[&str]) -> Replayer {
        let sandbox = Sandbox::new();
        let child = tokio::process::Command::from(sandbox.command())
            .arg("replay")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("replay starts");
        Replayer {
            child,
            _sandbox: sandbox,
        }
    }

    /// Waits (bounded) for the exit: code, stdout, stderr.
    async fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("replay ends in time")
            .unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        (status.code(), out, err)
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// `sent N` from a replay's summary line.
fn sent(stdout: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("replay: sent"))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    line["replay: sent ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Counts each path the backend received (everything it received so far).
async fn drain(backend: &MockBackend, counts: &mut HashMap<String, usize>) {
    while counts.values().sum::<usize>() < backend.count() {
        let r = backend.next().await;
        *counts.entry(r.uri.path().to_owned()).or_default() += 1;
    }
}

#[tokio::test]
async fn copies_published_by_the_proxy_are_replayed_with_their_fields() {
    let Some(nats) = NatsServer::start("copies_published_by_the_proxy_are_replayed", &[]).await
    else {
        return;
    };
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!("{} stream=TM set_header=X-Shadow:1", nats.url("tm.copies"));
    let proxy = TestProxy::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    let a = send(
        Method::GET,
        &proxy.url("/a?x=1"),
        &[("x-user", "7")],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let b = send(
        Method::POST,
        &proxy.url("/b"),
        &[("content-type", "text/plain")],
        Bytes::from_static(b"hello body"),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK);
    let listed = nats.url("tm.copies");
    acknowledged(&proxy, &listed, 2).await;
    let status = proxy.mirror_json(&listed).await.unwrap();
    assert_eq!(status["protocol"], "nats");
    assert_eq!(nats.messages_in("TM").await, 2);

    let target = MockBackend::start(Reply::ok("replayed")).await;
    let idle = ["--exit-when-idle", "300ms"];
    let replay = Replayer::start(&nats.url("tm.copies"), "r1", &target.url(), &idle);
    let (code, out, err) = replay.finish(WAIT).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("replay: sent 2, answered 2 (2xx 2"), "{out}");
    let first = target.next().await;
    let second = target.next().await;
    let (get_, post) = if first.method == Method::GET {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(get_.uri, "/a?x=1");
    assert_eq!(get_.header("x-user"), Some("7"));
    assert_eq!(get_.header("x-shadow"), Some("1"));
    assert_eq!(post.method, Method::POST);
    assert_eq!(post.uri, "/b");
    assert_eq!(post.body, Bytes::from_static(b"hello body"));
    assert_eq!(post.header("content-type"), Some("text/plain"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_copy_published_again_with_its_message_id_is_stored_once() {
    let Some(nats) = NatsServer::start("a_copy_published_again_is_stored_once", &[]).await else {
        return;
    };
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!("{} stream=DEDUP", nats.url("tm.dedup"));
    let proxy = TestProxy::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    get(&proxy.url("/once")).await;
    let listed = nats.url("tm.dedup");
    acknowledged(&proxy, &listed, 1).await;
    let js = nats.jetstream().await;
    let stream = js.get_stream("DEDUP").await.unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    let id = stored
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .expect("a Nats-Msg-Id header")
        .to_string();
    // The record's own id: the second field of its meta line.
    let payload = String::from_utf8_lossy(&stored.payload).to_string();
    assert_eq!(payload.split(' ').nth(1), Some(id.as_str()), "{payload}");
    assert!(id.len() >= 24);
    // The same copy published again (as a retry would) is not stored twice.
    let again = async_nats::jetstream::message::PublishMessage::build()
        .payload(stored.payload.clone())
        .message_id(&id);
    let ack = js
        .send_publish("tm.dedup", again)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate);
    assert_eq!(nats.messages_in("DEDUP").await, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn two_replayers_on_one_durable_share_the_stream_and_lose_nothing() {
    let Some((nats, target)) =
        with_records("two_replayers_share_the_stream", "tm.share", 1000, 2).await
    else {
        return;
    };
    let (source, to) = (nats.url("tm.share"), target.url());
    let extra = ["--concurrency", "8", "--exit-when-idle", "1s"];
    let one = Replayer::start(&source, "both", &to, &extra);
    let two = Replayer::start(&source, "both", &to, &extra);
    let (code1, out1, err1) = one.finish(Duration::from_secs(60)).await;
    let (code2, out2, err2) = two.finish(Duration::from_secs(60)).await;
    assert_eq!(code1, Some(0), "{out1}{err1}");
    assert_eq!(code2, Some(0), "{out2}{err2}");
    let (sent1, sent2) = (sent(&out1), sent(&out2));
    assert!(sent1 + sent2 >= 1000, "{out1}{out2}");
    assert!(
        sent1 > 0 && sent2 > 0,
        "both replayers took a share: {sent1} and {sent2}"
    );
    let mut counts = HashMap::new();
    drain(&target, &mut counts).await;
    for i in 0..1000 {
        assert!(
            counts.contains_key(&format!("/i/{i}")),
            "/i/{i} never replayed"
        );
    }
}

#[tokio::test]
async fn a_killed_replayer_loses_nothing_its_successor_gets_the_unacknowledged() {
    let Some((nats, target)) =
        with_records("a_killed_replayer_loses_nothing", "tm.kill", 200, 10).await
    else {
        return;
    };
    let (source, to) = (nats.url("tm.kill"), target.url());
    let extra = |idle| {
        [
            "--concurrency",
            "4",
            "--ack-wait",
            "1s",
            "--exit-when-idle",
            idle,
        ]
    };
    let first = Replayer::start(&source, "d", &to, &extra("30s"));
    eventually("the first replayer got going", || async {
        target.count() >= 50
    })
    .await;
    first.signal("KILL");
    let _ = first.finish(WAIT).await;
    let answered_before = target.count();
    assert!(
        answered_before < 200,
        "killed mid-stream ({answered_before} answered)"
    );
    let second = Replayer::start(&source, "d", &to, &extra("2s"));
    let (code, out, err) = second.finish(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut counts = HashMap::new();
    drain(&target, &mut counts).await;
    for i in 0..200 {
        assert!(counts.contains_key(&format!("/i/{i}")), "/i/{i} lost");
    }
    // Only what was in flight at the kill (answered, not yet acknowledged) comes twice.
    let twice: usize = counts.values().map(|n| n - 1).sum();
    assert!(twice <= 4, "{twice} replayed twice (at most --concurrency)");
    assert_eq!(sent(&out), 200 - answered_before + twice, "{out}");
}

#[tokio::test]
async fn the_nats_server_going_away_fails_or_spills_copies_and_main_is_unaffected() {
    let Some(mut nats) = NatsServer::start("the_nats_server_going_away", &[]).await else {
        return;
    };
    let main = MockBackend::start(Reply::ok("main")).await;
    let spill_dir = Sandbox::new();
    let spill = spill_dir.work().join("spill.gor");
    let mirror = format!(
        "{} stream=DOWN spill=file://{}",
        nats.url("tm.down"),
        spill.display()
    );
    let proxy = TestProxy::start(&[
        "--main",
        &main.url(),
        "--mirror",
        &mirror,
        "--retry-after",
        "200ms",
    ])
    .await;
    let listed = nats.url("tm.down");
    get(&proxy.url("/up")).await;
    acknowledged(&proxy, &listed, 1).await;
    nats.stop().await;
    for i in 0..20 {
        let answer = get(&proxy.url(&format!("/down/{i}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "main");
    }
    eventually("copies failed and spilled", || async {
        proxy.mirror_json(&listed).await.is_some_and(|m| {
            m["failed"].as_u64() >= Some(1) && m["spilled"].as_u64() >= Some(1) && m["queued"] == 0
        })
    })
    .await;
    let status = proxy.mirror_json(&listed).await.unwrap();
    assert_eq!(status["state"], "failing", "{status}");
    let spilled = std::fs::read(&spill).unwrap();
    assert!(String::from_utf8_lossy(&spilled).contains("GET /down/"));
    nats.restart().await;
    let mut i = 0;
    eventually("publishing resumes after the restart", || {
        i += 1;
        let url = proxy.url(&format!("/again/{i}"));
        let proxy = &proxy;
        let listed = &listed;
        async move {
            assert_eq!(get(&url).await.status, StatusCode::OK);
            proxy
                .mirror_json(listed)
                .await
                .is_some_and(|m| m["succeeded"].as_u64() >= Some(2))
        }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn nats_credentials_are_never_shown() {
    let Some(nats) = NatsServer::start(
        "nats_credentials_are_never_shown",
        &["--user", "copier", "--pass", "s3cret-pw"],
    )
    .await
    else {
        return;
    };
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!(
        "nats://copier:s3cret-pw@127.0.0.1:{}/tm.auth stream=AUTH",
        nats.port
    );
    let mut binary = Binary::start(&["--main", &main.url(), "--mirror", &mirror, "-vv"]).await;
    assert!(get(&binary.url("/x")).await.status.is_success());
    let shown = format!("nats://copier:***@127.0.0.1:{}/tm.auth", nats.port);
    eventually("the copy acknowledged with the credentials", || async {
        let listing: serde_json::Value =
            serde_json::from_str(&get(&binary.url("/targets?format=json")).await.text()).unwrap();
        listing
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["url"] == shown.as_str() && m["succeeded"] == 1)
    })
    .await;
    for path in [
        "/targets",
        "/targets?format=json",
        "/targets/status",
        "/targets/metrics",
    ] {
        let text = get(&binary.url(path)).await.text();
        assert!(
            !text.contains("s3cret"),
            "{path} shows the password: {text}"
        );
        if path != "/targets/status" {
            assert!(text.contains(&shown), "{path} names the mirror: {text}");
        }
    }
    binary
        .wait_for_stderr("a log line naming the mirror", |s| s.contains("copier"))
        .await;
    let stderr = binary.terminate_within(WAIT).await;
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(nats.messages_in("AUTH").await, 1);
}

#[tokio::test]
async fn a_copy_over_the_servers_max_payload_is_skipped() {
    let config = Sandbox::new();
    let path = config.write("work/nats.conf", "max_payload: 4096\n");
    let path = path.display().to_string();
    let Some(nats) = NatsServer::start("a_copy_over_max_payload_is_skipped", &["-c", &path]).await
    else {
        return;
    };
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!("{} stream=BIG", nats.url("tm.big"));
    let proxy = TestProxy::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    let listed = nats.url("tm.big");
    get(&proxy.url("/small")).await;
    acknowledged(&proxy, &listed, 1).await;
    let big = Bytes::from(vec![b'x'; 8192]);
    let answer = send(Method::POST, &proxy.url("/big"), &[], big).await;
    assert_eq!(answer.status, StatusCode::OK);
    eventually("the large copy skipped", || async {
        proxy
            .mirror_json(&listed)
            .await
            .is_some_and(|m| m["skipped"] == 1 && m["queued"] == 0)
    })
    .await;
    let status = proxy.mirror_json(&listed).await.unwrap();
    assert_eq!(status["failed"], 0);
    assert_eq!(status["state"], "alive", "{status}");
    assert_eq!(nats.messages_in("BIG").await, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_replayer_stops_within_a_second_of_sigterm_and_exits_when_idle() {
    let Some(nats) = NatsServer::start("a_replayer_stops_within_a_second", &[]).await else {
        return;
    };
    let js = nats.create_stream("TERM", "tm.term").await;
    publish_records(&js, "tm.term", 20).await;
    let target = MockBackend::start(Reply::Hang).await;
    let source = nats.url("tm.term");
    let replay = Replayer::start(&source, "t", &target.url(), &["--ack-wait", "1s"]);
    target.next().await;
    replay.signal("TERM");
    let started = std::time::Instant::now();
    let (code, out, err) = replay.finish(WAIT).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "stopped after {took:?}");
    assert_eq!(code, Some(3), "nothing was answered: {out}{err}");
    assert!(out.contains("replay: sent"), "{out}");

    // Nothing was acknowledged: a replayer with the same durable gets all 20, and ends
    // once idle.
    let target = MockBackend::start(Reply::ok("")).await;
    let idle = Replayer::start(&source, "t", &target.url(), &["--exit-when-idle", "2s"]);
    let (code, out, err) = idle.finish(Duration::from_secs(40)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut counts = HashMap::new();
    drain(&target, &mut counts).await;
    assert_eq!(counts.len(), 20, "{out}");
}

#[tokio::test]
async fn a_nats_replay_needs_a_durable_and_a_reachable_server() {
    let closed = crate::support::closed_addr().await;
    let source = format!("nats://{closed}/tm.x");
    let to = "http://127.0.0.1:9";
    let (code, _, err) = Replayer::start_args(&[&source, "--to", to])
        .finish(WAIT)
        .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--durable"), "{err}");
    let looped = Replayer::start(&source, "d", to, &["--loop"]);
    let (code, _, err) = looped.finish(WAIT).await;
    assert_eq!(code, Some(2), "{err}");
    let secret = format!("nats://u:s3cret@{closed}/tm.x");
    let (code, _, err) = Replayer::start(&secret, "d", to, &[]).finish(WAIT).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn a_message_the_target_could_not_take_comes_back_once_it_is_up() {
    let Some((nats, _)) =
        with_records("a_message_comes_back_once_the_target_is_up", "tm.nak", 3, 0).await
    else {
        return;
    };
    // Nothing listens there yet: every send is refused and its message refused too.
    let addr = crate::support::closed_addr().await;
    let to = format!("http://{addr}");
    let replay = Replayer::start(&nats.url("tm.nak"), "n", &to, &["--exit-when-idle", "3s"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let target = MockBackend::start_on(listener, Reply::ok("")).await;
    let (code, out, err) = replay.finish(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut counts = HashMap::new();
    drain(&target, &mut counts).await;
    assert_eq!(counts.len(), 3, "{out}");
    assert!(out.contains("answered 3"), "{out}");
    assert!(
        !out.contains("failed 0,"),
        "some sends were refused first: {out}"
    );
}

/// A private CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// (CA, certificate, key).
fn tls_files(dir: &std::path::Path) -> [String; 3] {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    })
}

#[tokio::test]
async fn a_tls_mirror_publishes_over_tls_and_trusts_only_its_ca() {
    let pki = Sandbox::new();
    let [ca, cert, key] = tls_files(&pki.work());
    let tls = ["--tls", "--tlscert", &cert, "--tlskey", &key];
    let Some(nats) = NatsServer::start("a_tls_mirror_publishes_over_tls", &tls).await else {
        return;
    };
    let listed = format!("tls://127.0.0.1:{}/tm.tls", nats.port);
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = format!("{listed} stream=TLS");
    // Trusting the server's CA: every copy is stored.
    let proxy =
        TestProxy::start(&["--main", &main.url(), "--mirror", &mirror, "--ca-cert", &ca]).await;
    for _ in 0..3 {
        let answer = get(&proxy.url("/t")).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    acknowledged(&proxy, &listed, 3).await;
    proxy.stop().await;
    // A replayer reads them back over TLS trusting the same CA with `--ca-cert`, and
    // cannot connect without it.
    let target = MockBackend::start(Reply::ok("")).await;
    let untrusted = Replayer::start(&listed, "r", &target.url(), &["--exit-when-idle", "1s"]);
    let (code, _, err) = untrusted.finish(WAIT).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    let trusted = ["--exit-when-idle", "1s", "--ca-cert", &ca];
    let replay = Replayer::start(&listed, "r", &target.url(), &trusted);
    let (code, out, err) = replay.finish(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let mut counts = HashMap::new();
    drain(&target, &mut counts).await;
    assert_eq!(counts.get("/t"), Some(&3), "{out}");
    // Without it, the server's certificate is refused: copies fail, main is untouched.
    let proxy = TestProxy::start(&["--main", &main.url(), "--mirror", &mirror]).await;
    let answer = get(&proxy.url("/t")).await;
    assert_eq!(answer.status, StatusCode::OK);
    eventually("the copy failed", || async {
        proxy
            .mirror_json(&listed)
            .await
            .is_some_and(|m| m["failed"] == 1 && m["succeeded"] == 0)
    })
    .await;
    proxy.stop().await;
}
