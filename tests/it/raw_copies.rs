//! Copies to `http://` mirrors whose answer only counts by its status, written and read
//! without hyper (src/client/raw.rs): the bytes that go out are hyper's, answers are
//! framed as RFC 9112 §6.3 says, and connections are reused only when that is safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// What a [`Scripted`] mirror does with one request.
#[derive(Clone)]
enum Script {
    /// Writes these bytes and waits for the next request.
    Answer(&'static [u8]),
    /// Writes these bytes and closes the connection.
    AnswerThenClose(&'static [u8]),
    /// Writes these bytes and keeps the connection open, reading nothing more.
    AnswerThenHang(&'static [u8]),
}

/// A mirror that speaks raw bytes: records every request as it arrived (with the index
/// of the connection it came on) and answers the n-th request (from 0) by `script(n)`.
struct Scripted {
    port: u16,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<(usize, Vec<u8>)>>,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, script) = (accepted.clone(), Arc::new(script));
        let served = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let (tx, script, served) = (tx.clone(), script.clone(), served.clone());
                tokio::spawn(serve(stream, conn, tx, script, served));
            }
        });
        Scripted {
            port,
            requests: tokio::sync::Mutex::new(rx),
            accepted,
        }
    }

    fn url(&self, suffix: &str) -> String {
        format!("http://127.0.0.1:{}{suffix}", self.port)
    }

    /// The next request received (bounded wait): its connection's index and its bytes.
    async fn next(&self) -> (usize, Vec<u8>) {
        let mut requests = self.requests.lock().await;
        tokio::time::timeout(WAIT, requests.recv())
            .await
            .expect("a request reaches the mirror")
            .expect("the mirror runs")
    }

    /// No further request arrives within a short while.
    async fn nothing_more(&self) {
        let mut requests = self.requests.lock().await;
        let more = tokio::time::timeout(std::time::Duration::from_millis(200), requests.recv());
        assert!(more.await.is_err(), "no further request");
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    tx: mpsc::UnboundedSender<(usize, Vec<u8>)>,
    script: Arc<dyn Fn(usize) -> Script + Send + Sync>,
    served: Arc<AtomicUsize>,
) {
    let mut pending = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut pending).await else {
            return;
        };
        let _ = tx.send((conn, request));
        match script(served.fetch_add(1, Ordering::SeqCst)) {
            Script::Answer(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Script::AnswerThenClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
            Script::AnswerThenHang(bytes) => {
                let _ = stream.write_all(bytes).await;
                std::future::pending::<()>().await;
            }
        }
    }
}

/// One request's bytes (head, and a body by its `content-length`); `None` at the end of
/// the connection.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if pending.len() >= end + 4 + length {
                return Some(pending.drain(..end + 4 + length).collect());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// The mirror's entry in the listing, once `done` says its counters are final.
async fn counters(
    proxy: &TestProxy,
    port: u16,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let find = || async {
        let mirrors = proxy.mirrors_json().await;
        let port = format!(":{port}");
        mirrors
            .into_iter()
            .find(|m| m["url"].as_str().unwrap().contains(&port))
    };
    eventually("the mirror's counters", || async {
        find().await.is_some_and(|m| done(&m) && m["queued"] == 0)
    })
    .await;
    find().await.unwrap()
}

/// A proxy (one worker) with `mirror` added and `requests` GETs sent one after the
/// other, each copy finished before the next; the copies `succeeded` and `failed`.
async fn copies(mirror: &Scripted, requests: u64, flags: &[&str]) -> (u64, u64) {
    let main = MockBackend::start(Reply::ok("main")).await;
    let main_url = main.url();
    // One worker, so one pool: connections can be counted.
    let mut args = vec!["--main", main_url.as_str(), "--threads", "1"];
    args.extend_from_slice(flags);
    let proxy = TestProxy::start(&args).await;
    proxy.add_mirrors(&[&mirror.url("")]).await;
    for n in 1..=requests {
        assert_eq!(get(&proxy.url("/a")).await.status, 200);
        counters(&proxy, mirror.port, |m| {
            m["succeeded"].as_u64().unwrap() + m["failed"].as_u64().unwrap() == n
        })
        .await;
    }
    let m = counters(&proxy, mirror.port, |_| true).await;
    proxy.stop().await;
    (
        m["succeeded"].as_u64().unwrap(),
        m["failed"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_chunked_answer_is_read_to_its_end_and_the_connection_reused() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n";
    let mirror = Scripted::start(|_| Script::Answer(chunked)).await;
    assert_eq!(copies(&mirror, 3, &[]).await, (3, 0));
    assert_eq!(mirror.accepted(), 1, "one connection for the three copies");
}

#[tokio::test]
async fn a_close_delimited_answer_succeeds_and_its_connection_is_not_reused() {
    let mirror =
        Scripted::start(|_| Script::AnswerThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil close")).await;
    assert_eq!(copies(&mirror, 2, &[]).await, (2, 0));
    assert_eq!(mirror.accepted(), 2);
}

#[tokio::test]
async fn an_interim_100_is_skipped_for_the_final_answer() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let mirror = Scripted::start(|_| Script::Answer(answer)).await;
    assert_eq!(copies(&mirror, 2, &[]).await, (2, 0));
    assert_eq!(mirror.accepted(), 1);
}

#[tokio::test]
async fn an_answer_framed_two_ways_is_read_by_transfer_encoding_and_not_reused() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n\
                   2\r\nok\r\n0\r\n\r\n";
    let mirror = Scripted::start(|_| Script::Answer(answer)).await;
    assert_eq!(copies(&mirror, 2, &[]).await, (2, 0));
    assert_eq!(mirror.accepted(), 2);
}

#[tokio::test]
async fn an_invalid_answer_fails_the_copy() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok";
    let mirror = Scripted::start(|_| Script::Answer(answer)).await;
    assert_eq!(copies(&mirror, 2, &[]).await, (0, 2));
    assert_eq!(
        mirror.accepted(),
        2,
        "a connection with a bad answer is not reused"
    );
}

#[tokio::test]
async fn a_connection_the_mirror_closed_while_idle_is_not_used() {
    let mirror = Scripted::start(|_| Script::AnswerThenClose(OK)).await;
    assert_eq!(copies(&mirror, 3, &[]).await, (3, 0));
    for _ in 0..3 {
        mirror.next().await;
    }
    mirror.nothing_more().await; // each copy arrived once
}

#[tokio::test]
async fn a_copy_cut_by_the_timeout_leaves_no_half_read_connection() {
    // The first answer stops half-way through its body; the copy times out.
    let half = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf";
    let mirror = Scripted::start(move |n| match n {
        0 => Script::AnswerThenHang(half),
        _ => Script::Answer(OK),
    })
    .await;
    assert_eq!(
        copies(&mirror, 2, &["--mirror-timeout", "300ms"]).await,
        (1, 1)
    );
    assert_eq!(mirror.next().await.0, 0);
    assert_eq!(
        mirror.next().await.0,
        1,
        "the second copy went on a new connection"
    );
}

#[tokio::test]
async fn a_head_copy_reads_no_body_whatever_its_content_length() {
    let mirror =
        Scripted::start(|_| Script::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")).await;
    let main = MockBackend::start(Reply::ok("")).await;
    let proxy = TestProxy::start(&["--main", &main.url(), "--threads", "1"]).await;
    proxy.add_mirrors(&[&mirror.url("")]).await;
    for n in 1..=2 {
        let answer = send(Method::HEAD, &proxy.url("/h"), &[], Bytes::new()).await;
        assert_eq!(answer.status, 200);
        counters(&proxy, mirror.port, |m| m["succeeded"] == n).await;
    }
    assert!(mirror.next().await.1.starts_with(b"HEAD /h HTTP/1.1\r\n"));
    assert_eq!(mirror.accepted(), 1);
    proxy.stop().await;
}

/// A request as the client sends it: method, path, headers and body.
type Request = (
    Method,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Bytes,
);

/// The bytes a request's copies carry to a plain mirror (written here) and to a
/// comparing one (written by hyper), with each one's `Host` value blanked.
async fn both_paths(
    (flags, prefix, options): (&[&str], &str, &str),
    request: &Request,
) -> (Vec<u8>, Vec<u8>) {
    let plain = Scripted::start(|_| Script::Answer(OK)).await;
    let compared = Scripted::start(|_| Script::Answer(OK)).await;
    let main = MockBackend::start(Reply::ok("ok")).await;
    let main_url = main.url();
    let mut args = vec!["--main", main_url.as_str()];
    args.extend_from_slice(flags);
    let proxy = TestProxy::start(&args).await;
    proxy
        .put_ok(&format!("url={}{options}", plain.url(prefix)))
        .await;
    proxy
        .put_ok(&format!(
            "url={}&compare=true{options}",
            compared.url(prefix)
        ))
        .await;
    let (method, path, headers, body) = request;
    if headers.contains(&("transfer-encoding", "chunked")) {
        // A chunked body: its copy has no length of its own (hyper adds one).
        let mut bytes = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for (name, value) in headers {
            bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        bytes.push_str(&format!("\r\n{:X}\r\n", body.len()));
        let mut bytes = bytes.into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        raw(proxy.addr, &bytes).await;
    } else {
        send(method.clone(), &proxy.url(path), headers, body.clone()).await;
    }
    let blank = |bytes: Vec<u8>, port: u16| {
        let text = String::from_utf8(bytes).unwrap();
        text.replace(&format!("127.0.0.1:{port}"), "MIRROR")
            .into_bytes()
    };
    let ours = blank(plain.next().await.1, plain.port);
    let hypers = blank(compared.next().await.1, compared.port);
    proxy.stop().await;
    (ours, hypers)
}

#[tokio::test]
async fn copies_carry_the_bytes_hyper_writes() {
    let headers = vec![
        ("x-rep", "a"),
        ("accept", "*/*"),
        ("x-rep", "b"),
        ("content-type", "text/plain"),
    ];
    let cases: Vec<Request> = vec![
        (Method::GET, "/x?y=1&z", headers.clone(), Bytes::new()),
        (
            Method::POST,
            "/upload",
            headers.clone(),
            Bytes::from(vec![b'x'; 4096]),
        ),
        (Method::HEAD, "/h", headers.clone(), Bytes::new()),
        (Method::DELETE, "/", vec![], Bytes::new()),
        (Method::PUT, "/p", headers, Bytes::from_static(b"{}")),
        (
            Method::POST,
            "/empty",
            vec![("content-length", "0")],
            Bytes::new(),
        ),
        (
            Method::POST,
            "/chunked",
            vec![("x-a", "1"), ("transfer-encoding", "chunked")],
            Bytes::from_static(b"chunked body"),
        ),
    ];
    for (flags, options) in [
        (&[][..], ""),
        (&["--preserve-host"][..], ""),
        (&[][..], "&set_header=X-Shadow:1"),
        (&[][..], "&remove_header=accept&host=shadow.example:81"),
        (&["--preserve-host"][..], "&host=other.example"),
    ] {
        // A mirror with a path prefix writes its own request line.
        for (prefix, request) in ["", "/pre"]
            .iter()
            .flat_map(|p| cases.iter().map(move |r| (*p, r)))
        {
            let (ours, hypers) = both_paths((flags, prefix, options), request).await;
            let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (method, path, ..) = request;
            assert_eq!(
                show(&ours),
                show(&hypers),
                "{method} {prefix}{path} {flags:?} {options}"
            );
            let line = format!("{method} {prefix}{path} HTTP/1.1\r\n");
            assert!(ours.starts_with(line.as_bytes()), "{}", show(&ours));
            if *path == "/chunked" {
                let end = "content-length: 12\r\n\r\nchunked body";
                assert!(show(&ours).ends_with(end), "{}", show(&ours));
            }
        }
    }
}
