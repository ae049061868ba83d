//! The command line and the Go tool's commands (docs/go-tool.md), against the real binary:
//! Go-style flags, environment variables, the config file, help, completions and the man
//! page, JSON logs, and one-line start-up errors.

use std::time::Duration;

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
async fn go_tool_commands_work_with_go_style_flags() {
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

/// Runs the binary to completion with `args` in a fresh sandbox (bounded).
fn run(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    run_in(&Sandbox::new(), args, &[])
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
        let (status, _, stderr, _) = run(&args);
        assert_eq!(status, Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("trafficmirror: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(mentions),
            "{args:?} should mention {mentions}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    std::fs::remove_file(malformed).unwrap();
}

#[test]
fn a_zero_mirror_timeout_is_refused_from_flag_environment_and_config_file() {
    let refused = |sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)], file: bool| {
        let (status, _, stderr, took) = run_in(sandbox, args, env);
        assert_eq!(status, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("trafficmirror: invalid value for --mirror-timeout"),
            "{stderr}"
        );
        assert_eq!(stderr.contains("trafficmirror.yaml"), file, "{stderr}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
    };
    for zero in ["0", "0s", "0ms"] {
        refused(&Sandbox::new(), &["--mirror-timeout", zero], &[], false);
        refused(
            &Sandbox::new(),
            &[],
            &[("TRAFFICMIRROR_MIRROR_TIMEOUT", zero)],
            false,
        );
        let sandbox = Sandbox::new();
        sandbox.write(
            "work/trafficmirror.yaml",
            &format!("mirror-timeout: {zero}\n"),
        );
        refused(&sandbox, &[], &[], true);
    }
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

/// `--version` names the version, the commit (that of the checkout the test runs in, so
/// a commit since the last build shows up) and the build date.
#[test]
fn version_names_the_commit_and_the_build_date() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    let commit = match head.as_deref().and_then(|out| out.split_once('\n')) {
        Some((top, hash))
            if std::fs::canonicalize(top).ok()
                == std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok() =>
        {
            hash.trim().to_owned()
        }
        // Not a git checkout of its own (an unpacked crate): the build says so.
        _ => "unknown".to_owned(),
    };
    for flag in ["--version", "-V", "-version"] {
        let (status, stdout, stderr, _) = run(&[flag]);
        assert_eq!(status, Some(0), "{flag}: {stderr}");
        let line = stdout.strip_suffix('\n').unwrap_or(&stdout);
        let (head, date) = line
            .split_once(", built ")
            .unwrap_or_else(|| panic!("{flag}: no build date in {stdout:?}"));
        assert_eq!(
            head,
            format!(
                "trafficmirror {} (commit {commit}",
                env!("CARGO_PKG_VERSION")
            ),
            "{flag}"
        );
        let date = date.strip_suffix(')').expect("closing parenthesis");
        let parts: Vec<u32> = date.split('-').filter_map(|p| p.parse().ok()).collect();
        assert!(
            date.len() == 10 && matches!(parts[..], [year, 1..=12, 1..=31] if year >= 2020),
            "{flag}: build date {date:?} is not YYYY-MM-DD"
        );
    }
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

// ===== the config file =====

/// The admin path the banner names, e.g. `/from-file`.
fn admin_path(bin: &Binary) -> String {
    let url = admin_url(bin);
    url.trim_start_matches("http://")
        .split_once('/')
        .map(|(_, path)| format!("/{path}"))
        .unwrap_or_else(|| panic!("no path in {url}"))
}

#[tokio::test]
async fn config_file_in_the_working_directory_is_used() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "work/trafficmirror.yaml",
        "# settings for the test\n\
         listen: 127.0.0.1:0\n\
         targets: /from-file\n\
         mirror: [http://a:1, 'http://b:2']\n\
         retry-after: 1\n",
    );
    // Also in HOME, but the working directory's file comes first.
    sandbox.write(
        "home/.trafficmirror/trafficmirror.yaml",
        "listen: 127.0.0.1:0\ntargets: from-home\n",
    );
    let bin = Binary::start_in(sandbox, &[], &[]).await;
    assert_eq!(admin_path(&bin), "/from-file");
    assert_eq!(
        get(&bin.url("/from-file")).await.text(),
        "http://a:1\nhttp://b:2\n"
    );
}

#[tokio::test]
async fn config_file_in_home_is_used_when_the_working_directory_has_none() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "home/.trafficmirror/trafficmirror.yaml",
        "listen: 127.0.0.1:0\ntargets: from-home\nmirror: http://h:1,http://h:2\n",
    );
    let bin = Binary::start_in(sandbox, &[], &[]).await;
    assert_eq!(admin_path(&bin), "/from-home");
    assert_eq!(
        get(&bin.url("/from-home")).await.text(),
        "http://h:1\nhttp://h:2\n"
    );
}

#[tokio::test]
async fn environment_and_flags_win_over_the_config_file() {
    let file = "listen: 127.0.0.1:0\ntargets: from-file\nmirror: [http://file:1]\n";

    let sandbox = Sandbox::new();
    sandbox.write("work/trafficmirror.yaml", file);
    let bin = Binary::start_in(
        sandbox,
        &[],
        &[
            ("TRAFFICMIRROR_TARGETS", "from-env"),
            ("TRAFFICMIRROR_MIRROR", "http://env:1"),
        ],
    )
    .await;
    assert_eq!(admin_path(&bin), "/from-env");
    assert_eq!(get(&bin.url("/from-env")).await.text(), "http://env:1\n");

    let sandbox = Sandbox::new();
    sandbox.write("work/trafficmirror.yaml", file);
    let bin = Binary::start_in(
        sandbox,
        &["-targets", "from-flag", "-mirror=http://flag:1"],
        &[("TRAFFICMIRROR_TARGETS", "from-env")],
    )
    .await;
    assert_eq!(admin_path(&bin), "/from-flag");
    assert_eq!(get(&bin.url("/from-flag")).await.text(), "http://flag:1\n");

    // --config (here from its variable) names another file and replaces the search.
    let sandbox = Sandbox::new();
    sandbox.write("work/trafficmirror.yaml", file);
    let other = sandbox.write("elsewhere.yaml", "listen: 127.0.0.1:0\ntargets: other\n");
    let bin = Binary::start_in(
        sandbox,
        &[],
        &[("TRAFFICMIRROR_CONFIG", other.to_str().unwrap())],
    )
    .await;
    assert_eq!(admin_path(&bin), "/other");
    assert_eq!(get(&bin.url("/other")).await.text(), "");
}

#[tokio::test]
async fn missing_default_config_files_are_fine() {
    let sandbox = Sandbox::new();
    assert!(!sandbox.work().join("trafficmirror.yaml").exists());
    assert!(!sandbox.home().join(".trafficmirror").exists());
    let bin = Binary::start_in(sandbox, &["--listen", "127.0.0.1:0"], &[]).await;
    assert_eq!(admin_path(&bin), "/targets");
    assert_eq!(get(&bin.url("/targets")).await.status, StatusCode::OK);
}

#[test]
fn bad_config_file_is_refused_with_one_line_naming_file_and_key() {
    // (file content, what the line must mention besides the file)
    let cases = [
        ("listen: [unclosed\n", "not valid YAML"),
        ("bogus-flag: 1\n", "\"bogus-flag\""),
        ("retry-after: soon\n", "\"retry-after\""),
        ("mirror: [http://ok:1, gopher://x]\n", "\"mirror\""),
        ("listen: nonsense\n", "\"listen\""),
        ("passwordFile: /nonexistent/users.txt\n", "\"passwordFile\""),
        ("- just\n- a list\n", "top level"),
    ];
    for (content, mentions) in cases {
        let sandbox = Sandbox::new();
        let path = sandbox.write("work/trafficmirror.yaml", content);
        // A flag for another setting does not hide the broken file.
        let (status, _, stderr, _) = run_in(&sandbox, &["--shutdown-timeout", "1s"], &[]);
        assert_eq!(status, Some(2), "{content:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{content:?}: one line: {stderr}");
        assert!(
            stderr.starts_with("trafficmirror: "),
            "{content:?}: {stderr}"
        );
        assert!(
            stderr.contains("trafficmirror.yaml") && stderr.contains(mentions),
            "{content:?} should name the file and {mentions}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{content:?}: {stderr}");
        drop(path);
    }

    // An explicit --config that cannot be read.
    let sandbox = Sandbox::new();
    let (status, _, stderr, _) = run_in(&sandbox, &["-config", "absent.yaml"], &[]);
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("trafficmirror: cannot read config file absent.yaml"),
        "{stderr}"
    );
}

// ===== completions, man page, JSON logs =====

#[test]
fn completions_and_man_page_go_to_stdout() {
    let (status, stdout, stderr, _) = run(&["completions", "bash"]);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.contains("--mirror-timeout"), "{stdout}");
    assert!(
        stdout.contains("complete -F"),
        "not a bash script: {stdout}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (status, stdout, stderr, _) = run(&["completions", shell]);
        assert_eq!(status, Some(0), "{shell}: {stderr}");
        assert!(stdout.contains("mirror-timeout"), "{shell}: {stdout}");
    }
    let (status, _, stderr, _) = run(&["completions", "tcsh"]);
    assert_eq!(status, Some(2), "{stderr}");

    let (status, stdout, stderr, _) = run(&["man"]);
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with(".TH ")), "{stdout}");
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH FILES",
        ".SH ENVIRONMENT",
    ] {
        assert!(stdout.contains(section), "{section} missing");
    }
    assert!(stdout.contains("mirror\\-timeout"), "{stdout}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let sandbox = Sandbox::new();
    // The config file's start-up log line is one of the lines checked.
    sandbox.write("work/trafficmirror.yaml", "listen: 127.0.0.1:0\n");
    let bin = Binary::start_in(sandbox, &["-v", "-log-format", "json"], &[]).await;
    let stderr = bin.terminate_within(Duration::from_secs(5)).await;
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    let mut messages = Vec::new();
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["level"].is_string(), "{line}");
        assert!(event["target"].is_string(), "{line}");
        let message = event["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        messages.push((
            event["level"].as_str().unwrap().to_owned(),
            message.to_owned(),
            event,
        ));
    }
    let find = |text: &str| {
        messages
            .iter()
            .find(|(_, m, _)| m == text)
            .unwrap_or_else(|| panic!("no {text:?} in {messages:?}"))
    };
    assert_eq!(
        find("config file read").2["fields"]["file"],
        "./trafficmirror.yaml"
    );
    let (level, _, event) = find("signal received");
    assert_eq!(level, "INFO");
    assert_eq!(event["fields"]["signal"], "SIGTERM");
    find("shutdown complete");
}
