//! `GET <admin>/report?url=U`: the shadow report as one self-contained HTML page.

use bytes::Bytes;
use http::StatusCode;

use crate::support::*;

fn json_reply(body: &str) -> Reply {
    Reply::With(
        StatusCode::OK,
        vec![("content-type", "application/json")],
        Bytes::from(body.to_owned()),
    )
}

#[tokio::test]
async fn the_report_writes_answers_markup_as_text_under_the_page_policy() {
    let (_main, proxy) =
        TestProxy::in_front_of(json_reply(r#"{"v":"<script>window.ran=1</script>"}"#), &[]).await;
    let mirror = MockBackend::start(json_reply(r#"{"v":"<img src=x onerror=alert(1)>"}"#)).await;
    proxy
        .put_ok(&format!("url={}&compare=true", mirror.url()))
        .await;
    for n in 0..3 {
        get(&proxy.url(&format!("/items/{n}"))).await;
    }
    let report = || async {
        get(&proxy.admin_url(&format!("/report?url={}&min_compared=3", mirror.url()))).await
    };
    eventually("three mismatches in the report", || async {
        String::from_utf8_lossy(&report().await.body).contains("<td class=\"n\">3</td>")
    })
    .await;
    let resp = report().await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["content-type"], "text/html; charset=utf-8");
    let page = send(
        http::Method::GET,
        &proxy.admin_url(""),
        &[("accept", "text/html")],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        resp.headers["content-security-policy"],
        page.headers["content-security-policy"]
    );
    assert_eq!(resp.headers["cache-control"], "no-store");
    let html = String::from_utf8(resp.body.to_vec()).unwrap();
    assert!(html.contains("Verdict: <strong>fail</strong>"), "{html}");
    assert!(html.contains("<code>GET /items/{id}</code>"), "{html}");
    assert!(html.contains("<code>/v</code>"), "{html}");
    // The answers' markup is text, and the page has no script or image of its own.
    assert!(
        html.contains("&lt;script&gt;window.ran=1&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    // Self-contained: no attribute that loads anything.
    assert!(!html.contains(" src=\""), "{html}");
    assert!(!html.contains(" href=\""), "{html}");
}

#[tokio::test]
async fn the_report_of_an_unknown_mirror_is_not_found() {
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("ok"), &[]).await;
    let resp = get(&proxy.admin_url("/report?url=http://127.0.0.1:9")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND, "{:?}", resp.body);
}
