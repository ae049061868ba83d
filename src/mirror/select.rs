//! Which requests a mirror gets: method and path filters, sampling, and the rate limit.
//!
//! [`select`] is a pure function of the options and the request head (plus a random
//! roll the caller supplies), so it runs before anything is queued or copied and is
//! tested without I/O. [`RateLimiter`] is the per-mirror token bucket of `rate=N`,
//! applied by the caller only to requests `select` let through. Neither counts
//! anything: the caller records `filtered` or `sent`.
//!
//! # Sticky sampling
//! With `sample_by=header:NAME` or `cookie:NAME`, a request carrying a non-empty value is
//! mirrored when `fnv1a64(value) % 1_000_000 < round(percent * 10_000)`, where
//! [`fnv1a64`] is 64-bit FNV-1a over the value's bytes as sent. The same value gets
//! the same answer at every instance, after a restart and from any tool that repeats
//! this arithmetic; a larger `percent` only adds values. A request without the value
//! (or with an empty one) is decided at random.

use std::sync::{Mutex, PoisonError};

use http::Method;
use http::header::{self, HeaderMap};
use tokio::time::Instant;

use super::options::{MirrorOptions, SampleBy};

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Sticky sampling resolution: one bucket per ten-thousandth of a percent.
const STICKY_BUCKETS: u64 = 1_000_000;

/// True when this request goes to the mirror: it passes the method filter, then the
/// path-prefix filter (`path` is the request path, without the query), then sampling.
/// `roll` is called at most once, only when a random decision is needed, and must
/// return a value in `[0, 1)`.
pub fn select(
    options: &MirrorOptions,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    roll: impl FnOnce() -> f64,
) -> bool {
    if options.selects_all() {
        return true;
    }
    if !options.methods.is_empty() && !options.methods.contains(method) {
        return false;
    }
    if !options.paths.is_empty() && !options.paths.iter().any(|p| path.starts_with(p.as_str())) {
        return false;
    }
    if options.percent >= 100.0 {
        return true;
    }
    let value = options
        .sample_by
        .as_ref()
        .and_then(|by| sample_value(by, headers))
        .filter(|v| !v.is_empty());
    match value {
        Some(value) => sticky(value, options.percent),
        None => roll() < options.percent / 100.0,
    }
}

/// The value sticky sampling hashes: the first value of the header, or the value of the
/// first cookie of that name across every `Cookie` header (RFC 6265 §5.4 `a=b; c=d`;
/// HTTP/2 may split cookies over several fields). Surrounding whitespace is not part of
/// a cookie value; quotes are kept.
fn sample_value<'h>(by: &SampleBy, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    match by {
        SampleBy::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        SampleBy::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            }),
    }
}

/// 64-bit FNV-1a of `bytes` (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The sticky decision for `value` at `percent` (see the module doc).
pub fn sticky(value: &[u8], percent: f64) -> bool {
    // `percent` is in (0, 100], so the threshold is in [0, 1_000_000]; `as` saturates.
    let threshold = (percent * 10_000.0).round() as u64;
    fnv1a64(value) % STICKY_BUCKETS < threshold
}

/// The token bucket of `rate=N`: holds up to `max(N, 1)` tokens (so a fractional rate
/// below one still lets a copy through now and then), refilled at `N` per second,
/// full at the start.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    capacity: f64,
    // A std mutex: held for a few arithmetic operations, never across an await.
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` until the first call.
    updated: Option<Instant>,
}

impl RateLimiter {
    /// A limiter admitting `rate` copies per second (`rate > 0`, as the options ensure).
    pub fn new(rate: f64) -> Self {
        let capacity = rate.max(1.0);
        Self {
            rate,
            capacity,
            bucket: Mutex::new(Bucket {
                tokens: capacity,
                updated: None,
            }),
        }
    }

    /// Takes one token if there is one at `now`. A `now` earlier than a previous call
    /// adds nothing.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(updated) = bucket.updated {
            let elapsed = now.saturating_duration_since(updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        }
        if bucket.updated.is_none_or(|u| now > u) {
            bucket.updated = Some(now);
        }
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn opts(text: &str) -> MirrorOptions {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn never_rolled() -> f64 {
        panic!("roll must not be called")
    }

    /// The published vectors, also in docs/sticky-sampling.md: value, FNV-1a 64 in hex,
    /// decision at percent 50, decision at percent 5.
    const VECTORS: [(&str, u64, bool, bool); 6] = [
        ("", 0xcbf29ce484222325, false, false),
        ("a", 0xaf63dc4c8601ec8c, false, false),
        ("foobar", 0x85944171f73967e8, true, false),
        ("user-42", 0x32c6d7a54d35dacb, true, false),
        ("session-7f3a9c", 0x6f2acf9e275cc75b, true, true),
        ("42", 0x07ee7e07b4b19223, true, true),
    ];

    #[test]
    fn sticky_hash_matches_published_vectors() {
        for (value, hash, at50, at5) in VECTORS {
            assert_eq!(fnv1a64(value.as_bytes()), hash, "{value:?}");
            assert_eq!(sticky(value.as_bytes(), 50.0), at50, "{value:?} at 50");
            assert_eq!(sticky(value.as_bytes(), 5.0), at5, "{value:?} at 5");
            assert!(sticky(value.as_bytes(), 100.0));
        }
    }

    #[test]
    fn default_options_select_everything_without_rolling() {
        let options = MirrorOptions::default();
        assert!(select(
            &options,
            &Method::DELETE,
            "/x",
            &HeaderMap::new(),
            never_rolled
        ));
        let with_other_options = opts("compare rate=1 set_header=X-A:1 sample_by=header:x-user");
        assert!(select(
            &with_other_options,
            &Method::GET,
            "/",
            &HeaderMap::new(),
            never_rolled
        ));
    }

    #[test]
    fn method_and_path_filters() {
        let options = opts("method=GET,HEAD path=/api path=/v2/");
        let h = HeaderMap::new();
        assert!(select(
            &options,
            &Method::GET,
            "/api/users",
            &h,
            never_rolled
        ));
        assert!(select(&options, &Method::HEAD, "/v2/x", &h, never_rolled));
        // Prefix match on the string, as documented.
        assert!(select(&options, &Method::GET, "/apix", &h, never_rolled));
        assert!(!select(
            &options,
            &Method::POST,
            "/api/users",
            &h,
            never_rolled
        ));
        assert!(!select(&options, &Method::GET, "/v2", &h, never_rolled));
        assert!(!select(&options, &Method::GET, "/", &h, never_rolled));
    }

    #[test]
    fn random_sampling_compares_the_roll_with_percent() {
        let options = opts("percent=25");
        let h = HeaderMap::new();
        assert!(select(&options, &Method::GET, "/", &h, || 0.0));
        assert!(select(&options, &Method::GET, "/", &h, || 0.2499));
        assert!(!select(&options, &Method::GET, "/", &h, || 0.25));
        assert!(!select(&options, &Method::GET, "/", &h, || 0.9999));
        // Filters come first: a filtered request does not roll.
        let filtered = opts("percent=25 method=POST");
        assert!(!select(&filtered, &Method::GET, "/", &h, never_rolled));
    }

    #[test]
    fn sticky_sampling_by_header() {
        let options = opts("percent=5 sample_by=header:X-User");
        let pick = |value: &str| {
            select(
                &options,
                &Method::GET,
                "/",
                &headers(&[("x-user", value)]),
                never_rolled,
            )
        };
        assert!(pick("42"));
        assert!(pick("session-7f3a9c"));
        assert!(!pick("user-42"));
        assert!(!pick("a"));
        // Without the header, or with an empty one: at random.
        let h = HeaderMap::new();
        assert!(select(&options, &Method::GET, "/", &h, || 0.01));
        assert!(!select(&options, &Method::GET, "/", &h, || 0.5));
        let empty = headers(&[("x-user", "")]);
        assert!(select(&options, &Method::GET, "/", &empty, || 0.01));
    }

    #[test]
    fn sticky_sampling_by_cookie_reads_every_cookie_header() {
        let options = opts("percent=50 sample_by=cookie:sid");
        let pick = |h: &HeaderMap| select(&options, &Method::GET, "/", h, never_rolled);
        assert!(pick(&headers(&[("cookie", "a=1; sid=foobar; b=2")])));
        assert!(!pick(&headers(&[("cookie", "sid=a")])));
        // Split over two fields (HTTP/2), first match wins, whitespace trimmed.
        assert!(pick(&headers(&[
            ("cookie", "x=1"),
            ("cookie", " sid = foobar ;sid=a")
        ])));
        // Names are case-sensitive and must match whole.
        let other = headers(&[("cookie", "SID=foobar; sidx=foobar; sid")]);
        assert!(select(&options, &Method::GET, "/", &other, || 0.1));
        assert!(!select(&options, &Method::GET, "/", &other, || 0.9));
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(3.0);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(limiter.try_acquire(at(0)));
        assert!(limiter.try_acquire(at(0)));
        assert!(limiter.try_acquire(at(0)));
        assert!(!limiter.try_acquire(at(0)));
        assert!(!limiter.try_acquire(at(300)));
        assert!(limiter.try_acquire(at(334)));
        assert!(!limiter.try_acquire(at(400)));
        // A long pause refills up to the burst, not beyond.
        let burst = (0..10).filter(|_| limiter.try_acquire(at(60_000))).count();
        assert_eq!(burst, 3);
        // Time going backwards adds nothing.
        assert!(!limiter.try_acquire(at(1_000)));
        assert!(!limiter.try_acquire(at(60_000)));
    }

    #[test]
    fn fractional_rate_admits_one_copy_per_period() {
        let limiter = RateLimiter::new(0.5);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(limiter.try_acquire(at(0)));
        assert!(!limiter.try_acquire(at(1_000)));
        assert!(!limiter.try_acquire(at(1_999)));
        assert!(limiter.try_acquire(at(2_000)));
        assert!(!limiter.try_acquire(at(2_001)));
        // Capacity is one: a long pause still gives one copy.
        assert!(limiter.try_acquire(at(100_000)));
        assert!(!limiter.try_acquire(at(100_000)));
    }

    proptest! {
        #[test]
        fn sticky_is_monotonic_in_percent(value in proptest::collection::vec(any::<u8>(), 0..32), p in 0.0001f64..100.0, q in 0.0001f64..100.0) {
            let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
            if sticky(&value, lo) {
                prop_assert!(sticky(&value, hi));
            }
        }

        #[test]
        fn token_bucket_never_exceeds_burst_plus_rate(rate in 0.1f64..50.0, steps in proptest::collection::vec(0u64..2_000, 1..60)) {
            let limiter = RateLimiter::new(rate);
            let t0 = Instant::now();
            let mut ms = 0;
            let mut admitted = 0u64;
            for step in steps {
                ms += step;
                admitted += u64::from(limiter.try_acquire(t0 + Duration::from_millis(ms)));
            }
            let bound = rate.max(1.0) + rate * (ms as f64 / 1000.0);
            prop_assert!(admitted as f64 <= bound + 1e-9, "{} > {}", admitted, bound);
        }
    }
}
