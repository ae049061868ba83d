//! SPEC §2 and the seed README, against the real binary: Go-style flags, environment
//! variables, help, and one-line start-up errors.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

/// The admin base URL from the banner's second line.
fn admin_url(bin: &Binary) -> String {
    let line = &bin.banner[1];
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no admin URL in {line:?}"))
        .to_owned()
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tm-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test]
async fn seed_readme_commands_work_with_go_style_flags() {
    let users = temp_file("users.txt", "user:password\n");
    let bin = Binary::start_with(
        &[
            "-listen",
            "127.0.0.1:0",
            "-targets-address=127.0.0.1:0",
            "-password",
            users.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let admin = admin_url(&bin);
    assert!(admin.ends_with("/targets"), "{admin}");
    assert!(
        bin.banner[2..].iter().all(|l| l.contains("curl -u ")),
        "{:?}",
        bin.banner
    );
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:password")
    );
    let with_auth = [("authorization", auth.as_str())];
    let put = |q: &str| {
        let url = format!("{admin}{q}");
        async move { send(Method::PUT, &url, &with_auth, Bytes::new()).await }
    };
    assert_eq!(
        put("?url=http://firstmirror:8080").await.status,
        StatusCode::OK
    );
    let list = send(Method::GET, &admin, &with_auth, Bytes::new()).await;
    assert_eq!(list.text(), "http://firstmirror:8080\n");
    let denied = get(&admin).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        denied.headers["www-authenticate"],
        "Basic realm=\"trafficmirror\""
    );
    let both = put("?url=http://firstmirror:8080&url=http://secondmirror:8081").await;
    assert_eq!(
        both.text(),
        "http://firstmirror:8080\nhttp://secondmirror:8081\n"
    );
    let del = send(
        Method::DELETE,
        &format!("{admin}?url=http://firstmirror:8080"),
        &with_auth,
        Bytes::new(),
    )
    .await;
    assert_eq!(del.text(), "http://secondmirror:8081\n");
    std::fs::remove_file(users).unwrap();
}

#[tokio::test]
async fn environment_variables_configure_and_flags_win() {
    let bin = Binary::start_with(
        &[],
        &[
            ("TRAFFICMIRROR_LISTEN", "127.0.0.1:0"),
            ("TRAFFICMIRROR_TARGETS", "/ops/mirrors"),
            ("TRAFFICMIRROR_MIRROR", "http://a:1,http://b:2"),
            ("TRAFFICMIRROR_THREADS", "3"),
        ],
    )
    .await;
    assert_eq!(
        get(&bin.url("/ops/mirrors")).await.text(),
        "http://a:1\nhttp://b:2\n"
    );
    if cfg!(target_os = "linux") {
        let workers = || {
            let mut names: Vec<String> = bin
                .thread_names()
                .into_iter()
                .filter(|n| n.starts_with("trafficmirror-"))
                .collect();
            names.sort();
            names
        };
        // A new thread names itself once it first runs.
        eventually("three named worker threads", || async {
            workers().len() >= 3
        })
        .await;
        let workers = workers();
        assert_eq!(
            workers,
            ["trafficmirror-0", "trafficmirror-1", "trafficmirror-2"]
        );
    }

    let bin = Binary::start_with(
        &["--targets", "from-flag"],
        &[
            ("TRAFFICMIRROR_LISTEN", "127.0.0.1:0"),
            ("TRAFFICMIRROR_TARGETS", "from-env"),
        ],
    )
    .await;
    assert!(admin_url(&bin).ends_with("/from-flag"));
    assert_eq!(get(&bin.url("/from-flag")).await.status, StatusCode::OK);

    // On/off flags take the usual spellings from the environment (1/0, yes/no, on/off, true/false).
    let main = MockBackend::start(Reply::ok("ok")).await;
    for (value, preserved) in [("1", true), ("yes", true), ("off", false)] {
        let bin = Binary::start_with(
            &["--main", &main.url()],
            &[
                ("TRAFFICMIRROR_LISTEN", "127.0.0.1:0"),
                ("TRAFFICMIRROR_PRESERVE_HOST", value),
            ],
        )
        .await;
        send(
            Method::GET,
            &bin.url("/"),
            &[("host", "shop.example")],
            Bytes::new(),
        )
        .await;
        let host = main.next().await.header("host").map(str::to_owned);
        assert_eq!(
            host.as_deref() == Some("shop.example"),
            preserved,
            "{value}: {host:?}"
        );
    }
}

/// Runs the binary to completion with `args` (bounded).
fn run(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trafficmirror"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let malformed = temp_file("malformed.txt", "user:password\njustaname\n");
    let missing = std::env::temp_dir().join("tm-cli-does-not-exist.txt");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--main", "not a url"], 2, "--main"),
        (vec!["--main", "ftp://x"], 2, "ftp://x"),
        (vec!["--listen", &busy_addr], 1, &busy_addr),
        (
            vec!["-password", missing.to_str().unwrap()],
            2,
            "password file",
        ),
        (vec!["-password", malformed.to_str().unwrap()], 2, "line 2"),
        (vec!["-bogus"], 2, "-bogus"),
        (vec!["--retry-after", "soon"], 2, "soon"),
        (vec!["--max-body-size", "lots"], 2, "lots"),
        (vec!["--listen", "nonsense"], 2, "--listen"),
        (vec!["--mirror", "http://ok:1,gopher://x"], 2, "gopher://x"),
    ];
    for (args, code, mentions) in cases {
        let (status, _, stderr, took) = run(&args);
        assert_eq!(status, Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("trafficmirror: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(mentions),
            "{args:?} should mention {mentions}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
    }
    std::fs::remove_file(malformed).unwrap();
}

#[test]
fn help_and_version() {
    for flag in ["-h", "--help", "-help"] {
        let (status, stdout, _, _) = run(&[flag]);
        assert_eq!(status, Some(0), "{flag}");
        for needle in [
            "--listen",
            "--targets-address",
            "--password",
            "--retry-after",
            "--mirror",
        ] {
            assert!(stdout.contains(needle), "{flag}: {needle} missing");
        }
    }
    let (status, stdout, _, _) = run(&["-V"]);
    assert_eq!(status, Some(0));
    assert!(stdout.starts_with("trafficmirror "), "{stdout}");
}

#[tokio::test]
async fn banner_shows_admin_endpoint_and_three_curl_commands() {
    let bin = Binary::start(&["--targets", "admin"]).await;
    let admin = admin_url(&bin);
    assert_eq!(admin, format!("http://{}/admin", bin.addr));
    let curls: Vec<&String> = bin.banner[2..].iter().collect();
    assert!(curls[0].contains(&format!("curl {admin}")), "{curls:?}");
    assert!(
        curls[1].contains("-X PUT") && curls[1].contains("?url="),
        "{curls:?}"
    );
    assert!(
        curls[2].contains("-X DELETE") && curls[2].contains("?url="),
        "{curls:?}"
    );
}
