//! The status page: what curl, scripts and browsers get at the admin path, and the page
//! itself driven in headless Chromium through chromedriver (WebDriver, `fantoccini`).
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`; without them it
//! says in one line that it did not run (`.ci/run` installs them and makes their
//! absence a failure: `support::external`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::support::external;
use crate::support::{Answer, MockBackend, Reply, TestProxy, closed_addr, send};

/// What a browser sends (Chromium's navigation `Accept`).
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,\
     image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";

/// `GET <admin path>` as a browser asks for it, with `extra` headers.
async fn get_page(proxy: &TestProxy, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("accept", BROWSER_ACCEPT)];
    headers.extend_from_slice(extra);
    send(Method::GET, &proxy.admin_url(""), &headers, Bytes::new()).await
}

/// Longest wait for the page to show something: two refreshes of 2 s and a slow,
/// shared CI machine.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// The whole browser scenario's bound.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

const USER: &str = "ops";
const PASSWORD: &str = "s3cret";

fn basic(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

fn users_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{USER}:{PASSWORD}\n")).unwrap();
    file
}

/// An admin request with the test's credentials.
async fn admin(proxy: &TestProxy, method: Method, query: &str) -> Answer {
    let auth = basic(&format!("{USER}:{PASSWORD}"));
    send(
        method,
        &proxy.admin_url(query),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
}

// ===== without a browser =====

#[tokio::test]
async fn browser_get_answers_the_page_with_its_headers() {
    let proxy = TestProxy::start(&[]).await;
    let resp = get_page(&proxy, &[]).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.headers["cache-control"], "no-store");
    let csp = resp.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(resp.text().starts_with("<!doctype html>"));
    proxy.stop().await;
}

#[tokio::test]
async fn curl_and_scripts_keep_the_text_and_json_listing() {
    let proxy = TestProxy::start(&[]).await;
    let mirror = MockBackend::start(Reply::ok("m")).await;
    proxy.add_mirrors(&[&mirror.url()]).await;
    let listing = format!("{}\n", mirror.url());

    for accept in [None, Some("*/*"), Some("text/plain")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let resp = send(Method::GET, &proxy.admin_url(""), &headers, Bytes::new()).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.text(), listing, "Accept: {accept:?}");
    }
    // JSON wins over HTML, by query or by Accept.
    for (query, accept) in [
        ("?format=json", BROWSER_ACCEPT),
        ("", "text/html, application/json"),
    ] {
        let resp = send(
            Method::GET,
            &proxy.admin_url(query),
            &[("accept", accept)],
            Bytes::new(),
        )
        .await;
        assert_eq!(resp.headers["content-type"], "application/json");
        let list: Vec<serde_json::Value> = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(list[0]["url"], mirror.url().as_str());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn page_needs_the_admin_password() {
    let users = users_file();
    let proxy = TestProxy::start(&["--password", users.path().to_str().unwrap()]).await;
    let resp = get_page(&proxy, &[]).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert!(!resp.text().contains("<html"));
    let auth = basic(&format!("{USER}:{PASSWORD}"));
    let resp = get_page(&proxy, &[("authorization", &auth)]).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["content-type"], "text/html; charset=utf-8");
    proxy.stop().await;
}

// ===== in a real browser =====

/// chromedriver on a free 127.0.0.1 port, in its own process group so that the
/// browsers it starts are ended with it.
struct Chromedriver {
    child: Child,
    port: u16,
    /// Chromium's profile; removed after the processes are gone.
    profile: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts chromedriver and waits (bounded) until it accepts connections; `None`
    /// (after one line saying so) when Chromium or chromedriver is not installed.
    async fn start(test: &str) -> Option<Chromedriver> {
        let driver = external::require(
            test,
            &["chromium", "chromedriver"],
            "apt-get install -y chromium chromium-driver",
        )?
        .pop()?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let profile = tempfile::tempdir().unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()))
        };
        let driver = Chromedriver {
            child,
            port,
            profile,
        };
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on 127.0.0.1:{port} in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(driver)
    }

    /// A new headless Chromium session.
    async fn browser(&self) -> Client {
        let mut options = serde_json::json!({
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1440,960",
                format!("--user-data-dir={}", self.profile.path().display()),
            ],
        });
        if let Some(chromium) = external::find_program("chromium") {
            options["binary"] = chromium.display().to_string().into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert("goog:chromeOptions".into(), options);
        tokio::time::timeout(
            PAGE_WAIT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{}", self.port)),
        )
        .await
        .expect("chromium starts in time")
        .expect("chromedriver opens a session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser it left behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it gives a value; panics naming `what` after [`PAGE_WAIT`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the page: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row(url: &str) -> String {
    format!("tbody.mirror[data-url=\"{url}\"]")
}

/// The text of one field of one mirror's row, if the row is there.
async fn cell(page: &Client, url: &str, field: &str) -> Option<String> {
    let selector = format!("{} [data-field=\"{field}\"]", row(url));
    page.find(Locator::Css(&selector))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The URLs of the rows on the page, in order.
async fn rows(page: &Client) -> Vec<String> {
    let mut urls = Vec::new();
    for body in page
        .find_all(Locator::Css("tbody.mirror"))
        .await
        .unwrap_or_default()
    {
        if let Ok(Some(url)) = body.attr("data-url").await {
            urls.push(url);
        }
    }
    urls
}

/// Where the screenshot goes: `target/status-page.png`.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("status-page.png")
}

/// Runs `scenario` in a new headless Chromium within [`SCENARIO_LIMIT`]; says in one
/// line that `test` did not run when Chromium or chromedriver is missing.
async fn in_browser(test: &str, scenario: impl AsyncFnOnce(&Client)) {
    let Some(driver) = Chromedriver::start(test).await else {
        return;
    };
    let page = driver.browser().await;
    let outcome = tokio::time::timeout(SCENARIO_LIMIT, scenario(&page)).await;
    let _ = page.close().await;
    drop(driver);
    outcome.unwrap_or_else(|_| panic!("{test}: the browser scenario finishes in time"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_real_browser() {
    in_browser("status_page_in_a_real_browser", scenario).await;
}

async fn scenario(page: &Client) {
    let healthy = MockBackend::start(Reply::ok("mirror")).await;
    let dead = format!("http://{}", closed_addr().await);
    let added = MockBackend::start(Reply::ok("added")).await;
    let users = users_file();
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &["--password", users.path().to_str().unwrap()],
    )
    .await;
    let put = admin(
        &proxy,
        Method::PUT,
        &format!("?url={}&url={dead}", healthy.url()),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());

    // The browser signs in with the URL's user info; the page's own fetches go to its
    // origin and the browser re-sends those credentials.
    let origin = format!("http://{USER}:{PASSWORD}@{}", proxy.admin_addr);
    page.goto(&format!("{origin}{}", proxy.admin_path))
        .await
        .expect("page opens");

    // The page lists both mirrors, in order, with their state.
    let listed = until("both mirrors listed", || async {
        let urls = rows(page).await;
        (urls.len() == 2).then_some(urls)
    })
    .await;
    assert_eq!(listed, [healthy.url(), dead.clone()]);
    // The footer names the build, as --version does.
    let build = page
        .find(Locator::Id("build"))
        .await
        .expect("the build in the footer")
        .text()
        .await
        .unwrap();
    assert_eq!(
        build,
        format!(
            "trafficmirror {} (commit {}, built {})",
            env!("CARGO_PKG_VERSION"),
            trafficmirror::build_info::COMMIT,
            trafficmirror::build_info::DATE
        )
    );
    // The header names main and the protocol spoken to it.
    let main_shown = until("main shown in the header", || async {
        let text = |field: &'static str| async move {
            let selector = format!("#main-target [data-field=\"{field}\"]");
            page.find(Locator::Css(&selector))
                .await
                .ok()?
                .text()
                .await
                .ok()
        };
        let url = text("main-url").await.filter(|t| !t.is_empty())?;
        Some((url, text("main-protocol").await?))
    })
    .await;
    assert_eq!(main_shown, (main.url(), "http/1.1".to_string()));
    for url in [healthy.url(), dead.clone()] {
        assert_eq!(cell(page, &url, "state").await.as_deref(), Some("alive"));
        assert_eq!(cell(page, &url, "sent").await.as_deref(), Some("0"));
        // Each row names the protocol its mirror is spoken to in.
        assert_eq!(
            cell(page, &url, "protocol").await.as_deref(),
            Some("http/1.1")
        );
    }

    // Traffic moves the counters on the page, and the dead mirror turns failing.
    const REQUESTS: usize = 12;
    for i in 0..REQUESTS {
        let resp = send(
            Method::GET,
            &proxy.url(&format!("/item/{i}")),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    for _ in 0..REQUESTS {
        healthy.next().await;
    }
    let want = REQUESTS.to_string();
    until("the healthy mirror's counters on the page", || async {
        let sent = cell(page, &healthy.url(), "sent").await?;
        let ok = cell(page, &healthy.url(), "succeeded").await?;
        (sent == want && ok == want).then_some(())
    })
    .await;
    until("the dead mirror shown failing", || async {
        (cell(page, &dead, "state").await? == "failing").then_some(())
    })
    .await;
    until(
        "the dead mirror's failures on the page as in the listing",
        || async {
            let json = proxy_json(&proxy).await;
            let listed = json.iter().find(|m| m["url"] == dead.as_str())?;
            let failed = listed["failed"].as_u64()?;
            let shown = cell(page, &dead, "failed").await?;
            (failed > 0 && shown == failed.to_string()).then_some(())
        },
    )
    .await;
    until("a copy rate for the healthy mirror", || async {
        let rate: f64 = cell(page, &healthy.url(), "rate").await?.parse().ok()?;
        (rate > 0.0).then_some(())
    })
    .await;

    // A bad URL through the form: the server's one-line error shows next to the form.
    let refused = admin(&proxy, Method::PUT, "?url=ftp%3A%2F%2Fnope").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    fill_and_submit(page, "ftp://nope", "").await;
    let message = until("the server's error next to the form", || async {
        let msg = page.find(Locator::Id("add-msg")).await.ok()?;
        let text = msg.text().await.ok()?;
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert_eq!(message, refused.text().trim());

    // A mirror added through the form reaches the admin endpoint, with its options.
    fill_and_submit(page, &added.url(), "percent=100 method=GET").await;
    until("the added mirror listed by GET /targets", || async {
        let list = admin(&proxy, Method::GET, "").await.text();
        list.lines().any(|l| l == added.url()).then_some(())
    })
    .await;
    if let Some(options) = proxy_json(&proxy)
        .await
        .iter()
        .find(|m| m["url"] == added.url().as_str())
        .and_then(|m| m.get("options").cloned())
    {
        assert_eq!(options["method"], serde_json::json!(["GET"]));
    }
    until("the added mirror on the page", || async {
        (rows(page).await.len() == 3).then_some(())
    })
    .await;
    // Some traffic for the new row, so the picture shows live counters everywhere.
    for i in 0..5 {
        send(
            Method::GET,
            &proxy.url(&format!("/more/{i}")),
            &[],
            Bytes::new(),
        )
        .await;
    }
    until("the added mirror's copies on the page", || async {
        (cell(page, &added.url(), "sent").await? == "5").then_some(())
    })
    .await;

    let png = page.screenshot().await.expect("screenshot");
    let path = screenshot_path();
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("status page screenshot: {}", path.display());

    // Remove, with the page's two-click button.
    let remove = format!("{} button[data-action=remove]", row(&healthy.url()));
    click(page, &remove, "arm remove").await;
    let armed = page.find(Locator::Css(&remove)).await.unwrap();
    assert_eq!(armed.text().await.unwrap(), "Confirm remove");
    armed.click().await.expect("confirm remove");
    until("the removed mirror gone from GET /targets", || async {
        let list = admin(&proxy, Method::GET, "").await.text();
        (!list.lines().any(|l| l == healthy.url())).then_some(())
    })
    .await;
    until("the removed mirror gone from the page", || async {
        (rows(page).await == [dead.clone(), added.url()]).then_some(())
    })
    .await;

    // With no mirrors left the page says so.
    let query = format!("?url={dead}&url={}", added.url());
    assert_eq!(
        admin(&proxy, Method::DELETE, &query).await.status,
        StatusCode::OK
    );
    until("the empty state", || async {
        let empty = page.find(Locator::Id("empty")).await.ok()?;
        empty.is_displayed().await.ok()?.then_some(())
    })
    .await;
    assert!(rows(page).await.is_empty());
    proxy.stop().await;
}

/// Clicks the element `selector` finds; panics naming `what` when there is none.
async fn click(page: &Client, selector: &str, what: &str) {
    page.find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{what}: no {selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

async fn fill_and_submit(page: &Client, url: &str, options: &str) {
    let url_field = page.find(Locator::Id("add-url")).await.expect("url field");
    url_field.clear().await.unwrap();
    url_field.send_keys(url).await.unwrap();
    let options_field = page
        .find(Locator::Id("add-options"))
        .await
        .expect("options field");
    options_field.clear().await.unwrap();
    options_field.send_keys(options).await.unwrap();
    page.find(Locator::Id("add-button"))
        .await
        .expect("add button")
        .click()
        .await
        .unwrap();
}

async fn proxy_json(proxy: &TestProxy) -> Vec<serde_json::Value> {
    let resp = admin(proxy, Method::GET, "?format=json").await;
    assert_eq!(resp.status, StatusCode::OK);
    serde_json::from_slice(&resp.body).expect("JSON listing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_page_in_a_real_browser() {
    in_browser("report_page_in_a_real_browser", report_scenario).await;
}

/// An answer carrying markup that would run if the report wrote it as HTML (inline
/// handlers are allowed by the page policy's `'unsafe-inline'`: only escaping stops it).
async fn report_scenario(page: &Client) {
    let json = |body: &'static str| {
        Reply::With(
            StatusCode::OK,
            vec![("content-type", "application/json")],
            Bytes::from_static(body.as_bytes()),
        )
    };
    let mirror = MockBackend::start(json(r#"{"v":"<img src=x onerror=window.pwned=1>"}"#)).await;
    let (_main, proxy) = TestProxy::in_front_of(json(r#"{"v":"<b>main</b>"}"#), &[]).await;
    proxy
        .put_ok(&format!("url={}&compare=true", mirror.url()))
        .await;
    send(Method::GET, &proxy.url("/items/1"), &[], Bytes::new()).await;
    mirror.next().await;
    let origin = format!("http://{}", proxy.admin_addr);
    page.goto(&format!("{origin}{}", proxy.admin_path))
        .await
        .expect("page opens");
    // The comparing mirror's row links to its report.
    let link = format!("{} a[data-action=\"report\"]", row(&mirror.url()));
    let link = until("the report link on the row", || async {
        let a = page.find(Locator::Css(&link)).await.ok()?;
        a.attr("href").await.ok()??;
        Some(a)
    })
    .await;
    link.click().await.expect("the link opens the report");
    let (title, pwned, verdict, example) = until("the report with its example", || async {
        let got = page
            .execute(
                "var v = document.getElementById('verdict'); \
                 var e = document.getElementById('examples'); \
                 return [document.title, typeof window.pwned, v ? v.textContent : '', \
                         e ? e.textContent : ''];",
                vec![],
            )
            .await
            .ok()?;
        let got: Vec<String> = serde_json::from_value(got).ok()?;
        (got.len() == 4 && !got[3].is_empty()).then(|| {
            (
                got[0].clone(),
                got[1].clone(),
                got[2].clone(),
                got[3].clone(),
            )
        })
    })
    .await;
    assert_eq!(title, format!("trafficmirror report: {}", mirror.url()));
    assert_eq!(pwned, "undefined", "the answer's markup ran");
    assert!(verdict.starts_with("Verdict: undecided"), "{verdict}");
    assert!(
        example.contains("<img src=x onerror=window.pwned=1>"),
        "{example}"
    );
    assert!(example.contains("<b>main</b>"), "{example}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_analysis_on_the_page_in_a_real_browser() {
    in_browser(
        "shadow_analysis_on_the_page_in_a_real_browser",
        analysis_scenario,
    )
    .await;
}

/// A JSON key that would run if the page wrote it as markup.
const MARKUP_KEY: &str = "<img src=x onerror=window.pwned=1>";
/// An endpoint pattern (so a template) that would run if written as markup.
const MARKUP_ENDPOINT: &str = "/p/:<img src=x onerror=window.pwned=2>";

/// What the page shows for one comparing mirror: its endpoints (`METHOD TEMPLATE`),
/// regressions and noise (their fields), verdict, and whether any markup ran.
#[derive(Debug, serde::Deserialize)]
struct Shown {
    endpoints: Vec<String>,
    /// The template cells' text.
    templates: Vec<String>,
    regressions: Vec<String>,
    noise: Vec<String>,
    ignorable: Vec<String>,
    verdict: String,
    report: Option<String>,
    pwned: String,
}

async fn shown(page: &Client, url: &str) -> Option<Shown> {
    let got = page
        .execute(
            "var u = arguments[0], box = null; \
             document.querySelectorAll('.an-mirror').forEach(function (b) { \
               if (b.getAttribute('data-url') === u) box = b; }); \
             var all = function (sel, attr) { return Array.prototype.map.call( \
               box.querySelectorAll(sel), function (e) { \
                 return attr ? e.getAttribute(attr) : e.textContent; }); }; \
             if (!box) return null; \
             var report = box.querySelector('a[data-action=report]'); \
             return { endpoints: all('tr.endpoint', 'data-endpoint'), \
                      templates: all('tr.endpoint td:nth-child(2)', null), \
                      regressions: all('li.regression', 'data-pointer'), \
                      noise: all('li.noise', 'data-pointer'), \
                      ignorable: all('li.noise button[data-action=ignore]', 'data-pointer'), \
                      verdict: box.querySelector('[data-field=verdict]').textContent, \
                      report: report ? report.getAttribute('href') : null, \
                      pwned: typeof window.pwned };",
            vec![url.into()],
        )
        .await
        .ok()?;
    serde_json::from_value(got).ok()
}

async fn analysis_scenario(page: &Client) {
    use crate::analysis::{candidate_price, stamped_with};
    let users = users_file();
    let (main, proxy) = TestProxy::in_front_of(
        Reply::ok("main"),
        &["--password", users.path().to_str().unwrap()],
    )
    .await;
    let baseline = MockBackend::start(Reply::ok("")).await;
    let candidate = MockBackend::start(Reply::ok("")).await;
    stamped_with(&main, 0, |_| 1, MARKUP_KEY);
    stamped_with(&baseline, 1_000_000, |_| 1, MARKUP_KEY);
    stamped_with(&candidate, 2_000_000, candidate_price, MARKUP_KEY);
    let admin_of = &proxy;
    let put = |query: String| async move {
        let resp = admin(admin_of, Method::PUT, &query).await;
        assert_eq!(resp.status, StatusCode::OK, "{query}: {}", resp.text());
    };
    put(format!(
        "?url={}&compare=true&role=baseline",
        baseline.url()
    ))
    .await;
    let pattern: String =
        url::form_urlencoded::byte_serialize(MARKUP_ENDPOINT.as_bytes()).collect();
    put(format!(
        "?url={}&compare=true&min_compared=10&endpoint={pattern}",
        candidate.url()
    ))
    .await;
    let traffic = |from: usize, to: usize| {
        let proxy = &proxy;
        async move {
            for i in from..to {
                for path in [format!("/orders/{i}"), format!("/p/{i}")] {
                    let resp = send(Method::GET, &proxy.url(&path), &[], Bytes::new()).await;
                    assert_eq!(resp.status, StatusCode::OK);
                }
            }
        }
    };
    traffic(0, 20).await;

    let origin = format!("http://{USER}:{PASSWORD}@{}", proxy.admin_addr);
    page.goto(&format!("{origin}{}", proxy.admin_path))
        .await
        .expect("page opens");
    let url = candidate.url();
    let orders = "GET /orders/{id}".to_owned();
    let markup_field = format!("/{MARKUP_KEY}");
    let before = until(
        "the candidate's endpoints, regression and noise",
        || async {
            let s = shown(page, &url).await?;
            (s.endpoints.contains(&orders)
                && s.regressions.contains(&"/price".to_owned())
                && s.noise.contains(&"/ts".to_owned())
                && s.verdict == "fail")
                .then_some(s)
        },
    )
    .await;
    // The template and the field carrying markup are shown as text, and nothing ran.
    assert_eq!(before.pwned, "undefined", "markup ran: {before:?}");
    assert!(
        before.endpoints.contains(&format!("GET {MARKUP_ENDPOINT}")),
        "{before:?}"
    );
    assert!(
        before.templates.contains(&MARKUP_ENDPOINT.to_owned()),
        "{before:?}"
    );
    assert!(before.noise.contains(&markup_field), "{before:?}");
    assert!(before.ignorable.contains(&markup_field), "{before:?}");
    assert!(before.report.is_some_and(|r| r.contains("/report?url=")));
    assert!(before.templates.contains(&"/orders/{id}".to_owned()));
    let all_text: String = serde_json::from_value(
        page.execute(
            "return document.getElementById('analysis').textContent;",
            vec![],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(all_text.contains(MARKUP_KEY), "{all_text}");
    assert!(all_text.contains(MARKUP_ENDPOINT), "{all_text}");

    // One click on "ignore" beside the noise field: the PUT an operator would send, the
    // mirror's options kept.
    let button = format!(
        "div.an-mirror[data-url=\"{url}\"] li.noise button[data-action=ignore][data-pointer=\"/ts\"]"
    );
    click(page, &button, "ignore on /ts").await;
    let options = until("the ignore rule in the listing", || async {
        let json = proxy_json(&proxy).await;
        let options = json.iter().find(|m| m["url"] == url.as_str())?["options"].clone();
        (options["ignore"] == serde_json::json!(["/ts"])).then_some(options)
    })
    .await;
    assert_eq!(options["compare"], true, "{options}");
    assert_eq!(options["min_compared"], 10, "{options}");
    assert_eq!(options["endpoint"], serde_json::json!([MARKUP_ENDPOINT]));
    assert_eq!(options["role"], "candidate");
    // The mirror's row on the page lists the rule with its other options.
    until("the ignore rule on the mirror's row", || async {
        let shown = cell(page, &url, "options").await?;
        (shown.contains("ignore=/ts") && shown.contains("min_compared=10")).then_some(())
    })
    .await;
    // More traffic: /ts no longer counts on the candidate, and leaves the noise.
    traffic(20, 30).await;
    let after = until("/ts gone from the noise", || async {
        let s = shown(page, &url).await?;
        (!s.noise.contains(&"/ts".to_owned()) && s.noise.contains(&markup_field)).then_some(s)
    })
    .await;
    assert!(
        after.regressions.contains(&"/price".to_owned()),
        "{after:?}"
    );
    assert_eq!(after.pwned, "undefined");
    proxy.stop().await;
}
