//! Per-mirror options end to end: selection (share, sticky share, rate, method, path)
//! and its `filtered` counter, header rewrites, replacing options on `PUT`, ordered
//! replay, and the sources of mirrors (`--mirror` lines, the state file, the targets
//! file).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::support::*;

// ===== helpers =====

/// The text listing.
async fn text_listing(proxy: &TestProxy) -> String {
    get(&proxy.admin_url("")).await.text()
}

fn counter(entry: &Value, name: &str) -> u64 {
    entry[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {entry}"))
}

/// Waits until `url` has accounted for `total` requests (`sent + filtered`) and every
/// copy sent has finished; returns its listing entry.
async fn settled(proxy: &TestProxy, url: &str, total: u64) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(entry) = proxy.mirror_json(url).await {
            let sent = counter(&entry, "sent");
            let done = counter(&entry, "succeeded") + counter(&entry, "failed");
            if sent + counter(&entry, "filtered") == total && done == sent {
                return entry;
            }
            last = entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not account for {total} requests: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes every request `mock` has recorded so far (call once it is settled).
async fn drain(mock: &MockBackend) -> Vec<Recorded> {
    let mut out = Vec::new();
    for _ in 0..mock.count() {
        out.push(mock.next().await);
    }
    out
}

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tm-options-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names of the entries in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` with `content` at once (written aside, then renamed), so a poll
/// never reads half of it.
fn replace_file(path: &Path, content: &str) {
    let aside = path.with_extension("writing");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

// ===== selection =====

#[tokio::test]
async fn percent_50_mirrors_about_half_and_counts_the_rest_as_filtered() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!("url={}&percent=50", mirror.url()))
        .await;
    let http = client();
    for i in 0..400 {
        let req = Request::get(proxy.url(&format!("/r/{i}")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, http.request(req))
            .await
            .expect("answer in time")
            .expect("request succeeds");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    let entry = settled(&proxy, &mirror.url(), 400).await;
    let sent = counter(&entry, "sent");
    // Binomial(400, 0.5): 120..=280 is far beyond 10 standard deviations.
    assert!((120..=280).contains(&sent), "sent {sent}: {entry}");
    assert_eq!(counter(&entry, "filtered"), 400 - sent);
    assert_eq!(mirror.count() as u64, sent);
    assert_eq!(entry["options"]["percent"], 50.0);
    assert_eq!(main.count(), 400);

    let before = proxy.mirrors_json().await;
    for bad in ["0", "101", "-5", "abc", "NaN", "inf"] {
        let resp = proxy
            .put(&format!("url={}&percent={bad}", mirror.url()))
            .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "percent={bad}");
        assert!(
            resp.text().contains("percent") && resp.text().contains(bad),
            "percent={bad}: {}",
            resp.text()
        );
    }
    assert_eq!(
        proxy.mirrors_json().await,
        before,
        "a refused PUT changed nothing"
    );
    proxy.stop().await;
}

/// Users whose decision at 50 % is published with the sticky hash (docs and the unit
/// tests of the selection module): three mirrored, one not.
const PUBLISHED_AT_50: [(&str, bool); 4] = [
    ("foobar", true),
    ("user-42", true),
    ("42", true),
    ("a", false),
];

/// Sends 5 requests for each user and returns how many of each the mirror received.
async fn sticky_run(users: &[String]) -> BTreeMap<String, usize> {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!(
            "url={}&sample_by=header:X-User&percent=50",
            mirror.url()
        ))
        .await;
    for round in 0..5 {
        for user in users {
            let path = format!("/u/{round}");
            let resp = send(Method::GET, &proxy.url(&path), &[("x-user", user)], "").await;
            assert_eq!(resp.status, StatusCode::OK);
        }
    }
    let total = 5 * users.len() as u64;
    settled(&proxy, &mirror.url(), total).await;
    let mut seen: BTreeMap<String, usize> = users.iter().map(|u| (u.clone(), 0)).collect();
    for got in drain(&mirror).await {
        let user = got.header("x-user").expect("copies keep X-User").to_owned();
        *seen.get_mut(&user).expect("a user we sent") += 1;
    }
    proxy.stop().await;
    seen
}

#[tokio::test]
async fn sticky_share_decides_per_user_the_same_at_every_instance() {
    let mut users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    users.extend(PUBLISHED_AT_50.iter().map(|(u, _)| (*u).to_owned()));
    let first = sticky_run(&users).await;
    let second = sticky_run(&users).await;
    for (user, n) in &first {
        assert!(*n == 0 || *n == 5, "{user}: {n} of 5 mirrored");
    }
    assert_eq!(first, second, "a second instance decides the same");
    for (user, mirrored) in PUBLISHED_AT_50 {
        assert_eq!(
            first[user] == 5,
            mirrored,
            "{user} against the published vector"
        );
    }
    let mirrored = first.values().filter(|n| **n == 5).count();
    assert!(
        mirrored > 0 && mirrored < users.len(),
        "some users in, some out"
    );
}

#[tokio::test]
async fn rate_limits_copies_and_filters_the_rest() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy.put_ok(&format!("url={}&rate=5", mirror.url())).await;
    let started = Instant::now();
    for i in 0..50 {
        let resp = get(&proxy.url(&format!("/r/{i}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    let took = started.elapsed();
    let entry = settled(&proxy, &mirror.url(), 50).await;
    let sent = counter(&entry, "sent");
    // A burst of 5, plus 5 per second of sending.
    let allowed = 5 + (took.as_secs_f64() * 5.0).ceil() as u64;
    assert!(
        sent >= 5 && sent <= allowed.min(10),
        "sent {sent} in {took:?}: {entry}"
    );
    assert_eq!(counter(&entry, "filtered"), 50 - sent);
    assert_eq!(mirror.count() as u64, sent);
    proxy.stop().await;
}

#[tokio::test]
async fn method_and_path_filters() {
    let gets = MockBackend::start(Reply::ok("gets")).await;
    let api = MockBackend::start(Reply::ok("api")).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!("url={}&method=GET", gets.url()))
        .await;
    proxy.put_ok(&format!("url={}&path=/api", api.url())).await;

    let resp = send(Method::POST, &proxy.url("/api/x"), &[], "body").await;
    assert_eq!(resp.status, StatusCode::OK);
    let got = api.next().await;
    assert_eq!((got.method, got.uri.path()), (Method::POST, "/api/x"));
    let resp = get(&proxy.url("/other")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let got = gets.next().await;
    assert_eq!((got.method, got.uri.path()), (Method::GET, "/other"));

    let entry = settled(&proxy, &gets.url(), 2).await;
    assert_eq!(
        (counter(&entry, "sent"), counter(&entry, "filtered")),
        (1, 1)
    );
    let entry = settled(&proxy, &api.url(), 2).await;
    assert_eq!(
        (counter(&entry, "sent"), counter(&entry, "filtered")),
        (1, 1)
    );
    gets.assert_nothing_within(Duration::from_millis(100)).await;
    api.assert_nothing_within(Duration::from_millis(100)).await;
    assert_eq!(main.count(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn header_rewrites_apply_to_that_mirror_only() {
    let shadow = MockBackend::start(Reply::ok("shadow")).await;
    let plain = MockBackend::start(Reply::ok("plain")).await;
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!(
            "url={}&set_header=X-Shadow:1&remove_header=Authorization&host=shadow.example",
            shadow.url()
        ))
        .await;
    proxy.put_ok(&format!("url={}", plain.url())).await;
    let sent = [("authorization", "Bearer t"), ("x-shadow", "0")];
    let resp = send(Method::GET, &proxy.url("/h"), &sent, "").await;
    assert_eq!(resp.body, "main");

    let got = shadow.next().await;
    let shadows: Vec<_> = got.headers.get_all("x-shadow").iter().collect();
    assert_eq!(shadows, ["1"], "set_header replaces the request's value");
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("host"), Some("shadow.example"));

    for (name, other) in [("main", &main), ("plain mirror", &plain)] {
        let got = other.next().await;
        assert_eq!(got.header("x-shadow"), Some("0"), "{name}");
        assert_eq!(got.header("authorization"), Some("Bearer t"), "{name}");
        assert_eq!(
            got.header("host"),
            Some(other.addr.to_string().as_str()),
            "{name}"
        );
    }
    proxy.stop().await;
}

// ===== the admin endpoint and options =====

#[tokio::test]
async fn put_with_options_replaces_them_and_keeps_counters() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy.put_ok(&format!("url={}", mirror.url())).await;
    for _ in 0..3 {
        get(&proxy.url("/c")).await;
    }
    let entry = settled(&proxy, &mirror.url(), 3).await;
    assert_eq!(counter(&entry, "sent"), 3);
    assert_eq!(entry["source"], "admin");
    assert_eq!(entry["options"]["percent"], 100.0);
    assert_eq!(entry["options"]["method"], serde_json::json!([]));

    proxy
        .put_ok(&format!(
            "url={}&percent=25&method=GET&method=HEAD",
            mirror.url()
        ))
        .await;
    let entry = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(counter(&entry, "sent"), 3, "counters kept: {entry}");
    assert_eq!(entry["options"]["percent"], 25.0);
    assert_eq!(
        entry["options"]["method"],
        serde_json::json!(["GET", "HEAD"])
    );

    // Without options: nothing changes.
    proxy.put_ok(&format!("url={}", mirror.url())).await;
    let again = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(again, entry);
    assert_eq!(proxy.mirrors_json().await.len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn every_bad_option_is_refused_by_name_and_nothing_applies() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy.put_ok("url=http://127.0.0.1:1&percent=10").await;
    let before = proxy.mirrors_json().await;
    // (query after url, text the 400 body must contain)
    let cases = [
        ("percent=0", "percent"),
        ("percent=101", "101"),
        ("percent=x", "percent"),
        ("sample_by=ip:addr", "ip:addr"),
        ("sample_by=header:", "sample_by"),
        ("sample_by=cookie:a%20b", "cookie:a b"),
        ("rate=0", "rate"),
        ("rate=-3", "-3"),
        ("rate=fast", "fast"),
        ("method=G%40T", "G@T"),
        ("path=api", "api"),
        ("set_header=NoColon", "NoColon"),
        ("set_header=Content-Length:5", "Content-Length"),
        ("set_header=Host:x", "Host:x"),
        ("remove_header=Transfer-Encoding", "Transfer-Encoding"),
        ("remove_header=bad%20name", "bad name"),
        ("host=a%40b", "a@b"),
        ("host=h:port", "h:port"),
        ("compare=maybe", "maybe"),
        ("compare_header=%20", "compare_header"),
        ("ignore=/a~2", "/a~2"),
        ("ordered=sometimes", "sometimes"),
        ("persistent=2", "persistent"),
        ("percent=5&percent=6", "percent"),
        (
            "set_header=X-A:1&set_header=x-a:2",
            "set_header given more than once for header x-a",
        ),
        ("bogus=1", "bogus"),
    ];
    for (query, named) in cases {
        for url in ["http://127.0.0.1:1", "http://127.0.0.1:2"] {
            // The good option first: the bad one must still refuse the whole request.
            let resp = proxy.put(&format!("url={url}&path=/ok&{query}")).await;
            assert_eq!(
                resp.status,
                StatusCode::BAD_REQUEST,
                "{query}: {}",
                resp.text()
            );
            assert!(
                resp.text().contains(named),
                "{query}: body {:?} does not name {named:?}",
                resp.text()
            );
        }
    }
    assert_eq!(proxy.mirrors_json().await, before, "nothing applied");
    assert_eq!(text_listing(&proxy).await, "http://127.0.0.1:1\n");
    proxy.stop().await;
}

// ===== ordered replay =====

/// One request as the recording server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    arrived: Instant,
    answered: Instant,
    /// Released because the gate opened (not because its wait ran out).
    gated: bool,
}

/// A backend that records when each request arrived and when it answered. Each request
/// waits `delay`, and with a gate of `n` it also waits (bounded) until `n` requests have
/// arrived.
struct Recorder {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start(delay: Duration, gate: Option<usize>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let arrivals = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(Notify::new());
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, arrivals, opened) = (record.clone(), arrivals.clone(), opened.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (record, arrivals, opened) =
                            (record.clone(), arrivals.clone(), opened.clone());
                        async move {
                            let arrived = Instant::now();
                            let path = req.uri().path().to_owned();
                            let _ = req.into_body().collect().await;
                            let mut gated = true;
                            if let Some(n) = gate {
                                let wait = opened.notified();
                                if arrivals.fetch_add(1, Ordering::SeqCst) + 1 >= n {
                                    opened.notify_waiters();
                                } else {
                                    gated = tokio::time::timeout(Duration::from_secs(3), wait)
                                        .await
                                        .is_ok();
                                }
                            }
                            tokio::time::sleep(delay).await;
                            let answered = Instant::now();
                            record.lock().unwrap().push(Seen {
                                path,
                                arrived,
                                answered,
                                gated,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"recorded",
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was seen, once `n` requests have been answered.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        eventually("the recorder answered every request", || async {
            self.seen.lock().unwrap().len() >= n
        })
        .await;
        self.seen.lock().unwrap().clone()
    }

    fn find(seen: &[Seen], path: &str) -> Seen {
        seen.iter()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("{path} not seen: {seen:?}"))
            .clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn ordered_mirror_gets_b_after_answering_a_when_main_answered_a_first() {
    let slow = Recorder::start(Duration::from_millis(200), None).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!("url={}&ordered=true", slow.url()))
        .await;
    let resp = get(&proxy.url("/a")).await;
    assert_eq!(resp.body, "main");
    let resp = get(&proxy.url("/b")).await;
    assert_eq!(resp.body, "main");
    let seen = slow.wait_for(2).await;
    let (a, b) = (Recorder::find(&seen, "/a"), Recorder::find(&seen, "/b"));
    assert!(
        b.arrived >= a.answered,
        "B reached the mirror {:?} before it answered A",
        a.answered - b.arrived
    );
    proxy.stop().await;
}

#[tokio::test]
async fn unordered_mirror_gets_b_while_a_is_in_flight() {
    // The counterpart of the ordered test: without `ordered` B does not wait, so the
    // ordered test above measures the option and not the timing of the mock.
    let slow = Recorder::start(Duration::from_millis(200), None).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy.put_ok(&format!("url={}", slow.url())).await;
    get(&proxy.url("/a")).await;
    get(&proxy.url("/b")).await;
    let seen = slow.wait_for(2).await;
    let (a, b) = (Recorder::find(&seen, "/a"), Recorder::find(&seen, "/b"));
    assert!(b.arrived < a.answered, "{seen:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn ordered_mirror_lets_requests_that_overlapped_at_main_overlap() {
    // Main and the mirror both hold each request until the two have arrived: they
    // overlap at main, and the mirror sees both in flight at once.
    let main = Recorder::start(Duration::ZERO, Some(2)).await;
    let mirror = Recorder::start(Duration::ZERO, Some(2)).await;
    let proxy = TestProxy::start(&["--main", &main.url()]).await;
    proxy
        .put_ok(&format!("url={}&ordered=true", mirror.url()))
        .await;
    let (url_a, url_b) = (proxy.url("/a"), proxy.url("/b"));
    let (a, b) = tokio::join!(get(&url_a), get(&url_b));
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let at_main = main.wait_for(2).await;
    assert!(
        at_main.iter().all(|s| s.gated),
        "overlap at main: {at_main:?}"
    );
    let at_mirror = mirror.wait_for(2).await;
    assert!(
        at_mirror.iter().all(|s| s.gated),
        "both in flight at the mirror at once: {at_mirror:?}"
    );
    proxy.stop().await;
}

// ===== sources: --mirror, the state file, the targets file =====

#[tokio::test]
async fn mirror_flag_takes_a_mirror_line_and_a_comma_list() {
    let a = MockBackend::start(Reply::ok("a")).await;
    let b = MockBackend::start(Reply::ok("b")).await;
    let line = "http://m:1 percent=5 method=GET";
    let list = format!("{},{}", a.url(), b.url());
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("main"), &["--mirror", line, "--mirror", &list]).await;
    let listing = proxy.mirrors_json().await;
    let urls: Vec<&str> = listing.iter().map(|m| m["url"].as_str().unwrap()).collect();
    assert_eq!(urls, ["http://m:1", a.url().as_str(), b.url().as_str()]);
    assert!(listing.iter().all(|m| m["source"] == "flag"), "{listing:?}");
    assert_eq!(listing[0]["options"]["percent"], 5.0);
    assert_eq!(listing[0]["options"]["method"], serde_json::json!(["GET"]));
    assert_eq!(listing[1]["options"]["percent"], 100.0);
    get(&proxy.url("/both")).await;
    assert_eq!(a.next().await.uri.path(), "/both");
    assert_eq!(b.next().await.uri.path(), "/both");
    proxy.stop().await;
}

/// The JSON listing of the running binary.
async fn binary_listing(bin: &Binary) -> Vec<Value> {
    let resp = get(&bin.url("/targets?format=json")).await;
    assert_eq!(resp.status, StatusCode::OK);
    serde_json::from_slice(&resp.body).unwrap()
}

/// `url` and `options` of each listed mirror.
fn urls_and_options(listing: &[Value]) -> Vec<(Value, Value)> {
    listing
        .iter()
        .map(|m| (m["url"].clone(), m["options"].clone()))
        .collect()
}

#[tokio::test]
async fn state_file_survives_a_kill_with_options() {
    let dir = TempDir::new("state");
    let state = dir.path("state.txt");
    let state_arg = state.to_str().unwrap();
    let bin = Binary::start(&["--state-file", state_arg]).await;
    let admin = |query: &str| bin.url(&format!("/targets?{query}"));
    for query in [
        "url=http://127.0.0.1:1&percent=5&method=GET",
        "url=http://127.0.0.1:2",
        "url=http://127.0.0.1:3",
        // Replace options of the first and remove the third.
        "url=http://127.0.0.1:1&percent=7.5&set_header=X-Shadow:1&sample_by=cookie:sid",
    ] {
        let resp = send(Method::PUT, &admin(query), &[], Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::OK, "{query}: {}", resp.text());
    }
    let resp = send(
        Method::DELETE,
        &admin("url=http://127.0.0.1:3"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let before = urls_and_options(&binary_listing(&bin).await);
    assert_eq!(before.len(), 2);
    assert_eq!(before[0].1["percent"], 7.5);
    bin.signal("KILL");
    let (code, _) = bin.wait(WAIT).await;
    assert_eq!(code, None, "killed by the signal");

    let bin = Binary::start(&["--state-file", state_arg]).await;
    let after = binary_listing(&bin).await;
    assert_eq!(urls_and_options(&after), before);
    assert!(after.iter().all(|m| m["source"] == "admin"), "{after:?}");
    assert_eq!(
        dir.names(),
        ["state.txt", "state.txt.lock"],
        "no temporary file left"
    );
    bin.terminate_within(WAIT).await;
}

#[tokio::test]
async fn a_flag_mirror_given_options_stays_a_persistent_flag_mirror_and_is_not_saved() {
    let dir = TempDir::new("flag-options");
    let state = dir.path("state.txt");
    let state_arg = state.to_str().unwrap();
    // Never contacted: no request goes through the proxy.
    let nowhere = closed_addr().await;
    let (flag, other) = (
        format!("http://{nowhere}/flag"),
        format!("http://{nowhere}/admin"),
    );
    let bin = Binary::start(&["--state-file", state_arg, "--mirror", &flag]).await;
    bin.put_ok(&format!("url={flag}&percent=10&url={other}"))
        .await;
    let listing = binary_listing(&bin).await;
    let entry = |url: &str| listing.iter().find(|m| m["url"] == url).unwrap().clone();
    let flagged = entry(&flag);
    assert_eq!(flagged["source"], "flag", "{flagged}");
    assert_eq!(flagged["persistent"], true, "{flagged}");
    assert_eq!(flagged["options"]["percent"], 10.0, "{flagged}");
    assert_eq!(entry(&other)["source"], "admin");
    // Only the admin mirror is saved: the flag defines the other at the next start.
    let saved = std::fs::read_to_string(&state).unwrap();
    let lines: Vec<&str> = saved.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, [format!("{other} percent=10")], "{saved}");
    bin.terminate_within(WAIT).await;
}

#[tokio::test]
async fn a_state_file_entry_for_a_flag_mirror_is_left_out_and_logged() {
    let dir = TempDir::new("flag-and-state");
    let state = dir.path("state.txt");
    // Never contacted: no request goes through the proxy.
    let nowhere = closed_addr().await;
    let (flag, other) = (
        format!("http://{nowhere}/flag"),
        format!("http://{nowhere}/admin"),
    );
    std::fs::write(&state, format!("{flag} percent=5\n{other}\n")).unwrap();
    let state_arg = state.to_str().unwrap();
    let mut bin = Binary::start(&["--state-file", state_arg, "--mirror", &flag]).await;
    bin.wait_for_stderr("the ignored entry is logged", |err| {
        err.contains("state file entry ignored") && err.contains(flag.as_str())
    })
    .await;
    let listing = binary_listing(&bin).await;
    let summary: Vec<(Value, Value, Value)> = listing
        .iter()
        .map(|m| {
            (
                m["url"].clone(),
                m["source"].clone(),
                m["options"]["percent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!(flag), json!("flag"), json!(100.0)),
            (json!(other), json!("admin"), json!(100.0)),
        ]
    );
    bin.terminate_within(WAIT).await;
}

#[test]
fn corrupt_state_file_stops_the_start_naming_it() {
    let dir = TempDir::new("corrupt");
    let state = dir.path("state.txt");
    std::fs::write(
        &state,
        "http://127.0.0.1:1 percent=5\nhttp://127.0.0.1:2 percent=x\n",
    )
    .unwrap();
    let state_arg = state.to_str().unwrap();
    let args = ["--listen", "127.0.0.1:0", "--state-file", state_arg];
    let (code, _, stderr, took) = run_in(&Sandbox::new(), &args, &[]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(state.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "http://127.0.0.1:1 percent=5\nhttp://127.0.0.1:2 percent=x\n",
        "the file is left alone"
    );
    assert_eq!(dir.names(), ["state.txt", "state.txt.lock"]);
}

/// The URLs the state file at `path` lists.
fn saved_urls(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Puts a non-empty directory where the state file is: saving it then fails (the
/// rename over it does), even for root, whom permissions do not stop.
fn block_state_file(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::fs::create_dir(path).unwrap();
    std::fs::write(path.join("keep"), "x").unwrap();
}

/// `state_file_saved` from `<admin>/status`, and the gauge of the scrape.
async fn state_file_saved(proxy: &TestProxy) -> (Value, f64) {
    let resp = get(&proxy.admin_url("/status")).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let status: Value = serde_json::from_slice(&resp.body).unwrap();
    let gauge = crate::metrics::scrape(proxy)
        .await
        .value("trafficmirror_state_file_saved", &[]);
    (status["state_file_saved"].clone(), gauge)
}

async fn delete(proxy: &TestProxy, url: &str) -> Answer {
    let query = format!("?url={url}");
    send(Method::DELETE, &proxy.admin_url(&query), &[], Bytes::new()).await
}

#[tokio::test]
async fn a_failed_state_file_save_stays_owed_and_the_next_admin_request_writes_it() {
    let dir = TempDir::new("unsaved");
    let state = dir.path("state.txt");
    let shown = state.display().to_string();
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &["--state-file", &shown]).await;
    // Never contacted: no request goes through the proxy.
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.1:2");
    proxy.put_ok(&format!("url={a}&url={b}")).await;
    assert_eq!(saved_urls(&state), [a, b]);
    assert_eq!(state_file_saved(&proxy).await, (json!(true), 1.0));

    block_state_file(&state);
    let resp = delete(&proxy, a).await;
    assert_eq!(
        resp.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        resp.text()
    );
    assert!(
        resp.text().contains("applied but the state file"),
        "{}",
        resp.text()
    );
    assert_eq!(proxy.mirrors_json().await.len(), 1, "the change is applied");
    assert_eq!(state_file_saved(&proxy).await, (json!(false), 0.0));
    // The same request again changes nothing, but the save is still owed: tried again,
    // and the client is told it failed again.
    let resp = delete(&proxy, a).await;
    assert_eq!(
        resp.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        resp.text()
    );
    assert_eq!(state_file_saved(&proxy).await, (json!(false), 0.0));

    std::fs::remove_dir_all(&state).unwrap();
    let resp = delete(&proxy, a).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        saved_urls(&state),
        [b],
        "the deleted mirror is gone from the file"
    );
    assert_eq!(state_file_saved(&proxy).await, (json!(true), 1.0));
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_state_file_save_is_retried_on_a_timer() {
    let main = MockBackend::start(Reply::ok("main")).await;
    let dir = TempDir::new("retried");
    let state = dir.path("state.txt");
    let shown = state.display().to_string();
    let args = ["--main", &main.url(), "--state-file", &shown];
    let proxy = TestProxy::start_tuned(&args, |config| {
        config.initial.state_file_retry = Duration::from_millis(200);
    })
    .await;
    let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.1:2");
    proxy.put_ok(&format!("url={a}&url={b}")).await;
    block_state_file(&state);
    let resp = delete(&proxy, a).await;
    assert_eq!(
        resp.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        resp.text()
    );
    assert_eq!(state_file_saved(&proxy).await, (json!(false), 0.0));
    // No further request: the timer writes it once it can.
    std::fs::remove_dir_all(&state).unwrap();
    // The file is written before the flag is set: wait for both.
    eventually(
        "the file written by the retry, and shown as saved",
        || async {
            state.is_file()
                && saved_urls(&state) == [b]
                && state_file_saved(&proxy).await == (json!(true), 1.0)
        },
    )
    .await;
    proxy.stop().await;
}

/// A form `PUT` on the admin endpoint.
async fn put_form(proxy: &TestProxy, form: String) -> Answer {
    let form_type = [("content-type", "application/x-www-form-urlencoded")];
    send(Method::PUT, &proxy.admin_url(""), &form_type, form).await
}

#[tokio::test]
async fn an_admin_change_that_would_pass_the_state_file_limit_is_refused() {
    let dir = TempDir::new("full");
    let state = dir.path("state.txt");
    let shown = state.display().to_string();
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &["--state-file", &shown]).await;
    // Lines of about 60 kB each: 17 fit in the 1 MiB start-up reads, 18 do not.
    let pad = "a".repeat(60_000);
    let padded = |port: u16| format!("url=http://127.0.0.1:{port}&set_header=X-Pad:{pad}");
    for port in 1..=17 {
        let resp = put_form(&proxy, padded(port)).await;
        assert_eq!(resp.status, StatusCode::OK, "{port}: {}", resp.text());
    }
    let resp = put_form(&proxy, padded(18)).await;
    assert_eq!(
        resp.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        resp.text()
    );
    assert!(resp.text().contains("1048576 bytes"), "{}", resp.text());
    assert!(resp.text().contains("nothing applied"), "{}", resp.text());
    assert_eq!(proxy.mirrors_json().await.len(), 17, "nothing applied");
    let size = std::fs::metadata(&state).unwrap().len();
    assert!(size <= 1024 * 1024, "{size}");
    assert_eq!(saved_urls(&state).len(), 17);
    assert_eq!(state_file_saved(&proxy).await, (json!(true), 1.0));

    // What does not grow the file is accepted: a PUT that changes nothing, and one
    // that shrinks a line; after which the 18th fits.
    proxy.put_ok("url=http://127.0.0.1:1").await;
    proxy.put_ok("url=http://127.0.0.1:1&percent=5").await;
    let resp = put_form(&proxy, padded(18)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(saved_urls(&state).len(), 18);
    proxy.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_state_file_given_through_a_symlink_updates_its_target() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("linked");
    std::fs::create_dir(dir.path("volume")).unwrap();
    let target = dir.path("volume/state.txt");
    let link = dir.path("state.txt");
    std::os::unix::fs::symlink("volume/state.txt", &link).unwrap();
    let shown = link.display().to_string();
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &["--state-file", &shown]).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    proxy.put_ok("url=http://127.0.0.1:1").await;
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(saved_urls(&target), ["http://127.0.0.1:1"]);
    assert_eq!(mode(&target), 0o600, "a new file is private");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    proxy.put_ok("url=http://127.0.0.1:2").await;
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        saved_urls(&target),
        ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    );
    assert_eq!(mode(&target), 0o640, "the file's mode is kept");
    assert_eq!(dir.names(), ["state.txt", "volume"]);
    proxy.stop().await;
}

#[test]
fn a_state_file_in_a_missing_directory_stops_the_start() {
    let dir = TempDir::new("no-dir");
    let missing = dir.path("nowhere");
    let state = missing.join("state.txt");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--state-file",
        state.to_str().unwrap(),
    ];
    let (code, _, stderr, took) = run_in(&Sandbox::new(), &args, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the directory {} does not exist",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(dir.names().is_empty(), "nothing created");
}

#[tokio::test]
async fn a_second_instance_on_the_same_state_file_is_refused() {
    let dir = TempDir::new("two");
    let state = dir.path("state.txt");
    let state_arg = state.to_str().unwrap().to_owned();
    let first = Binary::start(&["--state-file", &state_arg]).await;
    first.put_ok("url=http://127.0.0.1:1").await;

    let args = [
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--state-file".to_owned(),
        state_arg.clone(),
    ];
    let (code, _, stderr, took) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(&Sandbox::new(), &args, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&state_arg), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another trafficmirror instance (pid {})",
            first.pid()
        )),
        "{stderr}"
    );

    // The first instance goes on saving; its lock ends with it.
    first.put_ok("url=http://127.0.0.1:2").await;
    assert_eq!(
        saved_urls(&state),
        ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    );
    first.terminate_within(WAIT).await;
    let again = Binary::start(&["--state-file", &state_arg]).await;
    assert_eq!(binary_listing(&again).await.len(), 2);
    again.terminate_within(WAIT).await;
}

/// Waits until the listing of `proxy` satisfies `check`; returns it.
async fn listing_until(
    proxy: &TestProxy,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listing = proxy.mirrors_json().await;
        if check(&listing) {
            return listing;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}; listing {listing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `trafficmirror_targets_file_valid` from the scrape.
async fn targets_file_valid(proxy: &TestProxy) -> bool {
    crate::metrics::scrape(proxy)
        .await
        .value("trafficmirror_targets_file_valid", &[])
        == 1.0
}

#[tokio::test]
async fn targets_file_is_followed_and_owns_its_mirrors() {
    let dir = TempDir::new("targets");
    let file = dir.path("targets");
    let shown = file.display().to_string();
    replace_file(&file, "# none yet\n");
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("main"), &["--targets-file", &shown]).await;
    proxy.put_ok("url=http://127.0.0.1:9").await;
    assert_eq!(proxy.mirrors_json().await.len(), 1);

    replace_file(&file, "# one\nhttp://127.0.0.1:1 method=GET\n");
    let listing = listing_until(&proxy, "the file's mirror", |l| l.len() == 2).await;
    assert_eq!(listing[1]["url"], "http://127.0.0.1:1");
    assert_eq!(listing[1]["source"], "file");
    assert_eq!(listing[1]["options"]["method"], serde_json::json!(["GET"]));
    assert_eq!(listing[0]["source"], "admin");

    replace_file(&file, "http://127.0.0.1:1 percent=5\n");
    listing_until(&proxy, "the new options", |l| {
        l.len() == 2
            && l[1]["options"]["percent"] == 5.0
            && l[1]["options"]["method"] == serde_json::json!([])
    })
    .await;

    // The admin endpoint may not change it, and says where to.
    for (method, query) in [
        (Method::DELETE, "?url=http://127.0.0.1:1"),
        (Method::PUT, "?url=http://127.0.0.1:1"),
        (Method::PUT, "?url=http://127.0.0.1:1&percent=50"),
        (
            Method::PUT,
            "?url=http://127.0.0.1:2&url=http://127.0.0.1:1/",
        ),
    ] {
        let resp = send(method.clone(), &proxy.admin_url(query), &[], Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{method} {query}");
        assert!(
            resp.text().contains(&shown),
            "{method} {query}: {}",
            resp.text()
        );
    }
    let before = proxy.mirrors_json().await;
    assert_eq!(before.len(), 2, "a refused PUT added nothing");

    // A bad line rejects the whole file: the previous set stays, and the metrics say
    // the file on disk is not in force.
    assert!(targets_file_valid(&proxy).await);
    replace_file(
        &file,
        "http://127.0.0.1:3\nhttp://127.0.0.1:1 percent=oops\n",
    );
    eventually("the bad file rejected", || async {
        !targets_file_valid(&proxy).await
    })
    .await;
    let urls = |l: &[Value]| -> Vec<Value> { l.iter().map(|m| m["url"].clone()).collect() };
    assert_eq!(urls(&proxy.mirrors_json().await), urls(&before));
    assert_eq!(
        proxy.mirror_json("http://127.0.0.1:1").await.unwrap()["options"]["percent"],
        5.0
    );

    replace_file(&file, "# empty again\n");
    let listing = listing_until(&proxy, "the file's mirror removed", |l| l.len() == 1).await;
    assert_eq!(listing[0]["url"], "http://127.0.0.1:9");
    assert!(targets_file_valid(&proxy).await);
    proxy.stop().await;
}

#[tokio::test]
async fn targets_file_follows_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new("configmap");
    std::fs::create_dir(dir.path("..2026_01")).unwrap();
    std::fs::write(dir.path("..2026_01/targets"), "http://127.0.0.1:1\n").unwrap();
    symlink("..2026_01", dir.path("..data")).unwrap();
    symlink("..data/targets", dir.path("targets")).unwrap();
    let file = dir.path("targets").display().to_string();
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("main"), &["--targets-file", &file]).await;
    listing_until(&proxy, "the first version", |l| {
        l.len() == 1 && l[0]["url"] == "http://127.0.0.1:1" && l[0]["source"] == "file"
    })
    .await;

    // What the kubelet does: a new timestamped directory, a new symlink to it, and a
    // rename of that symlink over `..data`.
    std::fs::create_dir(dir.path("..2026_02")).unwrap();
    std::fs::write(
        dir.path("..2026_02/targets"),
        "http://127.0.0.1:2 percent=5\n",
    )
    .unwrap();
    symlink("..2026_02", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    std::fs::remove_dir_all(dir.path("..2026_01")).unwrap();
    listing_until(&proxy, "the swapped version", |l| {
        l.len() == 1 && l[0]["url"] == "http://127.0.0.1:2" && l[0]["options"]["percent"] == 5.0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_targets_file_rewritten_in_place_is_never_applied_half_written() {
    let dir = TempDir::new("in-place");
    let file = dir.path("targets");
    // Never contacted: no request goes through the proxy.
    let first =
        "http://127.0.0.1:19001 percent=50\nhttp://127.0.0.1:19002\nhttp://127.0.0.1:19003\n";
    let last = format!("{first}http://127.0.0.1:19004\n");
    std::fs::write(&file, first).unwrap();
    let shown = file.display().to_string();
    let (_main, proxy) =
        TestProxy::in_front_of(Reply::ok("main"), &["--targets-file", &shown]).await;
    let urls = |l: &[Value]| -> Vec<String> {
        l.iter()
            .map(|m| m["url"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected = [
        "http://127.0.0.1:19001",
        "http://127.0.0.1:19002",
        "http://127.0.0.1:19003",
    ];
    assert_eq!(urls(&proxy.mirrors_json().await), expected);

    // Rewritten in place every 100 ms for 4 s, as `cat > file` does but slower: emptied,
    // then written up to a cut-off address (`http://127.0.0.1:19`), then the rest. The
    // last round writes a fourth mirror.
    let writer = std::thread::spawn({
        let (file, first, last) = (file.clone(), first.to_owned(), last.clone());
        move || {
            use std::io::Write as _;
            let cut = first.len() - 4;
            let rounds = 40;
            for round in 1..=rounds {
                let text = if round == rounds { &last } else { &first };
                let mut f = std::fs::File::create(&file).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                f.write_all(&text.as_bytes()[..cut]).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                f.write_all(&text.as_bytes()[cut..]).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(40));
            }
            Instant::now()
        }
    });
    let mut polls = 0;
    while !writer.is_finished() {
        let listing = proxy.mirrors_json().await;
        assert_eq!(urls(&listing), expected, "after {polls} polls");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = writer.join().unwrap();
    assert!(polls > 100, "{polls}");
    // The last version, left alone, is applied within the 2 s docs/operations.md promises.
    listing_until(&proxy, "the last version", |l| l.len() == 4).await;
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "applied {took:?} after the last write"
    );
    assert!(targets_file_valid(&proxy).await);
    proxy.stop().await;
}

#[tokio::test]
async fn a_mirror_removed_by_fail_after_leaves_the_state_file() {
    let failing = MockBackend::start(Reply::status(503)).await;
    let dir = TempDir::new("expired");
    let state = dir.path("state.txt");
    let shown = state.display().to_string();
    let (_main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &[
            "--state-file",
            &shown,
            "--retry-after",
            "100ms",
            "--fail-after",
            "300ms",
        ],
    )
    .await;
    proxy.put_ok("url=http://127.0.0.1:1&persistent=true").await;
    proxy
        .put_ok(&format!("url={}&percent=100", failing.url()))
        .await;
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains(&failing.url()), "{saved}");
    // Keep traffic going until fail-after takes it out of the set.
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.mirror_json(&failing.url()).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        get(&proxy.url("/f")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        "the state file no longer lists the removed mirror",
        || async {
            let saved = std::fs::read_to_string(&state).unwrap();
            !saved.contains(&failing.url()) && saved.contains("http://127.0.0.1:1 persistent=true")
        },
    )
    .await;
    proxy.stop().await;
}

#[tokio::test]
async fn options_in_a_form_body_apply_to_every_url_of_the_request() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    let form = "url=http%3A%2F%2F127.0.0.1%3A1&url=http%3A%2F%2F127.0.0.1%3A2\
                &percent=0.5&set_header=X-Note%3Aa+b&path=%2Fapi";
    let resp = send(
        Method::PUT,
        &proxy.admin_url("?format=json"),
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let listing: Vec<Value> = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(listing.len(), 2);
    for entry in &listing {
        assert_eq!(entry["options"]["percent"], 0.5, "{entry}");
        assert_eq!(
            entry["options"]["set_header"],
            serde_json::json!(["x-note:a b"])
        );
        assert_eq!(entry["options"]["path"], serde_json::json!(["/api"]));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn sticky_share_by_cookie_and_at_random_without_it() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    proxy
        .put_ok(&format!(
            "url={}&sample_by=cookie:sid&percent=50",
            mirror.url()
        ))
        .await;
    // Published: "user-42" in, "a" out at 50 %; other cookies do not matter.
    for cookie in ["theme=dark; sid=user-42", "sid=a; theme=dark"] {
        for _ in 0..5 {
            send(Method::GET, &proxy.url("/c"), &[("cookie", cookie)], "").await;
        }
    }
    let entry = settled(&proxy, &mirror.url(), 10).await;
    assert_eq!(counter(&entry, "sent"), 5, "{entry}");
    for got in drain(&mirror).await {
        assert!(got.header("cookie").unwrap().contains("sid=user-42"));
    }
    // Without the cookie the share is random: 200 requests land in a wide band.
    for _ in 0..200 {
        get(&proxy.url("/none")).await;
    }
    let entry = settled(&proxy, &mirror.url(), 210).await;
    let random = counter(&entry, "sent") - 5;
    assert!((50..=150).contains(&random), "{random} of 200: {entry}");
    proxy.stop().await;
}
