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
