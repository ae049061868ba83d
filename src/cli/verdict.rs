//! `trafficmirror verdict`: asks a running proxy's admin endpoint for a comparing
//! mirror's verdict and turns it into an exit code for a pipeline step
//! (docs/comparing.md, "Deciding with a baseline").

use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Exit codes: pass, fail, usage (clap's), undecided, admin endpoint unreadable.
pub const PASS: u8 = 0;
pub const FAIL: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNDECIDED: u8 = 3;
pub const UNREADABLE: u8 = 4;

/// Longest answer read from the admin endpoint.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The `verdict` subcommand's arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct VerdictArgs {
    /// The admin endpoint's URL, path included (`http://127.0.0.1:1234/targets`).
    #[arg(long, value_name = "URL")]
    pub admin: String,
    /// The comparing mirror to judge.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Fewer compared answers than this: undecided (exit 3).
    #[arg(long, value_name = "N")]
    pub min_compared: Option<u64>,
    /// The share of answers allowed to differ (or regress, with a baseline): `0.001` or `0.1%`.
    #[arg(long, value_name = "RATE")]
    pub max_mismatch_rate: Option<String>,
    /// The share of compared answers that may be mirror errors (5xx, gRPC errors) in
    /// excess of main's: `0.001` or `0.1%`.
    #[arg(long, value_name = "RATE")]
    pub max_error_rate: Option<String>,
    /// The mirror's p99 latency ÷ main's allowed.
    #[arg(long, value_name = "X")]
    pub max_p99_ratio: Option<String>,
    /// `USER:PASSWORD` for an admin endpoint with `--password`.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
}

/// Asks for the verdict, prints its reasons to stdout, and answers the exit code.
pub async fn run(args: &VerdictArgs) -> u8 {
    match tokio::time::timeout(TIMEOUT, ask(args)).await {
        Ok(Ok(code)) => code,
        Ok(Err(why)) => {
            eprintln!("trafficmirror verdict: {why}");
            UNREADABLE
        }
        Err(_) => {
            eprintln!("trafficmirror verdict: no answer within {TIMEOUT:?}");
            UNREADABLE
        }
    }
}

async fn ask(args: &VerdictArgs) -> Result<u8, String> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("url", &args.url);
    if let Some(n) = args.min_compared {
        query.append_pair("min_compared", &n.to_string());
    }
    if let Some(r) = &args.max_mismatch_rate {
        query.append_pair("max_mismatch_rate", r);
    }
    if let Some(r) = &args.max_error_rate {
        query.append_pair("max_error_rate", r);
    }
    if let Some(x) = &args.max_p99_ratio {
        query.append_pair("max_p99_ratio", x);
    }
    let uri = format!(
        "{}/verdict?{}",
        args.admin.trim_end_matches('/'),
        query.finish()
    );
    let mut request = http::Request::get(&uri);
    if let Some(user) = &args.user {
        let token = base64::engine::general_purpose::STANDARD.encode(user);
        request = request.header(http::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad admin URL {uri}: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("cannot reach {uri}: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer of {uri}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("{uri} answered {status}: {}", text.trim()));
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{uri} did not answer a verdict: {e}"))?;
    for reason in answer["reasons"].as_array().into_iter().flatten() {
        println!("{}", reason.as_str().unwrap_or_default());
    }
    match answer.get("pass") {
        Some(serde_json::Value::Bool(true)) => Ok(PASS),
        Some(serde_json::Value::Bool(false)) => Ok(FAIL),
        Some(serde_json::Value::Null) => Ok(UNDECIDED),
        _ => Err(format!("{uri} did not answer a verdict (no pass)")),
    }
}
