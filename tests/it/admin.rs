//! docs/shadowing.md, "The admin endpoint": the admin endpoint.

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

async fn put(proxy: &TestProxy, query: &str) -> Answer {
    send(Method::PUT, &proxy.admin_url(query), &[], Bytes::new()).await
}

async fn delete(proxy: &TestProxy, query: &str) -> Answer {
    send(Method::DELETE, &proxy.admin_url(query), &[], Bytes::new()).await
}

async fn list(proxy: &TestProxy) -> String {
    let resp = get(&proxy.admin_url("")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text()
}

#[tokio::test]
async fn quick_start_flow_add_list_remove() {
    let proxy = TestProxy::start(&["-targets-address=localhost:1234"]).await;
    assert_eq!(list(&proxy).await, "");
    let resp = put(&proxy, "?url=http://firstmirror:8080").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "http://firstmirror:8080\n");
    assert_eq!(list(&proxy).await, "http://firstmirror:8080\n");
    let resp = delete(&proxy, "?url=http://firstmirror:8080").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(list(&proxy).await, "");

    put(
        &proxy,
        "?url=http://firstmirror:8080&url=http://secondmirror:8081",
    )
    .await;
    assert_eq!(
        list(&proxy).await,
        "http://firstmirror:8080\nhttp://secondmirror:8081\n"
    );
    delete(
        &proxy,
        "?url=http://firstmirror:8080&url=http://secondmirror:8081",
    )
    .await;
    assert_eq!(list(&proxy).await, "");
}

#[tokio::test]
async fn put_and_delete_are_idempotent_and_urls_normalised() {
    let proxy = TestProxy::start(&[]).await;
    put(&proxy, "?url=http://B:1/").await;
    put(&proxy, "?url=http://a:2").await;
    let again = put(&proxy, "?url=HTTP://b:1").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.text(),
        "http://b:1\nhttp://a:2\n",
        "insertion order, no duplicate"
    );
    let absent = delete(&proxy, "?url=http://nothere:9").await;
    assert_eq!(absent.status, StatusCode::OK);
    assert_eq!(absent.text(), "http://b:1\nhttp://a:2\n");
    assert_eq!(
        delete(&proxy, "?url=http://b:1/").await.text(),
        "http://a:2\n"
    );
}

#[tokio::test]
async fn put_or_delete_without_url_is_400() {
    let proxy = TestProxy::start(&[]).await;
    for resp in [put(&proxy, "").await, delete(&proxy, "?other=1").await] {
        assert_eq!(resp.status, StatusCode::BAD_REQUEST);
        assert!(resp.text().contains("url"), "{}", resp.text());
    }
}

#[tokio::test]
async fn put_with_invalid_url_applies_nothing() {
    let proxy = TestProxy::start(&[]).await;
    put(&proxy, "?url=http://keep:1").await;
    for bad in [
        "ftp://x",
        "notaurl",
        "http://h/?q=1",
        "http://u:p@h",
        "http://h/%23frag#frag",
        "ws://socket:1",
    ] {
        let query = format!(
            "?url=http://good:2&url={}",
            url::form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
        );
        let resp = put(&proxy, &query).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.text().contains(bad), "{bad}: {}", resp.text());
        let resp = delete(&proxy, &format!("?url=http://keep:1&url={bad}")).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(list(&proxy).await, "http://keep:1\n");
}

#[tokio::test]
async fn delete_with_an_option_is_400_naming_it_and_removes_nothing() {
    let proxy = TestProxy::start(&[]).await;
    put(&proxy, "?url=http://keep:1").await;
    for (query, option) in [
        ("?url=http://keep:1&persistent=true", "persistent"),
        ("?percent=5&url=http://keep:1", "percent"),
        ("?url=http://keep:1&bogus", "bogus"),
    ] {
        let resp = delete(&proxy, query).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            resp.text(),
            format!("DELETE takes only url: option {option} is not accepted\n")
        );
    }
    // From a form body too.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resp = send(
        Method::DELETE,
        &proxy.admin_url(""),
        &form,
        "url=http://keep:1&compare=true",
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.text().contains("compare"), "{}", resp.text());
    assert_eq!(list(&proxy).await, "http://keep:1\n");
    // `format` chooses the answer's form; it is no option.
    let resp = delete(&proxy, "?url=http://keep:1&format=json").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(list(&proxy).await, "");
}

#[tokio::test]
async fn form_body_parameters_are_accepted() {
    let proxy = TestProxy::start(&[]).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let resp = send(
        Method::PUT,
        &proxy.admin_url(""),
        &form,
        "url=http%3A%2F%2Fone%3A1&url=http://two:2&persistent=true",
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.text(), "http://one:1\nhttp://two:2\n");
    let json = proxy.mirrors_json().await;
    assert!(json.iter().all(|m| m["persistent"] == true));
    let resp = send(
        Method::DELETE,
        &proxy.admin_url(""),
        &form,
        "url=http://one:1",
    )
    .await;
    assert_eq!(resp.text(), "http://two:2\n");
}

#[tokio::test]
async fn json_listing_has_every_field() {
    let proxy = TestProxy::start(&[]).await;
    put(&proxy, "?url=http://one:1").await;
    put(&proxy, "?url=http://two:2&persistent=true").await;
    let by_accept = send(
        Method::GET,
        &proxy.admin_url(""),
        &[("accept", "application/json")],
        Bytes::new(),
    )
    .await;
    assert_eq!(by_accept.headers["content-type"], "application/json");
    let json: Vec<serde_json::Value> = serde_json::from_slice(&by_accept.body).unwrap();
    assert_eq!(
        json,
        proxy.mirrors_json().await,
        "Accept and ?format=json agree"
    );
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["url"], "http://one:1");
    assert_eq!(json[0]["persistent"], false);
    assert_eq!(json[1]["persistent"], true);
    for m in &json {
        assert_eq!(m["state"], "alive");
        assert!(m["failing_since"].is_null());
        for counter in [
            "sent",
            "succeeded",
            "failed",
            "dropped",
            "skipped",
            "queued",
        ] {
            assert_eq!(m[counter], 0, "{counter}");
        }
    }
    // PUT answers in the requested format too.
    let resp = send(
        Method::PUT,
        &proxy.admin_url("?url=http://three:3&format=json"),
        &[],
        Bytes::new(),
    )
    .await;
    let json: Vec<serde_json::Value> = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(json.len(), 3);
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let proxy = TestProxy::start(&[]).await;
    // docs/shadowing.md, "The admin endpoint": GET, PUT, DELETE only; HEAD is an "other method".
    for method in [Method::POST, Method::PATCH, Method::OPTIONS, Method::HEAD] {
        let resp = send(method.clone(), &proxy.admin_url(""), &[], Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(resp.headers["allow"], "GET, PUT, DELETE");
    }
}

fn basic(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

#[tokio::test]
async fn password_protects_every_method() {
    let dir = std::env::temp_dir().join(format!("tm-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.txt");
    std::fs::write(&file, "# ops\nuser:password\nother:s3cret\n").unwrap();
    let proxy = TestProxy::start(&["-password", file.to_str().unwrap()]).await;

    for (creds, method) in [
        (None, Method::GET),
        (Some("user:wrong"), Method::PUT),
        (Some("nobody:password"), Method::DELETE),
    ] {
        let auth = creds.map(basic);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let resp = send(
            method,
            &proxy.admin_url("?url=http://x:1"),
            &headers,
            Bytes::new(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers["www-authenticate"],
            "Basic realm=\"trafficmirror\""
        );
    }
    let ok = basic("user:password");
    let resp = send(
        Method::PUT,
        &proxy.admin_url("?url=http://x:1"),
        &[("authorization", &ok)],
        Bytes::new(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let second = basic("other:s3cret");
    let resp = send(
        Method::GET,
        &proxy.admin_url(""),
        &[("authorization", &second)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        resp.text(),
        "http://x:1\n",
        "only the authorised PUT was applied"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn with_targets_address_main_listener_proxies_the_admin_path() {
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("from main"),
        &["--targets-address", "127.0.0.1:0"],
    )
    .await;
    let resp = get(&proxy.url("/targets")).await;
    assert_eq!(resp.body, "from main");
    assert_eq!(main.next().await.uri.path(), "/targets");
    // ... and the admin listener serves only the admin path.
    assert_eq!(list(&proxy).await, "");
    let other = get(&format!("http://{}/other", proxy.admin_addr)).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    main.assert_nothing_within(std::time::Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn without_targets_address_the_admin_path_is_not_proxied() {
    let (main, proxy) =
        TestProxy::in_front_of(Reply::ok("from main"), &["--targets", "/admin/mirrors"]).await;
    assert_eq!(get(&proxy.url("/admin/mirrors")).await.text(), "");
    assert_eq!(get(&proxy.url("/targets")).await.text(), "from main");
    assert_eq!(main.next().await.uri.path(), "/targets");
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_address_out_with_429() {
    let path = std::env::temp_dir().join(format!("tm-lockout-{}.txt", std::process::id()));
    std::fs::write(&path, "user:password\n").unwrap();
    let proxy = TestProxy::start(&["--password", path.to_str().unwrap()]).await;
    let get = |creds: Option<&str>| {
        let auth = creds.map(basic);
        let url = proxy.admin_url("");
        async move {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            send(Method::GET, &url, &headers, Bytes::new()).await
        }
    };
    // Asking without credentials first (what curl and browsers do) is no failure.
    for _ in 0..20 {
        assert_eq!(get(None).await.status, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..10 {
        assert_eq!(
            get(Some("user:wrong")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // The eleventh attempt, even with the right password, is refused unchecked.
    let locked = get(Some("user:password")).await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.text()
    );
    let retry: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(locked.text().contains("too many failed logins"));
    std::fs::remove_file(path).unwrap();
}
