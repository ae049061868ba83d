//! `retry=N` (docs/mirror-options.md): a copy is tried again, up to N more times, when
//! it certainly never reached the mirror, or whatever happened to it when its method is
//! idempotent (RFC 9110 §9.2.2: sending it twice has the effect of sending it once).
//! The waits grow from [`FIRST_BACKOFF`], doubling; the caller's `--mirror-timeout`
//! bounds the tries and the waits together, so this loop has no deadline of its own.
//!
//! Which errors mean "never reached" is [`crate::client::Error::never_sent`]: no
//! connection could be made, or hyper gave the request back unwritten. A reset, an end
//! of stream or a timeout once the request was handed to a connection may follow its
//! arrival, so a non-idempotent copy is then not sent again.

use std::time::Duration;

use http::Method;

/// The wait before the first further try; each later wait is twice the one before.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The methods whose copies are tried again after any failure (RFC 9110 §9.2.2 names
/// these and `TRACE`, which is not worth a second try).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Runs `attempt`, then again while `again` says so of its outcome, at most `retries`
/// more times, waiting [`FIRST_BACKOFF`] before the first further try and twice as long
/// before each next one. `on_retry` is called as each further try starts. Returns the
/// last outcome.
pub async fn with_retries<T, Fut>(
    retries: u32,
    mut attempt: impl FnMut() -> Fut,
    again: impl Fn(&T) -> bool,
    mut on_retry: impl FnMut(),
) -> T
where
    Fut: Future<Output = T>,
{
    let mut outcome = attempt().await;
    let mut backoff = FIRST_BACKOFF;
    for _ in 0..retries {
        if !again(&outcome) {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
        on_retry();
        outcome = attempt().await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use tokio::time::Instant;

    /// Tries that always fail: when each started, relative to the first.
    async fn starts(retries: u32) -> (Vec<Duration>, u32) {
        let start = Instant::now();
        let tries = RefCell::new(Vec::new());
        let mut counted = 0;
        let outcome = with_retries(
            retries,
            || {
                tries.borrow_mut().push(start.elapsed());
                std::future::ready(false)
            },
            |ok| !ok,
            || counted += 1,
        )
        .await;
        assert!(!outcome);
        (tries.into_inner(), counted)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_double_from_100_ms() {
        let ms = Duration::from_millis;
        let (tries, counted) = starts(4).await;
        assert_eq!(tries, [ms(0), ms(100), ms(300), ms(700), ms(1500)]);
        assert_eq!(counted, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retries_is_one_try_without_waiting() {
        let (tries, counted) = starts(0).await;
        assert_eq!(tries, [Duration::ZERO]);
        assert_eq!(counted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_first_outcome_not_to_retry() {
        let start = Instant::now();
        let mut tries = 0;
        let mut counted = 0;
        let outcome = with_retries(
            5,
            || {
                tries += 1;
                std::future::ready(tries)
            },
            |n| *n < 3,
            || counted += 1,
        )
        .await;
        assert_eq!((outcome, counted), (3, 2));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }
}
