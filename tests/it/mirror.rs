//! docs/shadowing.md, "How requests are handled": what mirrors receive, and that they
//! cannot hurt the main path.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::channel::Channel;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::*;

/// Main plus two recording mirrors, the second with a path prefix.
async fn setup(extra: &[&str]) -> (MockBackend, MockBackend, MockBackend, TestProxy) {
    let (main, proxy) = TestProxy::in_front_of(Reply::ok("main"), extra).await;
    let m1 = MockBackend::start(Reply::ok("m1")).await;
    let m2 = MockBackend::start(Reply::ok("m2")).await;
    proxy
        .add_mirrors(&[&m1.url(), &format!("{}/shadow", m2.url())])
        .await;
    (main, m1, m2, proxy)
}

#[tokio::test]
async fn every_mirror_gets_each_request_once_with_method_path_query_and_body() {
    let (main, m1, m2, proxy) = setup(&[]).await;
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let cases = [
        (Method::GET, "/get?a=1", Bytes::new()),
        (
            Method::POST,
            "/post?b=2",
            Bytes::from_static(b"fixed length body"),
        ),
        (Method::PUT, "/put/big", big.clone()),
        (Method::DELETE, "/thing/9", Bytes::new()),
    ];
    for (method, path, body) in cases {
        let resp = send(
            method.clone(),
            &proxy.url(path),
            &[("x-case", path)],
            body.clone(),
        )
        .await;
        assert_eq!(resp.body, "main");
        let at_main = main.next().await;
        assert_eq!(at_main.body, body);
        for (mirror, prefix) in [(&m1, ""), (&m2, "/shadow")] {
            let got = mirror.next().await;
            assert_eq!(got.method, method);
            assert_eq!(
                got.uri.path_and_query().unwrap().as_str(),
                format!("{prefix}{path}")
            );
            assert_eq!(got.header("x-case"), Some(path));
            assert_eq!(got.header("host"), Some(mirror.addr.to_string().as_str()));
            assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
            assert_eq!(got.body.len(), body.len(), "{method} {path}");
            assert_eq!(got.body, body);
        }
    }
    for mirror in [&m1, &m2] {
        mirror
            .assert_nothing_within(Duration::from_millis(100))
            .await;
    }
}

#[tokio::test]
async fn chunked_request_body_is_mirrored_whole() {
    let (main, m1, m2, proxy) = setup(&[]).await;
    let chunked = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes>>();
    let (mut tx, body) = Channel::<Bytes>::new(4);
    let req = http::Request::post(proxy.url("/upload"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { chunked.request(req).await });
    for part in ["alpha-", "beta-", "gamma"] {
        tx.send_data(Bytes::from_static(part.as_bytes()))
            .await
            .unwrap();
    }
    drop(tx);
    let resp = answer_of(pending).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(main.next().await.body, "alpha-beta-gamma");
    for mirror in [&m1, &m2] {
        let got = mirror.next().await;
        assert_eq!(got.body, "alpha-beta-gamma");
        assert_eq!(got.header("content-length"), Some("16"));
        assert!(got.header("transfer-encoding").is_none());
    }
}

#[tokio::test]
async fn requests_are_mirrored_even_when_main_is_down() {
    let m1 = MockBackend::start(Reply::ok("m1")).await;
    let main_addr = closed_addr().await;
    let proxy = TestProxy::start(&["--main", &format!("http://{main_addr}")]).await;
    proxy.add_mirrors(&[&m1.url()]).await;
    let resp = send(Method::POST, &proxy.url("/x"), &[], "payload").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(m1.next().await.body, "payload");
}

#[tokio::test]
async fn body_larger_than_max_body_size_reaches_main_but_is_not_mirrored() {
    let (main, m1, _m2, proxy) = setup(&["--max-body-size", "1KiB"]).await;
    let body = Bytes::from(vec![b'y'; 2048]);
    send(Method::POST, &proxy.url("/big"), &[], body.clone()).await;
    assert_eq!(main.next().await.body, body);
    // Chunked, so the size is only known after reading past the limit.
    let chunked = Client::builder(TokioExecutor::new()).build_http::<Channel<Bytes>>();
    let (mut tx, stream) = Channel::<Bytes>::new(4);
    let req = http::Request::post(proxy.url("/big-chunked"))
        .body(stream)
        .unwrap();
    let pending = tokio::spawn(async move { chunked.request(req).await });
    for _ in 0..4 {
        tx.send_data(Bytes::from(vec![b'z'; 512])).await.unwrap();
    }
    drop(tx);
    answer_of(pending).await;
    assert_eq!(main.next().await.body, Bytes::from(vec![b'z'; 2048]));
    // Exactly at the limit is still mirrored.
    send(Method::POST, &proxy.url("/fits"), &[], vec![b'k'; 1024]).await;
    assert_eq!(m1.next().await.uri.path(), "/fits");
    m1.assert_nothing_within(Duration::from_millis(100)).await;
    let json = proxy.mirror_json(&m1.url()).await.unwrap();
    assert_eq!(json["skipped"], 2);
    assert_eq!(json["sent"], 1);
}

#[tokio::test]
async fn counters_are_exact_under_concurrency() {
    let (main, m1, m2, proxy) = setup(&[]).await;
    const N: usize = 200;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let url = proxy.url(&format!("/n/{i}"));
            tokio::spawn(async move { send(Method::POST, &url, &[], format!("body {i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    for mirror in [m1.url(), format!("{}/shadow", m2.url())] {
        let url = mirror.clone();
        eventually("all copies finished", || {
            let proxy = &proxy;
            let url = url.clone();
            async move {
                let m = proxy.mirror_json(&url).await.unwrap();
                m["succeeded"] == N && m["queued"] == 0
            }
        })
        .await;
        let m = proxy.mirror_json(&mirror).await.unwrap();
        assert_eq!(m["sent"], N);
        assert_eq!(m["failed"], 0);
        assert_eq!(m["dropped"], 0);
    }
    assert_eq!(main.count(), N);
    assert_eq!(m1.count(), N);
    assert_eq!(m2.count(), N);
}

/// A mirror that accepts connections and never answers.
async fn hung_mirror() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // keep it open, say nothing
        }
    });
    (url, task)
}

/// A mirror that reads the request and resets the connection.
async fn resetting_mirror() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                #[allow(deprecated)] // zero linger is exactly what a reset needs
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    (url, task)
}

async fn median_latency(proxy: &TestProxy, n: usize) -> Duration {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let resp = send(Method::POST, &proxy.url(&format!("/lat/{i}")), &[], "x").await;
        assert_eq!(resp.status, StatusCode::OK);
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[n / 2]
}

#[tokio::test]
async fn bad_mirrors_add_nothing_to_main_latency() {
    let main = MockBackend::start(Reply::ok("main")).await;
    let slow = MockBackend::start(Reply::After(
        Duration::from_secs(2),
        Box::new(Reply::ok("slow")),
    ))
    .await;
    let (hung, _h) = hung_mirror().await;
    let (reset, _r) = resetting_mirror().await;
    let refused = format!("http://{}", closed_addr().await);
    for (name, mirror) in [
        ("slow", slow.url()),
        ("hung", hung),
        ("refusing", refused),
        ("resetting", reset),
    ] {
        let proxy = TestProxy::start(&["--main", &main.url(), "--mirror-timeout", "30s"]).await;
        let without = median_latency(&proxy, 30).await;
        proxy.add_mirrors(&[&mirror]).await;
        let with = median_latency(&proxy, 30).await;
        println!("{name} mirror: median main latency {without:?} without, {with:?} with");
        // Generous bound: a mirror on the main path would add 2 s (slow) or hang.
        assert!(
            with < without * 3 + Duration::from_millis(20),
            "{name}: {with:?} with the mirror vs {without:?} without"
        );
        let m = proxy.mirror_json(&mirror).await.unwrap();
        assert!(m["sent"].as_u64().unwrap() >= 1, "{name}: {m}");
    }
}

#[tokio::test]
async fn burst_to_hung_mirror_stays_within_the_queue_bound() {
    let (hung, _h) = hung_mirror().await;
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &["--max-queued-requests", "50", "--mirror-timeout", "60s"],
    )
    .await;
    proxy.add_mirrors(&[&hung]).await;
    const N: usize = 2000;
    const CONCURRENCY: usize = 50;
    let url = proxy.url("/burst");
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..N / CONCURRENCY {
                    if send(Method::GET, &url, &[], Bytes::new()).await.status == StatusCode::OK {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut served = 0;
    for w in workers {
        served += tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(served, N, "main served every request");
    assert_eq!(main.count(), N);
    let m = proxy.mirror_json(&hung).await.unwrap();
    assert_eq!(m["queued"], 50, "{m}");
    assert_eq!(m["sent"], 50, "{m}");
    assert_eq!(m["dropped"], N - 50, "{m}");
    assert_eq!(m["state"], "alive", "nothing has failed yet: {m}");
}

#[tokio::test]
async fn queue_bound_counts_in_flight_copies_at_the_mirror() {
    let (_main, [slow], proxy) = TestProxy::with_mirrors(
        Reply::ok("main"),
        [Reply::After(
            Duration::from_millis(300),
            Box::new(Reply::ok("m")),
        )],
        &["--max-queued-requests", "5"],
    )
    .await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = proxy.url("/q");
            tokio::spawn(async move { send(Method::GET, &url, &[], Bytes::new()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    eventually("copies drained", || async {
        proxy.mirror_json(&slow.url()).await.unwrap()["queued"] == 0
    })
    .await;
    assert!(slow.max_in_flight.load(Ordering::SeqCst) <= 5);
    let m = proxy.mirror_json(&slow.url()).await.unwrap();
    assert_eq!(
        m["sent"].as_u64().unwrap() + m["dropped"].as_u64().unwrap(),
        40,
        "{m}"
    );
    assert_eq!(m["succeeded"], m["sent"], "{m}");
}

/// `succeeded + failed + queued <= sent` in every listing and every scrape taken while
/// copies come and go, and equality once they are done (docs/shadowing.md, "The admin endpoint").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_scrape_never_count_a_copy_twice_under_load() {
    let mirror = MockBackend::start(Reply::ok("m")).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &[]).await;
    // Comparing: a copy stays in its task a little longer after its outcome.
    proxy
        .put_ok(&format!("url={}&compare=true", mirror.url()))
        .await;
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 150;
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = proxy.url(&format!("/load/{c}"));
            tokio::spawn(async move {
                for _ in 0..REQUESTS {
                    assert_eq!(get(&url).await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    let scrape_url = proxy.admin_url("/metrics");
    // The value of the one sample line that starts with `start`.
    let sample = |text: &str, start: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(start));
        let value = line.and_then(|l| l.rsplit(' ').next()?.parse().ok());
        value.unwrap_or_else(|| panic!("{start} in {text}"))
    };
    let copies = |outcome: &str| {
        format!(
            "trafficmirror_mirror_copies_total{{mirror=\"{}\",outcome=\"{outcome}\"}}",
            mirror.url()
        )
    };
    let (mut readings, mut busy) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !load.iter().all(|t| t.is_finished()) && Instant::now() < deadline {
        let m = proxy.mirror_json(&mirror.url()).await.unwrap();
        let n = |k: &str| m[k].as_u64().unwrap();
        let (sent, done, queued) = (n("sent"), n("succeeded") + n("failed"), n("queued"));
        assert!(done + queued <= sent, "listing reading {readings}: {m}");
        busy += usize::from(queued > 0);
        let text = get(&scrape_url).await.text();
        let (sent, queued) = (
            sample(&text, &copies("sent")),
            sample(&text, "trafficmirror_mirror_queued{"),
        );
        let done = sample(&text, &copies("succeeded")) + sample(&text, &copies("failed"));
        assert!(done + queued <= sent, "scrape reading {readings}: {text}");
        readings += 1;
    }
    for t in load {
        t.await.unwrap();
    }
    assert!(
        busy > 0,
        "no reading saw a copy in flight ({readings} readings)"
    );
    let total = (CLIENTS * REQUESTS) as u64;
    eventually("every copy finished", || async {
        let m = proxy.mirror_json(&mirror.url()).await.unwrap();
        m["queued"] == 0 && m["succeeded"] == total
    })
    .await;
    let m = proxy.mirror_json(&mirror.url()).await.unwrap();
    assert_eq!(m["sent"], total, "{m}");
}
