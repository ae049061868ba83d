//! The Prometheus scrape: where it is served, who may read it, and that its values are
//! the ones the JSON listing shows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One sample line: `name{key="value",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
#[derive(Debug)]
pub(crate) struct Scrape {
    samples: Vec<Sample>,
    /// `# TYPE` lines: family name → type.
    types: HashMap<String, String>,
    text: String,
}

impl Scrape {
    /// Parses the text format, checking that every sample belongs to a declared family.
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        for s in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = s.name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(&s.name);
            assert!(types.contains_key(family), "no TYPE for {}", s.name);
        }
        Scrape {
            samples,
            types,
            text: text.to_owned(),
        }
    }

    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Like `get`, but the sample must exist.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{}", self.text))
    }

    fn has_series_of(&self, mirror: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.get("mirror").is_some_and(|m| m == mirror))
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("sample has a value");
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("value in {line:?}"));
    let Some((name, rest)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let body = rest.strip_suffix('}').expect("labels end with }");
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "quoted value in {line:?}");
        let mut val = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '"' => break,
                '\\' => match chars.next().expect("escaped character") {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                c => val.push(c),
            }
        }
        labels.insert(key, val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn basic(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// Scrapes `url` (with these headers), checking status and content type.
async fn scrape_with(url: &str, headers: &[(&str, &str)]) -> Scrape {
    let resp = send(Method::GET, url, headers, Bytes::new()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.headers["content-type"], CONTENT_TYPE);
    Scrape::parse(&resp.text())
}

/// `<admin path>/metrics` on the proxy's admin address.
pub(crate) async fn scrape(proxy: &TestProxy) -> Scrape {
    scrape_with(&proxy.admin_url("/metrics"), &[]).await
}

const OUTCOMES: [&str; 6] = [
    "sent",
    "succeeded",
    "failed",
    "dropped",
    "skipped",
    "filtered",
];

/// Every per-mirror counter and the queue of the scrape equal the JSON listing's.
fn assert_agrees_with_listing(scrape: &Scrape, listing: &[serde_json::Value]) {
    for entry in listing {
        let url = entry["url"].as_str().unwrap();
        for outcome in OUTCOMES {
            let expected = entry[outcome].as_u64().unwrap_or_else(|| {
                panic!("{outcome} in the listing: {entry}");
            });
            let got = scrape.value(
                "trafficmirror_mirror_copies_total",
                &[("mirror", url), ("outcome", outcome)],
            );
            assert_eq!(got, expected as f64, "{url} {outcome}");
        }
        let queued = scrape.value("trafficmirror_mirror_queued", &[("mirror", url)]);
        assert_eq!(queued, entry["queued"].as_u64().unwrap() as f64);
        let state = entry["state"].as_str().unwrap();
        for name in ["alive", "failing", "retrying"] {
            let got = scrape.value(
                "trafficmirror_mirror_state",
                &[("mirror", url), ("state", name)],
            );
            assert_eq!(got, f64::from(u8::from(name == state)), "{url} {name}");
        }
        let compare = &entry["compare"];
        let comparisons = "trafficmirror_mirror_comparisons_total";
        if compare.is_null() {
            assert!(
                !scrape
                    .samples
                    .iter()
                    .any(|s| s.name == comparisons && s.labels["mirror"] == url),
                "{url} does not compare"
            );
            continue;
        }
        for (result, expected) in [
            ("matched", &compare["matched"]),
            ("mismatched", &compare["mismatched"]),
            ("not_compared", &compare["not_compared"]),
        ] {
            let got = scrape.value(comparisons, &[("mirror", url), ("result", result)]);
            let expected = expected
                .as_u64()
                .unwrap_or_else(|| panic!("{result}: {compare}"));
            assert_eq!(got, expected as f64, "{url} {result}");
        }
        for part in ["status", "headers", "body"] {
            let got = scrape.value(
                "trafficmirror_mirror_mismatches_total",
                &[("mirror", url), ("part", part)],
            );
            let expected = compare["mismatches"][part]
                .as_u64()
                .unwrap_or_else(|| panic!("{part}: {compare}"));
            assert_eq!(got, expected as f64, "{url} {part}");
        }
    }
}

#[tokio::test]
async fn scrape_agrees_with_the_json_listing() {
    let (_main, [m1, m2], proxy) =
        TestProxy::with_mirrors(Reply::ok("main"), [Reply::ok("m1"), Reply::ok("m2")], &[]).await;

    for i in 0..7 {
        let resp = send(Method::POST, &proxy.url(&format!("/r{i}")), &[], "body").await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    for mirror in [&m1, &m2] {
        for _ in 0..7 {
            mirror.next().await;
        }
    }
    // A copy leaves the queue only once its outcome is counted.
    eventually("both mirrors done with 7 copies", || async {
        proxy
            .mirrors_json()
            .await
            .iter()
            .all(|m| m["succeeded"] == 7 && m["queued"] == 0)
    })
    .await;

    let scrape = scrape(&proxy).await;
    let listing = proxy.mirrors_json().await;
    assert_eq!(listing.len(), 2);
    assert_agrees_with_listing(&scrape, &listing);
    for url in [m1.url(), m2.url()] {
        let m = [("mirror", url.as_str())];
        let copies = |outcome| {
            scrape.value(
                "trafficmirror_mirror_copies_total",
                &[("mirror", url.as_str()), ("outcome", outcome)],
            )
        };
        assert_eq!(copies("sent"), 7.0);
        assert_eq!(copies("succeeded"), 7.0);
        assert_eq!(copies("failed"), 0.0);
        let duration = "trafficmirror_mirror_request_duration_seconds";
        assert_eq!(scrape.value(&format!("{duration}_count"), &m), 7.0);
        let inf = [("mirror", url.as_str()), ("le", "+Inf")];
        assert_eq!(scrape.value(&format!("{duration}_bucket"), &inf), 7.0);
        assert!(scrape.value(&format!("{duration}_sum"), &m) > 0.0);
    }

    let requests = |class| scrape.value("trafficmirror_requests_total", &[("class", class)]);
    assert_eq!(requests("2xx"), 7.0);
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(requests(class), 0.0, "{class}");
    }
    assert_eq!(
        scrape.value("trafficmirror_request_duration_seconds_count", &[]),
        7.0
    );
    assert_eq!(
        scrape.value(
            "trafficmirror_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        7.0
    );

    let status: serde_json::Value =
        serde_json::from_slice(&get(&proxy.admin_url("/status")).await.body).unwrap();
    assert_eq!(
        scrape.value("trafficmirror_buffered_bytes", &[]),
        status["buffered_bytes"].as_u64().unwrap() as f64
    );
    assert_eq!(
        scrape.value("trafficmirror_max_buffered_bytes", &[]),
        status["max_buffered_bytes"].as_u64().unwrap() as f64
    );
    assert_eq!(
        scrape.value("trafficmirror_max_buffered_bytes", &[]),
        (256u64 << 20) as f64,
        "the default --max-buffered-bytes"
    );

    // The build, as `--version` prints it (tests/it/cli.rs checks that against git).
    use trafficmirror::build_info;
    let build = [
        ("version", build_info::VERSION),
        ("commit", build_info::COMMIT),
        ("build_date", build_info::DATE),
    ];
    assert_eq!(scrape.value("trafficmirror_build_info", &build), 1.0);
    assert_eq!(build_info::VERSION, env!("CARGO_PKG_VERSION"));

    for (family, kind) in [
        ("trafficmirror_build_info", "gauge"),
        ("trafficmirror_requests_total", "counter"),
        ("trafficmirror_request_duration_seconds", "histogram"),
        ("trafficmirror_mirror_copies_total", "counter"),
        ("trafficmirror_mirror_queued", "gauge"),
        ("trafficmirror_mirror_state", "gauge"),
        ("trafficmirror_mirror_request_duration_seconds", "histogram"),
        ("trafficmirror_buffered_bytes", "gauge"),
        ("trafficmirror_max_buffered_bytes", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn answers_are_counted_by_the_class_the_client_got() {
    let (main, proxy) = TestProxy::in_front_of(Reply::status(404), &[]).await;
    for (reply, times) in [(404, 2), (302, 1), (503, 3)] {
        main.set_reply(Reply::status(reply));
        for _ in 0..times {
            let resp = get(&proxy.url("/")).await;
            assert_eq!(resp.status.as_u16(), reply);
        }
    }
    let scrape = scrape(&proxy).await;
    let requests = |class| scrape.value("trafficmirror_requests_total", &[("class", class)]);
    assert_eq!(requests("4xx"), 2.0);
    assert_eq!(requests("3xx"), 1.0);
    assert_eq!(requests("5xx"), 3.0);
    assert_eq!(requests("2xx"), 0.0);
    assert_eq!(
        scrape.value("trafficmirror_request_duration_seconds_count", &[]),
        6.0
    );
}

#[tokio::test]
async fn proxy_errors_and_a_failing_mirror_are_counted() {
    let down = closed_addr().await;
    let mirror = format!("http://{}", closed_addr().await);
    let proxy =
        TestProxy::start(&["--main", &format!("http://{down}"), "--retry-after", "1h"]).await;
    proxy.add_mirrors(&[&mirror]).await;
    for _ in 0..5 {
        assert_eq!(get(&proxy.url("/")).await.status, StatusCode::BAD_GATEWAY);
    }
    eventually("the mirror is failing", || async {
        proxy
            .mirror_json(&mirror)
            .await
            .is_some_and(|m| m["state"] == "failing" && m["queued"] == 0)
    })
    .await;
    // Failing: this copy is dropped.
    assert_eq!(get(&proxy.url("/")).await.status, StatusCode::BAD_GATEWAY);

    let scrape = scrape(&proxy).await;
    let listing = proxy.mirrors_json().await;
    assert_agrees_with_listing(&scrape, &listing);
    let copies = |outcome| {
        scrape.value(
            "trafficmirror_mirror_copies_total",
            &[("mirror", mirror.as_str()), ("outcome", outcome)],
        )
    };
    assert_eq!(copies("sent"), 5.0);
    assert_eq!(copies("failed"), 5.0);
    assert_eq!(copies("dropped"), 1.0);
    let state = |name| {
        scrape.value(
            "trafficmirror_mirror_state",
            &[("mirror", mirror.as_str()), ("state", name)],
        )
    };
    assert_eq!((state("alive"), state("failing")), (0.0, 1.0));
    assert_eq!(
        scrape.value(
            "trafficmirror_mirror_request_duration_seconds_count",
            &[("mirror", mirror.as_str())]
        ),
        5.0,
        "failed requests are timed too"
    );
    assert_eq!(
        scrape.value("trafficmirror_requests_total", &[("class", "5xx")]),
        6.0,
        "the proxy's own 502s"
    );
}

#[tokio::test]
async fn a_removed_mirror_leaves_the_scrape() {
    let proxy = TestProxy::start(&[]).await;
    proxy.add_mirrors(&["http://one:1", "http://two:2"]).await;
    let before = scrape(&proxy).await;
    assert!(before.has_series_of("http://one:1"));
    assert!(before.has_series_of("http://two:2"));
    let resp = send(
        Method::DELETE,
        &proxy.admin_url("?url=http://one:1"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let after = scrape(&proxy).await;
    assert!(!after.has_series_of("http://one:1"), "{}", after.text);
    assert!(after.has_series_of("http://two:2"));
}

#[tokio::test]
async fn metrics_are_behind_the_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.txt");
    std::fs::write(&file, "user:password\n").unwrap();
    let proxy = TestProxy::start(&["--password", file.to_str().unwrap()]).await;
    let url = proxy.admin_url("/metrics");
    for creds in [None, Some("user:wrong")] {
        let auth = creds.map(basic);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let resp = send(Method::GET, &url, &headers, Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{creds:?}");
        assert_eq!(
            resp.headers["www-authenticate"],
            "Basic realm=\"trafficmirror\""
        );
        assert!(!resp.text().contains("trafficmirror_"), "{}", resp.text());
    }
    let ok = basic("user:password");
    let scrape = scrape_with(&url, &[("authorization", &ok)]).await;
    assert!(scrape.get("trafficmirror_requests_total", &[("class", "2xx")]) == Some(0.0));
}

#[tokio::test]
async fn metrics_answer_only_get() {
    let proxy = TestProxy::start(&[]).await;
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
        let resp = send(method.clone(), &proxy.admin_url("/metrics"), &[], "x").await;
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(resp.headers["allow"], "GET", "{method}");
    }
}

#[tokio::test]
async fn on_the_main_listener_plain_metrics_is_main_s_path() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("from main"), &[]).await;
    let resp = get(&proxy.url("/metrics")).await;
    assert_eq!(resp.text(), "from main");
    assert_eq!(main.next().await.uri.path(), "/metrics");

    let scrape = scrape_with(&proxy.url("/targets/metrics"), &[]).await;
    assert_eq!(
        scrape.value("trafficmirror_requests_total", &[("class", "2xx")]),
        1.0,
        "the proxied /metrics, and not the scrape itself"
    );
    main.assert_nothing_within(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn with_targets_address_metrics_are_at_the_root_of_the_admin_address() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("from main"),
        &["--targets-address", "127.0.0.1:0"],
    )
    .await;
    assert_ne!(proxy.addr, proxy.admin_addr);
    let root = scrape_with(&format!("http://{}/metrics", proxy.admin_addr), &[]).await;
    assert!(root.get("trafficmirror_buffered_bytes", &[]).is_some());
    // The sub-path works there too, so one URL fits both set-ups.
    scrape_with(&proxy.admin_url("/metrics"), &[]).await;

    // The main listener proxies both paths to main.
    for path in ["/metrics", "/targets/metrics"] {
        assert_eq!(get(&proxy.url(path)).await.text(), "from main");
        assert_eq!(main.next().await.uri.path(), path);
    }
    let after = scrape_with(&format!("http://{}/metrics", proxy.admin_addr), &[]).await;
    assert_eq!(
        after.value("trafficmirror_requests_total", &[("class", "2xx")]),
        2.0
    );
}

#[tokio::test]
async fn comparisons_are_counted_by_result() {
    let alike = MockBackend::start(Reply::ok("same")).await;
    let differs = MockBackend::start(Reply::ok("different")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("same"), &[]).await;
    for mirror in [&alike, &differs] {
        proxy
            .put_ok(&format!("url={}&compare=true", mirror.url()))
            .await;
    }
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/")).await.text(), "same");
    }
    eventually("3 comparisons per mirror", || async {
        proxy
            .mirrors_json()
            .await
            .iter()
            .all(|m| m["compare"]["compared"] == 3 && m["queued"] == 0)
    })
    .await;
    let scrape = scrape(&proxy).await;
    assert_agrees_with_listing(&scrape, &proxy.mirrors_json().await);
    let result = |mirror: &MockBackend, result| {
        scrape.value(
            "trafficmirror_mirror_comparisons_total",
            &[("mirror", mirror.url().as_str()), ("result", result)],
        )
    };
    let part = |mirror: &MockBackend, part| {
        scrape.value(
            "trafficmirror_mirror_mismatches_total",
            &[("mirror", mirror.url().as_str()), ("part", part)],
        )
    };
    assert_eq!(result(&alike, "matched"), 3.0);
    assert_eq!(result(&alike, "mismatched"), 0.0);
    assert_eq!(result(&differs, "matched"), 0.0);
    assert_eq!(result(&differs, "mismatched"), 3.0);
    assert_eq!(part(&differs, "body"), 3.0);
    assert_eq!(part(&differs, "status"), 0.0);
    assert_eq!(
        scrape.types.get("trafficmirror_mirror_comparisons_total"),
        Some(&"counter".to_owned())
    );
}
