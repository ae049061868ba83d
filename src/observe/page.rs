//! The status page: one self-contained HTML document (`page.html`, embedded at build
//! time) answered to a browser's `GET <admin path>`.
//!
//! The document is a constant: the server writes no data into it beyond the build it
//! names in its footer ([`build_info`], fixed at compile time). Its script reads
//! `GET <admin path>?format=json`, `<admin path>/status` and `<admin path>/mismatches`
//! every two seconds, and for each comparing mirror `<admin path>/endpoints` and
//! `<admin path>/verdict`; it adds or removes mirrors with `PUT`/`DELETE <admin path>`,
//! and turns a noise field into an `ignore` rule with the `PUT` an operator would send
//! (the mirror's listed options plus that rule), all on the page's own origin, so the
//! browser re-sends the Basic credentials it used to open the page. Whether a request wants the page is [`wanted`]; routing and authentication
//! are the admin endpoint's.
//!
//! # Content Security Policy
//! The policy allows nothing from anywhere (`default-src 'none'`) except the page's own
//! inline `<style>` and `<script>` (`'unsafe-inline'`), `fetch` to its own origin, and
//! `data:` images. `'unsafe-inline'` rather than a nonce or a hash: the document is the
//! same bytes for every response and no run-time data is ever templated into it, and the
//! script inserts every string with `textContent`/`setAttribute` (never as markup or a
//! URL), so there is no injection point a nonce would close. A nonce would need a
//! secure random source per response, and a hash would have to be updated by hand at
//! every edit of the page. Framing is refused (`frame-ancestors 'none'`, so nobody can
//! overlay the Remove buttons), as are `<base>` and form posts anywhere.

use std::sync::LazyLock;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};

use super::build_info;
use crate::body::{self, BoxBody};

/// The page, as served: `page.html` with this build in its footer.
pub static HTML: LazyLock<String> =
    LazyLock::new(|| include_str!("page.html").replace("{{build}}", &escape(build_info::LINE)));

/// `text` safe as HTML element content. The build line is letters, digits and
/// punctuation that `build.rs` checked; this keeps it so whatever it holds.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The `Content-Security-Policy` sent with the page (see the module docs).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Whether `req` asks for HTML: one of its `Accept` media ranges is `text/html` with a
/// non-zero quality (RFC 9110 §12.5.1). `*/*` alone (curl) does not count. The caller
/// checks the method and that JSON was not asked for, which wins.
pub fn wanted<B>(req: &Request<B>) -> bool {
    accept_quality(req, "text/html") > 0.0
}

/// The quality `req`'s `Accept` headers give `media` by name (see [`quality`]).
pub fn accept_quality<B>(req: &Request<B>, media: &str) -> f32 {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .map(|value| quality(value.as_bytes(), media))
        .fold(0.0, f32::max)
}

/// The quality one `Accept` header value gives `media` by name: the highest `q` of the
/// ranges naming it (RFC 9110 §12.4.2; 1 without `q`), 0 when none does. Wildcards do
/// not count: `*/*` alone (curl) asks for nothing in particular.
fn quality(value: &[u8], media: &str) -> f32 {
    let Ok(value) = std::str::from_utf8(value) else {
        return 0.0;
    };
    value
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';');
            let named = parts.next().unwrap_or("").trim();
            named
                .eq_ignore_ascii_case(media)
                .then(|| parts.find_map(q_value).unwrap_or(1.0))
        })
        .fold(0.0, f32::max)
}

/// The value of a `q` parameter, within 0–1; `None` for any other parameter. A `q` that
/// does not parse counts as 1, as if absent.
fn q_value(param: &str) -> Option<f32> {
    let (name, value) = param.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("q") {
        return None;
    }
    Some(
        value
            .trim()
            .parse::<f32>()
            .map_or(1.0, |q| q.clamp(0.0, 1.0)),
    )
}

/// The page, with headers that keep it fresh and contained.
pub fn response() -> Response<BoxBody> {
    html(HTML.as_str().to_owned())
}

/// `document` answered with the status page's headers: its policy, no caching, no
/// framing (the report shares them).
pub fn html(document: String) -> Response<BoxBody> {
    let mut response = Response::new(body::full(document));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 7] = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The same URL answers text, JSON or this page depending on Accept.
        (header::VARY, "Accept"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_accept(values: &[&str]) -> Request<()> {
        let mut builder = Request::get("/targets");
        for v in values {
            builder = builder.header(header::ACCEPT, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn browsers_want_the_page_and_curl_does_not() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                      image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wanted(&with_accept(&[chrome])));
        assert!(wanted(&with_accept(&[firefox])));
        assert!(wanted(&with_accept(&["TEXT/HTML"])));
        assert!(wanted(&with_accept(&[
            "application/json",
            "text/html; q=0.5"
        ])));
        assert!(!wanted(&with_accept(&["*/*"])));
        assert!(!wanted(&with_accept(&[])));
        assert!(!wanted(&with_accept(&["text/plain"])));
        assert!(!wanted(&with_accept(&["text/*"])));
        assert!(!wanted(&with_accept(&["text/htmlx"])));
    }

    /// Whether one `Accept` header value asks for the page.
    fn accepts_html(value: &[u8]) -> bool {
        quality(value, "text/html") > 0.0
    }

    #[test]
    fn quality_is_the_highest_q_of_the_ranges_naming_the_type() {
        assert_eq!(quality(b"application/json", "application/json"), 1.0);
        assert_eq!(
            quality(b"text/plain, application/json;q=0.5", "application/json"),
            0.5
        );
        assert_eq!(
            quality(
                b"Application/JSON; charset=utf-8; q=0.7",
                "application/json"
            ),
            0.7
        );
        assert_eq!(
            quality(
                b"application/json;q=0, application/json;q=0.2",
                "application/json"
            ),
            0.2
        );
        assert_eq!(quality(b"*/*", "application/json"), 0.0);
        assert_eq!(quality(b"application/json;q=x", "application/json"), 1.0);
        assert_eq!(quality(b"\xffapplication/json", "application/json"), 0.0);
    }

    #[test]
    fn zero_quality_refuses_html() {
        assert!(!accepts_html(b"text/html;q=0"));
        assert!(!accepts_html(b"text/html; Q=0.000, */*"));
        assert!(accepts_html(b"text/html;q=0.001"));
        assert!(accepts_html(b"text/html;level=1"));
        assert!(!accepts_html(b"\xfftext/html"));
    }

    #[test]
    fn page_is_self_contained() {
        // No external scripts, styles, fonts or images: nothing is loaded by URL.
        let lower = HTML.to_ascii_lowercase();
        let style = lower
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .map(|(style, _)| style)
            .expect("the page has one style block");
        assert!(!style.contains("url(") && !style.contains("@import"));
        for banned in [
            "<script src",
            "<link",
            "<img",
            "<iframe",
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
            "eval(",
        ] {
            assert!(!lower.contains(banned), "page contains {banned:?}");
        }
        assert!(HTML.starts_with("<!doctype html>"));
    }

    #[test]
    fn response_carries_type_policy_and_no_store() {
        let response = response();
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"));
        assert!(csp.contains("connect-src 'self'"));
        assert!(csp.contains("frame-ancestors 'none'"));
    }

    proptest! {
        #[test]
        fn any_accept_value_is_judged_without_panic(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = accepts_html(&value);
        }

        #[test]
        fn html_among_other_ranges_is_found(
            before in proptest::collection::vec("[a-z]{1,8}/[a-z*]{1,8}(;q=0\\.[1-9])?", 0..4),
            after in proptest::collection::vec("[a-z]{1,8}/[a-z*]{1,8}", 0..4),
        ) {
            let mut ranges = before.clone();
            ranges.push("text/html".to_owned());
            ranges.extend(after);
            prop_assert!(accepts_html(ranges.join(", ").as_bytes()));
        }
    }
}
