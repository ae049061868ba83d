//! Comparing a mirror's answers with main's (`compare=true`), end to end: the counts in
//! the JSON listing, the `/mismatches` endpoint, and that the client never waits.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

const JSON: (&str, &str) = ("content-type", "application/json");

fn json_reply(body: &'static str) -> Reply {
    Reply::With(
        StatusCode::OK,
        vec![JSON],
        Bytes::from_static(body.as_bytes()),
    )
}

/// Main answering `main`, a proxy with `extra` flags, and one comparing mirror answering
/// `mirror`, added with `compare=true` and the extra `options` (`&ignore=...`).
async fn setup(
    main: Reply,
    mirror: Reply,
    options: &str,
    extra: &[&str],
) -> (MockBackend, MockBackend, TestProxy) {
    let (main, proxy) = TestProxy::in_front_of(main, extra).await;
    let mirror = MockBackend::start(mirror).await;
    put_comparing(&proxy, &mirror.url(), options).await;
    (main, mirror, proxy)
}

/// Adds `url` as a comparing mirror with the extra `options`.
async fn put_comparing(proxy: &TestProxy, url: &str, options: &str) {
    proxy
        .put_ok(&format!("url={url}&compare=true{options}"))
        .await;
}

/// The listing's `compare` object of the mirror at `url`.
async fn stats(proxy: &TestProxy, url: &str) -> Value {
    let entry = proxy
        .mirror_json(url)
        .await
        .unwrap_or_else(|| panic!("{url} is listed"));
    entry["compare"].clone()
}

/// Waits until `n` copies were compared or counted not compared; returns the stats.
async fn settled(proxy: &TestProxy, url: &str, n: u64) -> Value {
    eventually(&format!("{n} comparisons done at {url}"), || async {
        let s = stats(proxy, url).await;
        s["compared"].as_u64().unwrap_or(0) + s["not_compared"].as_u64().unwrap_or(0) >= n
    })
    .await;
    stats(proxy, url).await
}

/// The `/mismatches` records of `url`.
async fn mismatches(proxy: &TestProxy, url: &str) -> Vec<Value> {
    let resp = get(&proxy.admin_url(&format!("/mismatches?url={url}"))).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.headers["content-type"], "application/json");
    serde_json::from_slice(&resp.body).expect("a JSON array")
}

fn counts(s: &Value) -> (u64, u64, u64) {
    (
        s["compared"].as_u64().unwrap(),
        s["matched"].as_u64().unwrap(),
        s["mismatched"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn same_json_in_another_key_order_spacing_and_number_spelling_matches() {
    let (_main, mirror, proxy) = setup(
        json_reply(r#"{"a":{"b":1,"c":[1,2]},"s":"x"}"#),
        json_reply("{ \"s\" : \"x\",\n  \"a\" : { \"c\" : [ 1.0, 2e0 ], \"b\" : 1 } }"),
        "",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/doc")).await;
    assert_eq!(resp.body, r#"{"a":{"b":1,"c":[1,2]},"s":"x"}"#);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
    assert_eq!(s["not_compared"], 0);
    assert_eq!(
        s["mismatches"],
        json!({"status": 0, "headers": 0, "body": 0})
    );
    assert!(mismatches(&proxy, &mirror.url()).await.is_empty());
}

#[tokio::test]
async fn a_different_json_value_is_a_body_mismatch_listed_with_its_pointer() {
    let (_main, mirror, proxy) = setup(
        json_reply(r#"{"a":{"b":1},"z":true}"#),
        json_reply(r#"{"z":true,"a":{"b":"two"}}"#),
        "",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/thing?q=1")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    assert_eq!(
        s["mismatches"],
        json!({"status": 0, "headers": 0, "body": 1})
    );

    let records = mismatches(&proxy, &mirror.url()).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path_and_query"], "/thing?q=1");
    assert_eq!(
        (r["main_status"].clone(), r["mirror_status"].clone()),
        (json!(200), json!(200))
    );
    assert_eq!(
        r["differs"],
        json!({"status": false, "headers": false, "body": true})
    );
    assert_eq!(
        r["difference"],
        json!({"kind": "json_pointer", "pointer": "/a/b", "main": "1", "mirror": "\"two\""})
    );
    // RFC 3339 UTC with milliseconds.
    let time = r["time"].as_str().expect("a time string");
    assert!(humantime_like(time), "{time}");
}

#[tokio::test]
async fn mismatches_outlive_turning_compare_off_and_a_mirror_that_never_compared_has_none() {
    let (main, mirror, proxy) =
        setup(json_reply(r#"{"v":1}"#), json_reply(r#"{"v":2}"#), "", &[]).await;
    let plain = MockBackend::start(json_reply(r#"{"v":3}"#)).await;
    proxy.add_mirrors(&[&plain.url()]).await;
    get(&proxy.url("/before")).await;
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    assert!(mismatches(&proxy, &plain.url()).await.is_empty());
    // The same mirror with its options replaced: it no longer compares, and keeps what
    // it recorded while it did.
    proxy
        .put_ok(&format!("url={}&compare=false", mirror.url()))
        .await;
    get(&proxy.url("/after")).await;
    assert_eq!(main.next().await.uri.path(), "/before");
    assert_eq!(main.next().await.uri.path(), "/after");
    assert_eq!(mirror.next().await.uri.path(), "/before");
    assert_eq!(mirror.next().await.uri.path(), "/after");
    let records = mismatches(&proxy, &mirror.url()).await;
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path_and_query"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/before"]);
    assert!(stats(&proxy, &mirror.url()).await.is_null());
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn humantime_like(t: &str) -> bool {
    t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn ignored_pointers_with_wildcards_make_those_differences_match() {
    let main_body = r#"{"meta":{"ts":1},"items":[{"id":1,"v":"a"},{"id":2,"v":"b"}]}"#;
    let mirror_body = r#"{"meta":{"ts":2},"items":[{"id":7,"v":"a"},{"id":8,"v":"b"}]}"#;
    let (_main, ignoring, proxy) = setup(
        json_reply(main_body),
        json_reply(mirror_body),
        "&ignore=/meta/ts&ignore=/items/*/id",
        &[],
    )
    .await;
    // The same answers, without `ignore`: they do differ.
    let strict = MockBackend::start(json_reply(mirror_body)).await;
    put_comparing(&proxy, &strict.url(), "").await;

    get(&proxy.url("/one")).await;
    let s = settled(&proxy, &ignoring.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
    let s = settled(&proxy, &strict.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    let records = mismatches(&proxy, &strict.url()).await;
    // Object keys are walked in byte order, so `items` comes before `meta`.
    assert_eq!(
        records[0]["difference"],
        json!({"kind": "json_pointer", "pointer": "/items/0/id", "main": "1", "mirror": "7"})
    );

    // What is not ignored still counts.
    ignoring.set_reply(json_reply(
        r#"{"meta":{"ts":3},"items":[{"id":9,"v":"a"},{"id":9,"v":"B"}]}"#,
    ));
    get(&proxy.url("/two")).await;
    let s = settled(&proxy, &ignoring.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    let records = mismatches(&proxy, &ignoring.url()).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["difference"],
        json!({"kind": "json_pointer", "pointer": "/items/1/v", "main": "\"b\"", "mirror": "\"B\""})
    );
}

#[tokio::test]
async fn a_different_status_is_a_status_mismatch() {
    let (_main, mirror, proxy) = setup(
        json_reply(r#"{"ok":true}"#),
        Reply::With(
            StatusCode::SERVICE_UNAVAILABLE,
            vec![JSON],
            Bytes::from_static(br#"{"ok":true}"#),
        ),
        "",
        &[],
    )
    .await;
    get(&proxy.url("/s")).await;
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    assert_eq!(
        s["mismatches"],
        json!({"status": 1, "headers": 0, "body": 0})
    );
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(r["main_status"], 200);
    assert_eq!(r["mirror_status"], 503);
    assert_eq!(
        r["difference"],
        json!({"kind": "status", "main": 200, "mirror": 503})
    );
}

#[tokio::test]
async fn a_compared_header_that_differs_is_a_headers_mismatch() {
    let body = Bytes::from_static(br#"{"v":1}"#);
    let (_main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![JSON, ("x-version", "1")], body.clone()),
        Reply::With(StatusCode::OK, vec![JSON, ("x-version", "2")], body.clone()),
        "&compare_header=X-Version",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/h")).await;
    assert_eq!(resp.headers["x-version"], "1");
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    assert_eq!(
        s["mismatches"],
        json!({"status": 0, "headers": 1, "body": 0})
    );
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(
        r["difference"],
        json!({"kind": "header", "name": "x-version", "main": "1", "mirror": "2"})
    );

    // The same value: a match.
    mirror.set_reply(Reply::With(
        StatusCode::OK,
        vec![JSON, ("x-version", "1")],
        body,
    ));
    get(&proxy.url("/h")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
}

#[tokio::test]
async fn non_json_bodies_are_compared_byte_for_byte() {
    let text = |body: &'static str| {
        Reply::With(
            StatusCode::OK,
            vec![("content-type", "text/plain")],
            Bytes::from_static(body.as_bytes()),
        )
    };
    let (_main, mirror, proxy) = setup(text("hello world"), text("hello wurld"), "", &[]).await;
    get(&proxy.url("/t")).await;
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 0, 1), "{s}");
    assert_eq!(s["mismatches"]["body"], 1);
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(r["difference"], json!({"kind": "byte_offset", "offset": 7}));

    // A prefix differs at the shorter length.
    mirror.set_reply(text("hello"));
    get(&proxy.url("/t")).await;
    settled(&proxy, &mirror.url(), 2).await;
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(r["difference"], json!({"kind": "byte_offset", "offset": 5}));

    mirror.set_reply(text("hello world"));
    get(&proxy.url("/t")).await;
    let s = settled(&proxy, &mirror.url(), 3).await;
    assert_eq!(counts(&s), (3, 1, 2), "{s}");
}

#[tokio::test]
async fn bodies_over_max_compare_size_are_compared_by_digest() {
    let big = vec![b'x'; 4096];
    let mut other = big.clone();
    other[4000] = b'y';
    let (main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![], Bytes::from(big.clone())),
        Reply::With(StatusCode::OK, vec![], Bytes::from(big.clone())),
        "",
        &["--max-compare-size", "1KiB"],
    )
    .await;
    let resp = get(&proxy.url("/big")).await;
    assert_eq!(resp.body.len(), 4096);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");

    mirror.set_reply(Reply::With(StatusCode::OK, vec![], Bytes::from(other)));
    get(&proxy.url("/big")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    assert_eq!(s["mismatches"]["body"], 1);
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(
        r["difference"],
        json!({"kind": "digest", "main_len": 4096, "mirror_len": 4096})
    );

    // Over the limit JSON is no longer compared structurally: another key order differs.
    let pad = "p".repeat(2000);
    let main_json = format!(r#"{{"a":1,"pad":"{pad}"}}"#);
    let mirror_json = format!(r#"{{"pad":"{pad}","a":1}}"#);
    main.set_reply(Reply::With(
        StatusCode::OK,
        vec![JSON],
        Bytes::from(main_json),
    ));
    mirror.set_reply(Reply::With(
        StatusCode::OK,
        vec![JSON],
        Bytes::from(mirror_json),
    ));
    get(&proxy.url("/big.json")).await;
    let s = settled(&proxy, &mirror.url(), 3).await;
    assert_eq!(counts(&s), (3, 1, 2), "{s}");
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(r["difference"]["kind"], "digest");
    assert_eq!(r["path_and_query"], "/big.json");
}

#[tokio::test]
async fn a_slow_comparing_mirror_never_delays_main_and_is_still_compared() {
    let body = r#"{"slow":false}"#;
    let (_main, mirror, proxy) = setup(
        json_reply(body),
        Reply::After(Duration::from_secs(1), Box::new(json_reply(body))),
        "",
        &[],
    )
    .await;
    // Warm the connection to main, so the measure is main's own time.
    get(&proxy.url("/warm")).await;
    settled(&proxy, &mirror.url(), 1).await;

    // main's answer comes before the mirror's (1 s later).
    let resp = tokio::time::timeout(Duration::from_millis(900), get(&proxy.url("/timed")))
        .await
        .expect("main's answer does not wait for the mirror's");
    assert_eq!(resp.body, body);
    // The mirror has not answered yet: the comparison is still to come.
    assert_eq!(stats(&proxy, &mirror.url()).await["compared"], 1);
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 2, 0), "{s}");
    let mirror_p50 = s["latency_ms"]["mirror"]["p50"].as_f64().unwrap();
    assert!(mirror_p50 >= 1000.0, "{s}");
}

#[tokio::test]
async fn the_mismatches_endpoint_keeps_the_latest_fifty_newest_first() {
    let (_main, mirror, proxy) =
        setup(json_reply(r#"{"n":1}"#), json_reply(r#"{"n":2}"#), "", &[]).await;
    for n in 0..70u64 {
        get(&proxy.url(&format!("/r/{n}"))).await;
        // One at a time, so "newest" is well defined.
        settled(&proxy, &mirror.url(), n + 1).await;
    }
    let s = stats(&proxy, &mirror.url()).await;
    assert_eq!(counts(&s), (70, 0, 70), "{s}");
    let records = mismatches(&proxy, &mirror.url()).await;
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path_and_query"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (20..70).rev().map(|n| format!("/r/{n}")).collect();
    assert_eq!(paths, expected);
}

#[tokio::test]
async fn mismatches_of_a_url_that_is_not_a_mirror_is_404_naming_it() {
    let (_main, _mirror, proxy) = setup(json_reply("{}"), json_reply("{}"), "", &[]).await;
    let unknown = format!("http://{}/elsewhere", closed_addr().await);
    let resp = get(&proxy.admin_url(&format!("/mismatches?url={unknown}"))).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.text().contains(&unknown), "{}", resp.text());
    assert!(resp.text().contains("not a mirror"), "{}", resp.text());
    // Without `url=`: a client error, not a crash.
    let resp = get(&proxy.admin_url("/mismatches")).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
}

#[tokio::test]
async fn the_mismatches_endpoint_requires_the_admin_password() {
    let dir = std::env::temp_dir().join(format!("tm-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.txt");
    std::fs::write(&file, "user:password\n").unwrap();
    let mirror = MockBackend::start(json_reply("{}")).await;
    let (_main, proxy) =
        TestProxy::in_front_of(json_reply("{}"), &["--password", file.to_str().unwrap()]).await;
    // "user:password" in base64.
    let auth = "Basic dXNlcjpwYXNzd29yZA==";
    let resp = send(
        Method::PUT,
        &proxy.admin_url(&format!("?url={}&compare=true", mirror.url())),
        &[("authorization", auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    let url = proxy.admin_url(&format!("/mismatches?url={}", mirror.url()));
    let resp = get(&url).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers["www-authenticate"],
        "Basic realm=\"trafficmirror\""
    );
    let resp = send(
        Method::GET,
        &url,
        &[("authorization", "Basic dXNlcjp3cm9uZw==")], // user:wrong
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    let resp = send(Method::GET, &url, &[("authorization", auth)], Bytes::new()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.body, "[]");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn copies_are_not_compared_when_main_is_unreachable() {
    let main = format!("http://{}", closed_addr().await);
    let mirror = MockBackend::start(json_reply("{}")).await;
    let proxy = TestProxy::start(&["--main", &main]).await;
    put_comparing(&proxy, &mirror.url(), "").await;
    let resp = get(&proxy.url("/down")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(mirror.next().await.uri.path(), "/down");
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(s["not_compared"], 1, "{s}");
    assert_eq!(counts(&s), (0, 0, 0), "{s}");
    assert!(mismatches(&proxy, &mirror.url()).await.is_empty());
}

#[tokio::test]
async fn latency_fields_are_null_before_and_numbers_after_a_comparison() {
    let (_main, mirror, proxy) = setup(
        json_reply("{}"),
        Reply::After(Duration::from_millis(100), Box::new(json_reply("{}"))),
        "",
        &[],
    )
    .await;
    let s = stats(&proxy, &mirror.url()).await;
    for side in ["main", "mirror"] {
        for q in ["p50", "p99"] {
            assert!(s["latency_ms"][side][q].is_null(), "{s}");
        }
    }
    get(&proxy.url("/l")).await;
    let s = settled(&proxy, &mirror.url(), 1).await;
    for side in ["main", "mirror"] {
        for q in ["p50", "p99"] {
            let v = &s["latency_ms"][side][q];
            assert!(v.as_f64().is_some_and(|ms| ms >= 0.0), "{side}.{q}: {s}");
        }
    }
    let mirror_p50 = s["latency_ms"]["mirror"]["p50"].as_f64().unwrap();
    let main_p50 = s["latency_ms"]["main"]["p50"].as_f64().unwrap();
    assert!(mirror_p50 >= 100.0, "{s}");
    assert!(main_p50 < mirror_p50, "{s}");
}

/// `n` objects, each `{"id":i,"name":"item-i","tags":["a","b"]}` (with spaces and keys
/// in reverse order when `reversed`), the name at `change_at` replaced.
fn many_items(n: usize, reversed: bool, change_at: Option<usize>) -> Bytes {
    let items: Vec<String> = (0..n)
        .map(|i| {
            let name = if change_at == Some(i) {
                "changed".to_owned()
            } else {
                format!("item-{i}")
            };
            if reversed {
                format!(r#"{{ "tags": ["a", "b"], "name": "{name}", "id": {i} }}"#)
            } else {
                format!(r#"{{"id":{i},"name":"{name}","tags":["a","b"]}}"#)
            }
        })
        .collect();
    Bytes::from(format!(r#"{{"items":[{}]}}"#, items.join(",")))
}

#[tokio::test]
async fn large_json_answers_arriving_in_many_frames_are_compared_structurally() {
    // About 600 KB: under the default 1 MiB limit, but many frames on each side.
    let n = 13_000;
    let (main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![JSON], many_items(n, false, None)),
        Reply::With(StatusCode::OK, vec![JSON], many_items(n, true, None)),
        "",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/many")).await;
    assert!(resp.body.len() > 500_000, "{}", resp.body.len());
    assert_eq!(resp.body, many_items(n, false, None));
    assert_eq!(main.count(), 1);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");

    mirror.set_reply(Reply::With(
        StatusCode::OK,
        vec![JSON],
        many_items(n, true, Some(12_345)),
    ));
    get(&proxy.url("/many")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(
        r["difference"],
        json!({"kind": "json_pointer", "pointer": "/items/12345/name",
               "main": "\"item-12345\"", "mirror": "\"changed\""})
    );
}

#[tokio::test]
async fn empty_answers_and_request_bodies_are_compared() {
    let (_main, mirror, proxy) = setup(Reply::status(204), Reply::status(204), "", &[]).await;
    let resp = send(Method::POST, &proxy.url("/p"), &[], "payload").await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert_eq!(mirror.next().await.body, "payload");
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");

    mirror.set_reply(Reply::ok("not empty"));
    send(Method::POST, &proxy.url("/p?x=1"), &[], "payload").await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    assert_eq!(s["mismatches"]["status"], 1);
    let r = &mismatches(&proxy, &mirror.url()).await[0];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path_and_query"], "/p?x=1");
    assert_eq!(r["differs"]["body"], true, "{r}");
}

#[tokio::test]
async fn the_mismatches_url_may_be_percent_encoded() {
    let (_main, mirror, proxy) = setup(json_reply("[1]"), json_reply("[2]"), "", &[]).await;
    get(&proxy.url("/e")).await;
    settled(&proxy, &mirror.url(), 1).await;
    let encoded = mirror.url().replace(':', "%3A").replace('/', "%2F");
    let resp = get(&proxy.admin_url(&format!("/mismatches?url={encoded}"))).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let records: Vec<Value> = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["difference"]["pointer"], "/0");
}

#[tokio::test]
async fn captured_answers_give_their_bytes_back_to_the_budget() {
    let body = Bytes::from(vec![b'z'; 64 * 1024]);
    let (_main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![], body.clone()),
        Reply::With(StatusCode::OK, vec![], body),
        "",
        &[],
    )
    .await;
    for n in 1..=5u64 {
        get(&proxy.url("/b")).await;
        settled(&proxy, &mirror.url(), n).await;
    }
    let s = stats(&proxy, &mirror.url()).await;
    assert_eq!(counts(&s), (5, 5, 0), "{s}");
    proxy.budget_drained("the budget is back to zero").await;
}

#[tokio::test]
async fn an_ordered_comparing_mirror_compares_every_copy() {
    let (_main, mirror, proxy) = setup(
        json_reply(r#"{"o":1}"#),
        Reply::After(
            Duration::from_millis(50),
            Box::new(json_reply(r#"{"o":2}"#)),
        ),
        "&ordered=true",
        &[],
    )
    .await;
    for n in 0..5 {
        get(&proxy.url(&format!("/o/{n}"))).await;
    }
    let s = settled(&proxy, &mirror.url(), 5).await;
    assert_eq!(counts(&s), (5, 0, 5), "{s}");
    let records = mismatches(&proxy, &mirror.url()).await;
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path_and_query"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/o/4", "/o/3", "/o/2", "/o/1", "/o/0"]);
}

#[tokio::test]
async fn main_answer_kept_for_a_slow_comparing_mirror_counts_against_the_budget() {
    let body = Bytes::from(vec![b'k'; 64 * 1024]);
    let (_main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![], body.clone()),
        Reply::After(
            Duration::from_secs(1),
            Box::new(Reply::With(StatusCode::OK, vec![], body)),
        ),
        "",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/kept")).await;
    assert_eq!(resp.body.len(), 64 * 1024);
    // Main's answer is kept until the mirror's arrives, a second later.
    let held = proxy.buffered_bytes().await;
    assert!(
        held >= 64 * 1024,
        "buffered_bytes {held} while main's answer is kept"
    );
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
    proxy.budget_drained("the budget is back to zero").await;
}

#[tokio::test]
async fn a_mirror_answer_waiting_for_main_counts_against_the_budget() {
    let body = Bytes::from(vec![b'w'; 64 * 1024]);
    let (_main, mirror, proxy) = setup(
        Reply::After(
            Duration::from_secs(1),
            Box::new(Reply::With(StatusCode::OK, vec![], body.clone())),
        ),
        Reply::With(StatusCode::OK, vec![], body),
        "",
        &[],
    )
    .await;
    let url = proxy.url("/late-main");
    let client = tokio::spawn(async move { get(&url).await });
    mirror.next().await;
    // The mirror has answered; main answers a second later. Meanwhile the mirror's
    // answer is kept, and counted.
    eventually("the mirror's kept answer is counted", || async {
        proxy.buffered_bytes().await >= 64 * 1024
    })
    .await;
    assert_eq!(stats(&proxy, &mirror.url()).await["compared"], 0);
    let resp = tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
    assert_eq!(resp.body.len(), 64 * 1024);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
    proxy.budget_drained("the budget is back to zero").await;
}

#[tokio::test]
async fn an_answer_past_max_compare_size_keeps_no_bytes_of_the_budget() {
    let body = Bytes::from(vec![b'd'; 256 * 1024]);
    let (_main, mirror, proxy) = setup(
        Reply::With(StatusCode::OK, vec![], body.clone()),
        Reply::After(
            Duration::from_secs(1),
            Box::new(Reply::With(StatusCode::OK, vec![], body)),
        ),
        "",
        &["--max-compare-size", "32KiB"],
    )
    .await;
    let resp = get(&proxy.url("/digest-only")).await;
    assert_eq!(resp.body.len(), 256 * 1024);
    // Main's answer arrives in frames: the first ones are kept, then past the limit
    // only a digest is, and the kept bytes go back to the budget.
    assert_eq!(proxy.buffered_bytes().await, 0);
    assert_eq!(stats(&proxy, &mirror.url()).await["compared"], 0);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
}

#[tokio::test]
async fn a_client_leaving_before_main_s_answer_ends_leaves_the_copy_not_compared() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A main that sends its head and part of its body, then stalls.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = listener.local_addr().unwrap();
    let main = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        // Hold the connection open until the test ends.
        let _ = s.read(&mut buf).await;
    });
    let mirror = MockBackend::start(Reply::ok("0123456789")).await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main_addr}")]).await;
    put_comparing(&proxy, &mirror.url(), "").await;

    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /partial HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut client, "0123456789").await;
    mirror.next().await;
    drop(client);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(s["not_compared"], 1, "{s}");
    assert_eq!(counts(&s), (0, 0, 0), "{s}");
    main.abort();
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    Bytes::from(e.finish().unwrap())
}

/// `{"a":1,"b":[true,null]}` compressed by `brotli -c` (the brotli 1.0.9 tool).
const BR_JSON: &[u8] = &[
    0x0f, 0x0b, 0x80, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x2c, 0x22, 0x62, 0x22, 0x3a, 0x5b, 0x74,
    0x72, 0x75, 0x65, 0x2c, 0x6e, 0x75, 0x6c, 0x6c, 0x5d, 0x7d, 0x03,
];

fn encoded_json(coding: &'static str, body: Bytes) -> Reply {
    Reply::With(
        StatusCode::OK,
        vec![JSON, ("content-encoding", coding)],
        body,
    )
}

#[tokio::test]
async fn gzip_answers_are_compared_decoded() {
    let (main, mirror, proxy) = setup(
        encoded_json("gzip", gzip(br#"{"a":1,"b":[true,null],"c":"x"}"#)),
        encoded_json("gzip", gzip(br#"{"c":"x","b":[true,null],"a":1}"#)),
        "",
        &[],
    )
    .await;
    let resp = get(&proxy.url("/z")).await;
    assert_eq!(resp.headers["content-encoding"], "gzip");
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");

    // A difference is found where it is in the JSON, not at a byte of the gzip stream.
    mirror.set_reply(encoded_json(
        "gzip",
        gzip(br#"{"c":"y","b":[true,null],"a":1}"#),
    ));
    get(&proxy.url("/z")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    assert_eq!(
        mismatches(&proxy, &mirror.url()).await[0]["difference"],
        json!({"kind": "json_pointer", "pointer": "/c", "main": "\"x\"", "mirror": "\"y\""})
    );

    // Non-JSON bodies: the offset counts decoded bytes.
    main.set_reply(encoded_json("gzip", gzip(b"hello world")));
    mirror.set_reply(encoded_json("gzip", gzip(b"hello World")));
    get(&proxy.url("/text")).await;
    settled(&proxy, &mirror.url(), 3).await;
    assert_eq!(
        mismatches(&proxy, &mirror.url()).await[0]["difference"],
        json!({"kind": "byte_offset", "offset": 6})
    );
}

#[tokio::test]
async fn an_encoded_and_an_identity_answer_compare_by_body_and_by_header_only_if_named() {
    let identity = || json_reply(r#"{"b":[true,null],"a":1}"#);
    let (main, mirror, proxy) = setup(
        encoded_json("gzip", gzip(br#"{"a":1,"b":[true,null]}"#)),
        identity(),
        "",
        &[],
    )
    .await;
    get(&proxy.url("/x")).await;
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");

    // br, and the encoding compared when Content-Encoding is a compared header.
    main.set_reply(encoded_json("br", Bytes::from_static(BR_JSON)));
    put_comparing(
        &proxy,
        &mirror.url(),
        "&compare_header=Content-Type&compare_header=Content-Encoding",
    )
    .await;
    get(&proxy.url("/x")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    assert_eq!(
        s["mismatches"],
        json!({"status": 0, "headers": 1, "body": 0})
    );
    assert_eq!(
        mismatches(&proxy, &mirror.url()).await[0]["difference"],
        json!({"kind": "header", "name": "content-encoding", "main": "br", "mirror": null})
    );
    mirror.set_reply(encoded_json("br", Bytes::from_static(BR_JSON)));
    get(&proxy.url("/x")).await;
    let s = settled(&proxy, &mirror.url(), 3).await;
    assert_eq!(counts(&s), (3, 2, 1), "{s}");
}

#[tokio::test]
async fn a_compressed_answer_that_decodes_past_max_compare_size_is_compared_by_digest() {
    // 64 MiB of zeros in about 64 KiB of gzip (64 members of 1 MiB), against a 1 MiB
    // limit and a 4 MiB budget: decoding stops at the limit, and the gzip bytes are
    // compared by length and digest.
    let bomb = Bytes::from(gzip(&vec![0; 1 << 20]).repeat(64));
    let (_main, mirror, proxy) = setup(
        encoded_json("gzip", bomb.clone()),
        encoded_json("gzip", bomb.clone()),
        "",
        &["--max-compare-size", "1MiB", "--max-buffered-bytes", "4MiB"],
    )
    .await;
    let resp = get(&proxy.url("/bomb")).await;
    assert_eq!(resp.body, bomb);
    let s = settled(&proxy, &mirror.url(), 1).await;
    assert_eq!(counts(&s), (1, 1, 0), "{s}");
    assert_eq!(s["not_compared"], 0, "{s}");

    let mut other = bomb.to_vec();
    other.truncate(other.len() - gzip(&vec![0; 1 << 20]).len());
    let other_len = other.len();
    mirror.set_reply(encoded_json("gzip", Bytes::from(other)));
    get(&proxy.url("/bomb")).await;
    let s = settled(&proxy, &mirror.url(), 2).await;
    assert_eq!(counts(&s), (2, 1, 1), "{s}");
    assert_eq!(
        mismatches(&proxy, &mirror.url()).await[0]["difference"],
        json!({"kind": "digest", "main_len": bomb.len(), "mirror_len": other_len})
    );
    proxy.budget_drained("comparison memory given back").await;
}
