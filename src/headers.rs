//! Header rewriting for forwarded requests and responses (README, "How requests are handled"): hop-by-hop removal,
//! `X-Forwarded-*`, and the `Via` entry used for loop detection (README, "Via").

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that apply to one connection only (RFC 9110 §7.6.1) plus the legacy ones
/// proxies also drop. `Proxy-*` is matched by prefix in [`strip_hop_by_hop`].
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers: those named in `Connection` (RFC 9110 §7.6.1), the
/// fixed list above and every `Proxy-*` header. `TE: trailers` is kept, because it
/// announces that the client understands trailers end to end (RFC 9110 §10.1.4).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names, no hashing. Most messages carry none of these or only
    // `Connection`, so only what is present is looked up and removed.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut proxy = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
        proxy |= k.as_str().starts_with("proxy-");
    }
    if !proxy && !present.contains(&true) {
        return;
    }
    let te = headers
        .get(header::TE)
        .filter(|_| {
            headers
                .get_all(header::TE)
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        })
        .cloned();
    // Names listed in `Connection` beyond the fixed ones (the usual `keep-alive`,
    // `close` and `upgrade` need no parsing); collected first, removal needs `&mut`.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            let known = token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()));
            if !known {
                listed.extend(HeaderName::from_bytes(token.as_bytes()).ok());
            }
        }
    }
    for name in &listed {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if proxy {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    if let Some(te) = te {
        headers.insert(header::TE, te);
    }
}

/// The client address as a header value (computed once per connection).
pub fn client_ip(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

/// Sets the `X-Forwarded-*` headers for a request received from `client` (see
/// [`client_ip`]).
///
/// `X-Forwarded-For` gets the client address appended to any list already
/// present; `X-Forwarded-Host` and `X-Forwarded-Proto` are set, replacing what the client
/// sent (a client must not be able to claim `https` or another host to main).
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, host: Option<&HeaderValue>) {
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        header::Entry::Occupied(mut e) => {
            let mut joined = Vec::new();
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            if let Ok(xff) = HeaderValue::from_bytes(&joined) {
                e.insert(xff);
            }
        }
    }
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Whether any `Via` entry names `token` as its `received-by` (RFC 9110 §7.6.3).
pub fn via_contains(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| entry.split_whitespace().nth(1) == Some(token))
}

/// Appends this instance's entry (`<protocol-version> <token>`) to `Via`.
pub fn append_via(headers: &mut HeaderMap, entry: &HeaderValue) {
    headers.append(header::VIA, entry.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "close, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-sum"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "x-end-to-end"]);
    }

    #[test]
    fn strips_each_kind_on_its_own() {
        // The common response: only `Connection: keep-alive`.
        let mut h = map(&[("server", "nginx"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["server"]);
        // `Proxy-*` without any fixed hop-by-hop header.
        let mut h = map(&[("proxy-authorization", "Basic x"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
        // A name listed in `Connection` is removed with it.
        let mut h = map(&[("x-hop", "1"), ("connection", "x-hop"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn te_trailers_is_kept_even_when_connection_lists_it() {
        let mut h = map(&[("te", "trailers"), ("connection", "te")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn forwarded_headers_append_and_set() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(
            &mut h,
            &client_ip("127.0.0.1".parse().unwrap()),
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-proto"], "http");

        // What the client claims is replaced, never passed on.
        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "evil")]);
        set_forwarded(
            &mut h,
            &client_ip("::ffff:127.0.0.2".parse().unwrap()),
            None,
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn via_token_detection() {
        let mut h = map(&[("via", "1.1 other, 1.0 tm-abc (trafficmirror)")]);
        assert!(via_contains(&h, "tm-abc"));
        assert!(!via_contains(&h, "tm-ab"));
        assert!(!via_contains(&h, "tm-xyz"));
        append_via(&mut h, &HeaderValue::from_static("1.1 tm-xyz"));
        assert!(via_contains(&h, "tm-xyz"));
    }
}
