//! docs/shadowing.md, "Health": failing, retrying, recovery and removal, end to end with tiny
//! `--retry-after` and `--fail-after`.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::support::*;

async fn state(proxy: &TestProxy, url: &str) -> serde_json::Value {
    proxy.mirror_json(url).await.expect("mirror listed")
}

#[tokio::test]
async fn mirror_goes_failing_retrying_and_alive_again() {
    let (_main, [mirror], proxy) = TestProxy::with_mirrors(
        Reply::ok("main"),
        [Reply::status(503)],
        &["--retry-after", "300ms", "--fail-after", "1h"],
    )
    .await;

    // Five failures, one at a time, make it failing.
    for i in 0..5 {
        send(
            Method::GET,
            &proxy.url(&format!("/f{i}")),
            &[],
            Bytes::new(),
        )
        .await;
        mirror.next().await;
        eventually("failure recorded", || async {
            state(&proxy, &mirror.url()).await["failed"] == i + 1
        })
        .await;
    }
    let m = state(&proxy, &mirror.url()).await;
    assert_eq!(m["state"], "failing", "{m}");
    assert!(m["failing_since"].as_str().unwrap().ends_with('Z'), "{m}");

    // Failing: no traffic, copies dropped.
    send(Method::GET, &proxy.url("/while-failing"), &[], Bytes::new()).await;
    mirror
        .assert_nothing_within(Duration::from_millis(100))
        .await;
    assert_eq!(state(&proxy, &mirror.url()).await["dropped"], 1);

    // After retry-after exactly one trial goes out; it fails: failing again.
    let trial = loop {
        send(Method::GET, &proxy.url("/probe"), &[], Bytes::new()).await;
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), mirror.next()).await {
            break r;
        }
    };
    assert_eq!(trial.uri.path(), "/probe");
    // The counter is bumped just before the health update: wait for both.
    eventually("failed trial recorded, mirror failing again", || async {
        let m = state(&proxy, &mirror.url()).await;
        m["failed"] == 6 && m["state"] == "failing"
    })
    .await;

    // The mirror recovers; the next trial succeeds and it is alive.
    mirror.set_reply(Reply::ok("fine"));
    loop {
        send(Method::GET, &proxy.url("/probe2"), &[], Bytes::new()).await;
        if tokio::time::timeout(Duration::from_millis(50), mirror.next())
            .await
            .is_ok()
        {
            break;
        }
    }
    eventually("alive again", || async {
        state(&proxy, &mirror.url()).await["state"] == "alive"
    })
    .await;
    send(Method::GET, &proxy.url("/after"), &[], Bytes::new()).await;
    assert_eq!(mirror.next().await.uri.path(), "/after");
    assert!(state(&proxy, &mirror.url()).await["failing_since"].is_null());
}

#[tokio::test]
async fn retrying_mirror_gets_exactly_one_request() {
    let (_main, [mirror], proxy) = TestProxy::with_mirrors(
        Reply::ok("main"),
        [Reply::After(
            Duration::from_millis(400),
            Box::new(Reply::status(500)),
        )],
        &["--retry-after", "200ms"],
    )
    .await;
    for _ in 0..5 {
        send(Method::GET, &proxy.url("/f"), &[], Bytes::new()).await;
    }
    eventually("failing", || async {
        state(&proxy, &mirror.url()).await["state"] == "failing"
    })
    .await;
    let before = mirror.count();
    // Hammer it while the trial (which takes 400 ms to fail) is in flight.
    eventually("retrying", || async {
        send(Method::GET, &proxy.url("/r"), &[], Bytes::new()).await;
        state(&proxy, &mirror.url()).await["state"] == "retrying"
    })
    .await;
    for _ in 0..20 {
        send(Method::GET, &proxy.url("/r"), &[], Bytes::new()).await;
    }
    assert_eq!(mirror.count() - before, 1, "one trial while retrying");
}

#[tokio::test]
async fn non_persistent_mirror_is_removed_after_fail_after_and_persistent_is_kept() {
    let dead = format!("http://{}", closed_addr().await);
    let dead_persistent = format!("http://{}", closed_addr().await);
    let (_main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &[
            "--retry-after",
            "300ms",
            "--fail-after",
            "1s",
            "--mirror",
            &dead_persistent,
        ],
    )
    .await;
    proxy.add_mirrors(&[&dead]).await;
    let started = std::time::Instant::now();
    eventually("dead mirror removed", || async {
        send(Method::GET, &proxy.url("/x"), &[], Bytes::new()).await;
        tokio::time::sleep(Duration::from_millis(20)).await; // pace the traffic
        proxy.mirror_json(&dead).await.is_none()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before fail-after"
    );
    let kept = state(&proxy, &dead_persistent).await;
    assert_eq!(kept["persistent"], true);
    assert_ne!(kept["state"], "alive");
}
