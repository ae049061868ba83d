//! Header rewriting for forwarded requests and responses (docs/shadowing.md, "How requests
//! are handled"): hop-by-hop removal, `X-Forwarded-*`, and the `Via` entry used for loop
//! detection (docs/shadowing.md, "Loops and `Via`").

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that apply to one connection only (RFC 9110 §7.6.1) plus the legacy ones
/// proxies also drop. `Proxy-*` is matched by prefix in [`strip_hop_by_hop`]. `Trailer`
/// is not one of them: it names the trailer fields that follow a chunked body, end to
/// end (RFC 9110 §6.6.2), and hyper sends only the trailers it names.
static HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers: those named in `Connection` (RFC 9110 §7.6.1), the
/// fixed list above and every `Proxy-*` header. A `TE` that lists `trailers` becomes
/// `TE: trailers`: that member says the client understands trailers end to end (RFC 9110
/// §10.1.4); the transfer codings beside it are for this connection only.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_seen(headers, Seen::scan(headers));
}

/// Which hop-by-hop headers, and whether `Via`, a message carries: one pass over the
/// names, no hashing (a `match` on the name compiles to a length switch and one
/// compare). Most messages carry none of these or only `Connection`, so only what is
/// present is then looked up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// Each of [`HOP_BY_HOP`], in its order.
    present: [bool; HOP_BY_HOP.len()],
    /// A `Proxy-*` header.
    proxy: bool,
    pub via: bool,
}

impl Seen {
    pub fn scan(headers: &HeaderMap) -> Self {
        let mut seen = Seen::default();
        for k in headers.keys() {
            let i = match k.as_str() {
                "connection" => 0,
                "keep-alive" => 1,
                "te" => 2,
                "transfer-encoding" => 3,
                "upgrade" => 4,
                "via" => {
                    seen.via = true;
                    continue;
                }
                name => {
                    seen.proxy |= name.starts_with("proxy-");
                    continue;
                }
            };
            seen.present[i] = true;
        }
        seen
    }

    pub fn connection(&self) -> bool {
        self.present[0]
    }
}

/// [`strip_hop_by_hop`] of a message whose names were just scanned (`seen`).
pub fn strip_seen(headers: &mut HeaderMap, seen: Seen) {
    let Seen { present, proxy, .. } = seen;
    if !proxy && !present.contains(&true) {
        return;
    }
    // Most answers carry one hop-by-hop header, `Connection: keep-alive` (or `close`),
    // which names nothing else to remove: taken out at once, without parsing its
    // tokens (~0.25k instructions less per proxied GET under callgrind).
    if !proxy && present == [true, false, false, false, false] {
        let mut values = headers.get_all(header::CONNECTION).iter();
        if let (Some(value), None) = (values.next(), values.next()) {
            let value = value.as_bytes();
            if value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close") {
                headers.remove(header::CONNECTION);
                return;
            }
        }
    }
    let te_trailers = present[2] && te_lists_trailers(headers);
    // Names listed in `Connection` beyond the fixed ones (the usual `keep-alive`,
    // `close` and `upgrade` need no parsing); collected first, removal needs `&mut`.
    // Split as bytes: a non-ASCII byte elsewhere in the value must not hide the names.
    let mut listed: Vec<HeaderName> = Vec::new();
    let connection = present[0].then(|| headers.get_all(header::CONNECTION));
    for value in connection.into_iter().flatten() {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            let known = token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()));
            if !known {
                listed.extend(HeaderName::from_bytes(token).ok());
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
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a `TE` header lists the `trailers` member (`TE: gzip, trailers`; members may
/// carry parameters, `trailers` takes none).
pub fn te_lists_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|member| member.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// Whether a message is gRPC: `Content-Type: application/grpc`, alone or with a
/// `+format` or parameters (gRPC over HTTP/2, "Requests"). gRPC-Web
/// (`application/grpc-web…`) is not: it is made for HTTP/1.1 and carries its trailers
/// in the body.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        let prefix = b"application/grpc";
        v.len() >= prefix.len()
            && v[..prefix.len()].eq_ignore_ascii_case(prefix)
            && matches!(v.get(prefix.len()), None | Some(b'+' | b';' | b' '))
    })
}

/// The client address as a header value (computed once per connection).
pub fn client_ip(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_canonical().to_string())
        .expect("an IP address is a valid header value")
}

/// Sets the `X-Forwarded-*` headers for a request received from `client` (see
/// [`client_ip`]), over TLS when `https`.
///
/// `X-Forwarded-For` gets the client address appended to any list already
/// present; `X-Forwarded-Host` and `X-Forwarded-Proto` are set, replacing what the client
/// sent (a client must not be able to claim `https` or another host to main).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    host: Option<&HeaderValue>,
    https: bool,
) {
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
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// How many `Via` entries name `token` as their `received-by` (RFC 9110 §7.6.3): how
/// often the request already went through the instance with that token.
pub fn via_visits(headers: &HeaderMap, token: &str) -> usize {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|entry| entry.split_whitespace().nth(1) == Some(token))
        .count()
}

/// Appends this instance's entry (`<protocol-version> <token>`) to `Via`.
pub fn append_via(headers: &mut HeaderMap, entry: &HeaderValue) {
    headers.append(header::VIA, entry.clone());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let with = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&headers)
        };
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(with(grpc), "{grpc}");
        }
        for not in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!with(not), "{not}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

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

    /// Ties the `match` in [`strip_hop_by_hop`] to the table: each fixed name alone is
    /// removed, and nothing else is.
    #[test]
    fn each_fixed_name_alone_is_removed() {
        for name in &HOP_BY_HOP {
            let value = if *name == header::TE { "gzip" } else { "x" };
            let mut h = map(&[(name.as_str(), value), ("x-kept", "1")]);
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["x-kept"], "{name}");
        }
    }

    /// The common answer's `Connection: keep-alive` (or `close`) alone goes at once; a
    /// second `Connection` line, or one naming more, still has its names removed.
    #[test]
    fn a_lone_keep_alive_or_close_connection_goes_and_listed_names_still_do() {
        for value in ["keep-alive", "Keep-Alive", "close"] {
            let mut h = map(&[("connection", value), ("x-kept", "1")]);
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["x-kept"], "{value}");
        }
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
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
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("trailer", "x-sum"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "trailer", "x-end-to-end"]);
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
    fn names_listed_beside_non_ascii_bytes_are_removed() {
        let mut h = map(&[("x-hop", "1"), ("accept", "*/*")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, \xff").unwrap(),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn te_is_reduced_to_trailers_when_it_lists_that_member() {
        for (te, kept) in [
            ("trailers", Some("trailers")),
            ("gzip, trailers", Some("trailers")),
            ("Trailers ,deflate;q=0.5", Some("trailers")),
            ("gzip", None),
            ("trailers;q=1", None),
        ] {
            let mut h = map(&[("te", te), ("accept", "*/*")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(h.get("te").map(|v| v.to_str().unwrap()), kept, "{te}");
        }
        // In two header lines too.
        let mut h = map(&[("te", "gzip"), ("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        let te: Vec<&HeaderValue> = h.get_all("te").iter().collect();
        assert_eq!(te, ["trailers"]);
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
            false,
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
            false,
        );
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-host").is_none());

        // Over TLS, whatever the client claims.
        let mut h = map(&[("x-forwarded-proto", "http")]);
        set_forwarded(&mut h, &client_ip("127.0.0.1".parse().unwrap()), None, true);
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn one_scan_tells_connection_and_via() {
        let seen = Seen::scan(&map(&[("host", "a"), ("x-other", "1")]));
        assert!(!seen.connection() && !seen.via);
        let seen = Seen::scan(&map(&[("Connection", "upgrade"), ("VIA", "1.1 x")]));
        assert!(seen.connection() && seen.via);
    }

    #[test]
    fn via_token_detection() {
        let mut h = map(&[("via", "1.1 other, 1.0 tm-abc (trafficmirror)")]);
        assert_eq!(via_visits(&h, "tm-abc"), 1);
        assert_eq!(via_visits(&h, "tm-ab"), 0);
        assert_eq!(via_visits(&h, "tm-xyz"), 0);
        append_via(&mut h, &HeaderValue::from_static("1.1 tm-xyz"));
        assert_eq!(via_visits(&h, "tm-xyz"), 1);
        append_via(&mut h, &HeaderValue::from_static("1.1 tm-abc"));
        assert_eq!(via_visits(&h, "tm-abc"), 2);
    }

    /// Names a message may carry: every fixed hop-by-hop name in any case, `Proxy-*`,
    /// end-to-end names, and custom ones a `Connection` header may list. (A header named
    /// `close` is left out: `close` in `Connection` is an option, not a name.)
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => prop::sample::select(vec![
                "connection", "Connection", "keep-alive", "Keep-Alive", "te", "TE", "trailer",
                "transfer-encoding", "Transfer-Encoding", "upgrade", "UPGRADE",
            ])
            .prop_map(str::to_owned),
            1 => "[pP]roxy-[a-zA-Z-]{0,10}",
            1 => prop::sample::select(vec!["proxy", "proxy_x", "x-proxy-a", "proxyauth"])
                .prop_map(str::to_owned),
            2 => prop::sample::select(vec![
                "content-type", "content-length", "host", "x-hop", "X-Hop", "x-a", "x-b", "via",
                "accept", "set-cookie",
            ])
            .prop_map(str::to_owned),
            2 => "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
        ]
        .prop_filter("`close` is a connection option", |n| {
            !n.eq_ignore_ascii_case("close")
        })
    }

    /// A `Connection` value: a comma-separated list of names (some present, some not),
    /// `close`, odd spacing, empty elements, and sometimes bytes that are not ASCII.
    fn connection_value() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            3 => header_name(),
            1 => prop::sample::select(vec!["close", "Close", "keep-alive", "upgrade", "te", ""])
                .prop_map(str::to_owned),
            1 => "[ -~]{0,6}",
        ];
        let separator = prop::sample::select(vec![",", ", ", " , ", ",\t", ",,"]);
        (
            prop::collection::vec((token, separator), 1..5),
            prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(0x80u8..=0xff, 1..3)],
        )
            .prop_map(|(tokens, junk)| {
                let mut out = Vec::new();
                for (i, (token, separator)) in tokens.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(separator.as_bytes());
                    }
                    out.extend_from_slice(token.as_bytes());
                }
                if !junk.is_empty() {
                    out.extend_from_slice(b", ");
                    out.extend(junk);
                }
                out
            })
    }

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => "[ -~]{0,12}".prop_map(String::into_bytes),
            1 => prop::sample::select(vec!["trailers", "Trailers", "gzip", "trailers, deflate"])
                .prop_map(|v| v.as_bytes().to_vec()),
            1 => prop::collection::vec(
                prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
                0..8,
            ),
        ]
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        let pair = prop_oneof![
            4 => (header_name(), header_value()),
            1 => (Just("connection".to_owned()), connection_value()),
        ];
        prop::collection::vec(pair, 0..12).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(&value),
                ) {
                    h.append(n, v);
                }
            }
            h
        })
    }

    fn as_multimap(h: &HeaderMap) -> BTreeMap<String, Vec<Vec<u8>>> {
        let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (name, value) in h {
            out.entry(name.as_str().to_owned())
                .or_default()
                .push(value.as_bytes().to_vec());
        }
        out
    }

    /// Whether `name` is hop-by-hop in `h` (RFC 9110 §7.6.1): a fixed name, `Proxy-*`, or
    /// listed in `Connection` (a comma-separated list; blanks around elements ignored).
    fn is_hop_by_hop(h: &HeaderMap, name: &str) -> bool {
        let fixed = [
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
        ];
        fixed.contains(&name)
            || name.starts_with("proxy-")
            || h.get_all(header::CONNECTION).iter().any(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
            })
    }

    proptest! {
        #[test]
        fn only_and_all_hop_by_hop_headers_are_removed(input in header_map()) {
            let mut output = input.clone();
            strip_hop_by_hop(&mut output);
            let before = as_multimap(&input);
            let after = as_multimap(&output);
            let te_trailers = input.get_all(header::TE).iter().any(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|m| m.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            });
            for (name, values) in &before {
                if name == "te" && te_trailers {
                    // `TE: trailers` is end to end (RFC 9110 §10.1.4).
                    prop_assert_eq!(after.get(name), Some(&vec![b"trailers".to_vec()]));
                } else if is_hop_by_hop(&input, name) {
                    prop_assert!(!after.contains_key(name), "{} kept from {:?}", name, input);
                } else {
                    prop_assert_eq!(after.get(name), Some(values), "{} changed in {:?}", name, input);
                }
            }
            for name in after.keys() {
                prop_assert!(before.contains_key(name), "{} added", name);
            }
        }
    }
}
