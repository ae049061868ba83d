//! Shadow analysis end to end: every differing field of an answer in `/mismatches`.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn json_reply(body: &str) -> Reply {
    Reply::With(
        StatusCode::OK,
        vec![("content-type", "application/json")],
        Bytes::from(body.to_owned()),
    )
}

/// The `/mismatches` records of `url`, once there are `n`.
async fn mismatches(proxy: &TestProxy, url: &str, n: usize) -> Vec<Value> {
    let list = || async {
        let resp = get(&proxy.admin_url(&format!("/mismatches?url={url}"))).await;
        assert_eq!(resp.status, StatusCode::OK);
        serde_json::from_slice::<Vec<Value>>(&resp.body).expect("a JSON array")
    };
    eventually(&format!("{n} mismatches at {url}"), || async {
        list().await.len() >= n
    })
    .await;
    list().await
}

#[tokio::test]
async fn a_mismatch_record_lists_every_differing_field_with_indices_as_stars() {
    let (_main, proxy) = TestProxy::in_front_of(
        json_reply(r#"{"items":[{"price":1,"id":1},{"price":2,"id":2}],"ts":1,"same":0}"#),
        &[],
    )
    .await;
    let mirror = MockBackend::start(json_reply(
        r#"{"items":[{"price":5,"id":1},{"price":6,"id":2}],"ts":2,"same":0,"new":true}"#,
    ))
    .await;
    proxy
        .put_ok(&format!("url={}&compare=true", mirror.url()))
        .await;
    get(&proxy.url("/cart")).await;
    let records = mismatches(&proxy, &mirror.url(), 1).await;
    let r = &records[0];
    assert_eq!(r["fields"], json!(["/items/*/price", "/new", "/ts"]));
    // The first difference is still there, as before.
    assert_eq!(
        r["difference"],
        json!({"kind": "json_pointer", "pointer": "/items/0/price", "main": "1", "mirror": "5"})
    );
}

/// The `/endpoints` listing of `url`.
async fn endpoints(proxy: &TestProxy, url: &str) -> Vec<Value> {
    let resp = get(&proxy.admin_url(&format!("/endpoints?url={url}"))).await;
    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
    serde_json::from_slice(&resp.body).expect("a JSON array")
}

/// The listing's entry for `method template`, once it counts `n` compared answers.
async fn endpoint(proxy: &TestProxy, url: &str, method: &str, template: &str, n: u64) -> Value {
    let find = || async {
        endpoints(proxy, url)
            .await
            .into_iter()
            .find(|e| e["method"] == method && e["template"] == template)
    };
    eventually(&format!("{n} compared on {method} {template}"), || async {
        find()
            .await
            .is_some_and(|e| e["compared"].as_u64() >= Some(n))
    })
    .await;
    find().await.expect("found")
}

#[tokio::test]
async fn results_are_kept_per_method_and_path_template() {
    let (_main, proxy) = TestProxy::in_front_of(json_reply(r#"{"ts":1,"v":1}"#), &[]).await;
    let mirror = MockBackend::start(json_reply(r#"{"ts":2,"v":1}"#)).await;
    proxy
        .put_ok(&format!("url={}&compare=true", mirror.url()))
        .await;
    for path in [
        "/users/1/orders?page=2",
        "/users/22/orders",
        "/users/123e4567-e89b-12d3-a456-426614174000/orders",
        "/blobs/0123456789abcdef0123",
        "/users/me",
    ] {
        get(&proxy.url(path)).await;
    }
    let orders = endpoint(&proxy, &mirror.url(), "GET", "/users/{id}/orders", 3).await;
    assert_eq!(orders["compared"], 3, "{orders}");
    assert_eq!(orders["mismatched"], 3);
    assert_eq!(orders["fields"], json!([{"field": "/ts", "count": 3}]));
    assert_eq!(orders["regressions"], json!([]));
    assert_eq!(orders["noise"], json!([]));
    for side in ["main_latency_ms", "mirror_latency_ms"] {
        assert!(orders[side]["p50"].is_number(), "{orders}");
        assert!(orders[side]["p99"].is_number(), "{orders}");
    }
    endpoint(&proxy, &mirror.url(), "GET", "/blobs/{id}", 1).await;
    endpoint(&proxy, &mirror.url(), "GET", "/users/me", 1).await;
    assert_eq!(endpoints(&proxy, &mirror.url()).await.len(), 3);
}

#[tokio::test]
async fn the_first_matching_endpoint_option_names_the_endpoint() {
    let (_main, proxy) = TestProxy::in_front_of(json_reply(r#"{"v":1}"#), &[]).await;
    let mirror = MockBackend::start(json_reply(r#"{"v":1}"#)).await;
    proxy
        .put_ok(&format!(
            "url={}&compare=true&endpoint=/users/:user/orders&endpoint=/files/:name",
            mirror.url()
        ))
        .await;
    for path in [
        "/users/me/orders",
        "/users/you/orders?x=1",
        "/files/a.txt",
        "/other/7",
    ] {
        get(&proxy.url(path)).await;
    }
    let e = endpoint(&proxy, &mirror.url(), "GET", "/users/:user/orders", 2).await;
    assert_eq!(
        (e["compared"].clone(), e["mismatched"].clone()),
        (json!(2), json!(0))
    );
    endpoint(&proxy, &mirror.url(), "GET", "/files/:name", 1).await;
    endpoint(&proxy, &mirror.url(), "GET", "/other/{id}", 1).await;
}

#[tokio::test]
async fn mirrors_with_the_same_percent_get_the_same_requests() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let a = MockBackend::start(Reply::ok("ok")).await;
    let b = MockBackend::start(Reply::ok("ok")).await;
    for m in [&a, &b] {
        proxy.put_ok(&format!("url={}&percent=50", m.url())).await;
    }
    let n = 40;
    for i in 0..n {
        get(&proxy.url(&format!("/r/{i}"))).await;
    }
    let mut paths = Vec::new();
    for m in [&a, &b] {
        // Every request is either sent or filtered, and the copies sent all arrive.
        eventually("every request decided and delivered", || async {
            let j = proxy.mirror_json(&m.url()).await.unwrap();
            let sent = j["sent"].as_u64().unwrap_or(0);
            sent + j["filtered"].as_u64().unwrap_or(0) == n && m.count() as u64 == sent
        })
        .await;
        let mut got = Vec::new();
        for _ in 0..m.count() {
            got.push(m.next().await.uri.to_string());
        }
        got.sort();
        paths.push(got);
    }
    // With independent draws, equal sets of 40 would be a 1 in 2^40 chance.
    assert_eq!(paths[0], paths[1]);
    assert!(
        !paths[0].is_empty() && paths[0].len() < n as usize,
        "{paths:?}"
    );
}

/// A backend answering `{"ts":N,"price":P}`: N a counter of its own starting at
/// `clock` (so it differs between any two backends), P from `price(path)`.
fn stamped(backend: &MockBackend, clock: u64, price: fn(&str) -> u32) {
    stamped_with(backend, clock, price, "");
}

/// [`stamped`], with N also under the key `extra` when it is not empty (written into
/// the JSON as it is: a key may carry markup).
pub(crate) fn stamped_with(
    backend: &MockBackend,
    clock: u64,
    price: fn(&str) -> u32,
    extra: &'static str,
) {
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(clock));
    backend.set_behavior(move |r| {
        let ts = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let price = price(r.uri.path());
        let body = if extra.is_empty() {
            format!(r#"{{"ts":{ts},"price":{price}}}"#)
        } else {
            format!(r#"{{"ts":{ts},"price":{price},"{extra}":{ts}}}"#)
        };
        Reply::With(
            StatusCode::OK,
            vec![("content-type", "application/json")],
            Bytes::from(body),
        )
    });
}

/// Even order numbers cost more on the candidate.
pub(crate) fn candidate_price(path: &str) -> u32 {
    let n: u32 = path
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if path.starts_with("/orders/") && n % 2 == 0 {
        2
    } else {
        1
    }
}

#[tokio::test]
async fn a_baseline_separates_regressions_from_noise_per_endpoint() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    stamped(&main, 0, |_| 1);
    let baseline = MockBackend::start(Reply::ok("")).await;
    stamped(&baseline, 1_000_000, |_| 1);
    let candidate = MockBackend::start(Reply::ok("")).await;
    stamped(&candidate, 2_000_000, candidate_price);
    proxy
        .put_ok(&format!(
            "url={}&compare=true&role=baseline",
            baseline.url()
        ))
        .await;
    proxy
        .put_ok(&format!("url={}&compare=true", candidate.url()))
        .await;
    for i in 0..40 {
        get(&proxy.url(&format!("/orders/{i}"))).await;
        get(&proxy.url(&format!("/users/{i}"))).await;
    }
    for m in [&baseline, &candidate] {
        for template in ["/orders/{id}", "/users/{id}"] {
            endpoint(&proxy, &m.url(), "GET", template, 40).await;
        }
    }
    let orders = endpoint(&proxy, &candidate.url(), "GET", "/orders/{id}", 40).await;
    assert_eq!(
        orders["regressions"],
        json!([{"field": "/price", "count": 20, "baseline_count": 0}]),
        "{orders}"
    );
    assert_eq!(
        orders["noise"],
        json!([{"field": "/ts", "count": 40, "baseline_count": 40}])
    );
    let users = endpoint(&proxy, &candidate.url(), "GET", "/users/{id}", 40).await;
    assert_eq!(users["regressions"], json!([]), "{users}");
    assert_eq!(
        users["noise"],
        json!([{"field": "/ts", "count": 40, "baseline_count": 40}])
    );
    // The baseline itself is weighed against nothing.
    for e in endpoints(&proxy, &baseline.url()).await {
        assert_eq!(
            (e["regressions"].clone(), e["noise"].clone()),
            (json!([]), json!([]))
        );
    }
}

/// `GET <admin>/verdict?url=U&<query>`.
async fn verdict(proxy: &TestProxy, url: &str, query: &str) -> Value {
    let resp = get(&proxy.admin_url(&format!("/verdict?url={url}{query}"))).await;
    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
    serde_json::from_slice(&resp.body).expect("a JSON object")
}

#[tokio::test]
async fn the_verdict_fails_on_a_regression_passes_on_noise_and_waits_for_enough_answers() {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    stamped(&main, 0, |_| 1);
    let baseline = MockBackend::start(Reply::ok("")).await;
    stamped(&baseline, 1_000_000, |_| 1);
    let candidate = MockBackend::start(Reply::ok("")).await;
    stamped(&candidate, 2_000_000, candidate_price);
    let fixed = MockBackend::start(Reply::ok("")).await;
    stamped(&fixed, 3_000_000, |_| 1);
    proxy
        .put_ok(&format!(
            "url={}&compare=true&role=baseline",
            baseline.url()
        ))
        .await;
    for m in [&candidate, &fixed] {
        proxy.put_ok(&format!("url={}&compare=true", m.url())).await;
    }
    for i in 0..60 {
        get(&proxy.url(&format!("/orders/{i}"))).await;
    }
    for m in [&baseline, &candidate, &fixed] {
        endpoint(&proxy, &m.url(), "GET", "/orders/{id}", 60).await;
    }
    // Below min_compared (100 by default): undecided.
    let v = verdict(&proxy, &candidate.url(), "").await;
    assert_eq!(
        (v["pass"].clone(), v["compared"].clone()),
        (Value::Null, json!(60)),
        "{v}"
    );
    // The candidate regresses on /price: a fail naming it.
    let v = verdict(&proxy, &candidate.url(), "&min_compared=50").await;
    assert_eq!(v["pass"], false, "{v}");
    let reasons = v["reasons"].to_string();
    assert!(reasons.contains("/orders/{id} /price"), "{reasons}");
    // Without the regression, the timestamp is only noise: a pass.
    let v = verdict(&proxy, &fixed.url(), "&min_compared=50").await;
    assert_eq!(v["pass"], true, "{v}");
    // The baseline differs from main on every answer, all of it noise: it counts no
    // regressions.
    let v = verdict(&proxy, &baseline.url(), "&min_compared=50").await;
    assert_eq!(v["pass"], true, "{v}");
    // A bad threshold is a 400 naming it.
    let resp = get(&proxy.admin_url(&format!(
        "/verdict?url={}&max_mismatch_rate=lots",
        fixed.url()
    )))
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&resp.body).contains("max_mismatch_rate"));
}

/// Runs `trafficmirror verdict ARGS`: its exit code and stdout.
async fn verdict_command(args: Vec<String>) -> (Option<i32>, String) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trafficmirror"))
            .arg("verdict")
            .args(args)
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn the_verdict_subcommand_exits_by_the_verdict() {
    let (_main, proxy) = TestProxy::in_front_of(json_reply(r#"{"v":1}"#), &[]).await;
    let same = MockBackend::start(json_reply(r#"{"v":1}"#)).await;
    let other = MockBackend::start(json_reply(r#"{"v":2}"#)).await;
    for m in [&same, &other] {
        proxy.put_ok(&format!("url={}&compare=true", m.url())).await;
    }
    for i in 0..5 {
        get(&proxy.url(&format!("/a/{i}"))).await;
    }
    for m in [&same, &other] {
        endpoint(&proxy, &m.url(), "GET", "/a/{id}", 5).await;
    }
    let admin = proxy.admin_url("");
    let admin = admin.trim_end_matches('?').to_owned();
    let args = |url: &str, extra: &[&str]| {
        let mut a = vec![
            "--admin".to_owned(),
            admin.clone(),
            "--url".to_owned(),
            url.to_owned(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (code, out) = verdict_command(args(&same.url(), &["--min-compared", "5"])).await;
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = verdict_command(args(&other.url(), &["--min-compared", "5"])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("5 mismatched answers of 5"), "{out}");
    let (code, out) = verdict_command(args(&other.url(), &[])).await;
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("min_compared 100"), "{out}");
    // Usage: --url missing.
    let (code, _) = verdict_command(vec!["--admin".into(), admin.clone()]).await;
    assert_eq!(code, Some(2));
    // A threshold the endpoint refuses, and an endpoint nobody listens on: unreadable.
    let (code, _) = verdict_command(args(&same.url(), &["--max-mismatch-rate", "lots"])).await;
    assert_eq!(code, Some(4));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}/targets", closed.local_addr().unwrap());
    drop(closed);
    let (code, _) = verdict_command(vec!["--admin".into(), gone, "--url".into(), same.url()]).await;
    assert_eq!(code, Some(4));
}

#[tokio::test]
async fn max_error_rate_counts_mirror_errors_in_excess_of_mains() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::status(500), &[]).await;
    let failing = MockBackend::start(Reply::status(503)).await;
    let ok = MockBackend::start(Reply::status(200)).await;
    for m in [&failing, &ok] {
        proxy.put_ok(&format!("url={}&compare=true", m.url())).await;
    }
    for i in 0..4 {
        get(&proxy.url(&format!("/a/{i}"))).await;
    }
    for m in [&failing, &ok] {
        endpoint(&proxy, &m.url(), "GET", "/a/{id}", 4).await;
    }
    // Main fails as often as the failing mirror: no excess. The passing mirror has
    // fewer errors than main. Mismatches are allowed here to look at errors alone.
    let query = "&min_compared=4&max_mismatch_rate=1&max_error_rate=0";
    for m in [&failing, &ok] {
        let v = verdict(&proxy, &m.url(), query).await;
        assert_eq!(v["pass"], true, "{v}");
    }
    let listed = proxy.mirror_json(&failing.url()).await.unwrap();
    assert_eq!(listed["compare"]["errors"], json!({"main": 4, "mirror": 4}));
    // Now main answers: every mirror error is in excess.
    let (_main2, proxy2) = TestProxy::in_front_of(Reply::status(200), &[]).await;
    proxy2
        .put_ok(&format!("url={}&compare=true", failing.url()))
        .await;
    for i in 0..4 {
        get(&proxy2.url(&format!("/a/{i}"))).await;
    }
    endpoint(&proxy2, &failing.url(), "GET", "/a/{id}", 4).await;
    let v = verdict(
        &proxy2,
        &failing.url(),
        "&min_compared=4&max_mismatch_rate=1&max_error_rate=0.5",
    )
    .await;
    assert_eq!(v["pass"], false, "{v}");
    assert!(v["reasons"].to_string().contains("max_error_rate"), "{v}");
}

#[tokio::test]
async fn a_mirror_lines_thresholds_decide_and_the_query_overrides_them() {
    let mirror = MockBackend::start(json_reply(r#"{"v":2,"w":1}"#)).await;
    let line = format!(
        "{} compare=true min_compared=5 max_mismatch_rate=50% max_p99_ratio=1000",
        mirror.url()
    );
    let (_main, proxy) =
        TestProxy::in_front_of(json_reply(r#"{"v":1,"w":1}"#), &["--mirror", &line]).await;
    // The listing shows the thresholds as shares, as they were given.
    let listed = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(listed["options"]["min_compared"], 5, "{listed}");
    assert_eq!(listed["options"]["max_mismatch_rate"], 0.5);
    assert_eq!(listed["options"]["max_error_rate"], Value::Null);
    for i in 0..4 {
        get(&proxy.url(&format!("/a/{i}"))).await;
    }
    endpoint(&proxy, &mirror.url(), "GET", "/a/{id}", 4).await;
    // 4 answers: under the mirror's min_compared of 5, not the default 100.
    let v = verdict(&proxy, &mirror.url(), "").await;
    assert_eq!(v["pass"], Value::Null, "{v}");
    assert!(
        v["reasons"][0].as_str().unwrap().contains("min_compared 5"),
        "{v}"
    );
    // Four answers of ten differ: 40 % is within the mirror's 50 %.
    mirror.set_behavior(|_| json_reply(r#"{"v":1,"w":1}"#));
    for _ in 0..6 {
        get(&proxy.url("/c")).await;
    }
    endpoint(&proxy, &mirror.url(), "GET", "/c", 6).await;
    let v = verdict(&proxy, &mirror.url(), "").await;
    assert_eq!(
        (v["pass"].clone(), v["compared"].clone()),
        (json!(true), json!(10)),
        "{v}"
    );
    assert!(
        v["reasons"]
            .to_string()
            .contains("max_mismatch_rate 50.000 %"),
        "{v}"
    );
    // A query parameter wins over the mirror's option, the others stay.
    let v = verdict(&proxy, &mirror.url(), "&max_mismatch_rate=0.1%25").await;
    assert_eq!(v["pass"], false, "{v}");
    let v = verdict(&proxy, &mirror.url(), "&min_compared=11").await;
    assert_eq!(v["pass"], Value::Null, "{v}");
    // The report decides by the same thresholds.
    let report = get(&proxy.admin_url(&format!("/report?url={}", mirror.url()))).await;
    assert!(
        String::from_utf8_lossy(&report.body).contains("Verdict: <strong>pass</strong>"),
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    // A bad threshold on a mirror line is refused naming it.
    let resp = proxy
        .put(&format!("url={}&max_error_rate=lots", mirror.url()))
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.text().contains("max_error_rate"), "{}", resp.text());
}
