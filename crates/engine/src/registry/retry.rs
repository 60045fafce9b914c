//! The one retry policy of the engine. Which failures are retried and how long to wait live here;
//! the registry client's request layer (`http`) and the blob transfer (`blobs`) apply it, and
//! nothing above the registry client retries anything.
//!
//! Budget, with the defaults (`EngineSettings::max_attempts` = 5, `max_retry_after` = 60 s):
//! - A request (ping, manifest GET/HEAD/PUT, token-less probe) is sent at most 5 times.
//! - A blob transfer (HEAD at the destination, mount or upload start, GET at the source, one
//!   streamed PUT) is one unit: at most 5 attempts, each sending every request of the unit once.
//!   So at most 5 GETs of one blob, never 5 × 5.
//! - A small blob read whole (bundle.json) is one unit too: at most 5 GETs.
//! - A manifest PUT refused with `MANIFEST_BLOB_UNKNOWN` for blobs that a HEAD then finds in
//!   the repository (distribution 2.8 reads a link file another upload is rewriting:
//!   `registry::manifests`) is sent again: at most 5 PUTs, with the waits below.
//! - Waits: a `Retry-After` the registry sent when it is at most 60 s (a longer one ends the
//!   operation with `RateLimited`), else 250 ms, 500 ms, 1 s, 2 s, 4 s, 8 s (capped).
//!
//! The operator's requeue with backoff (`operator::decide`) sits above a whole copy, not a request.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;

use crate::error::CopyError;

/// How often and how long to retry transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// Send once, never retry (the requests inside a unit that is retried as a whole).
    pub const ONCE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        max_retry_after: Duration::ZERO,
    };

    /// How long to wait before trying again after `attempt` ended with `status`, or `None` when
    /// the answer is final.
    pub fn wait_after_status(
        &self,
        attempt: u32,
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after.unwrap_or_else(|| backoff(attempt));
            return (wait <= self.max_retry_after).then_some(wait);
        }
        is_transient_status(status).then(|| {
            retry_after
                .unwrap_or_else(|| backoff(attempt))
                .min(self.max_retry_after)
        })
    }

    /// How long to wait before trying again after `attempt` failed with `error`, or `None`.
    pub fn wait_after_error(&self, attempt: u32, error: &CopyError) -> Option<Duration> {
        if attempt >= self.max_attempts || !error.is_transient() {
            return None;
        }
        Some(
            error
                .retry_after()
                .filter(|wait| *wait <= self.max_retry_after)
                .unwrap_or_else(|| backoff(attempt)),
        )
    }

    /// How long to wait before sending again a request the registry refused although its own
    /// answers since say it should have passed (`attempt` refusals so far), or `None` when the
    /// attempts are spent.
    pub fn wait_after_contradiction(&self, attempt: u32) -> Option<Duration> {
        (attempt < self.max_attempts).then(|| backoff(attempt))
    }

    /// Run `operation` (given the attempt number, from 1) until it succeeds, fails for good, or
    /// the attempts are spent.
    pub async fn run<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, CopyError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, CopyError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match operation(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => match self.wait_after_error(attempt, &error) {
                    Some(wait) => {
                        tracing::warn!(%what, %error, attempt, ?wait, "failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(error),
                },
            }
        }
    }
}

/// Statuses that say "try again": the server's trouble, not the request's.
fn is_transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::REQUEST_TIMEOUT
    )
}

/// Capped exponential backoff: 250 ms, 500 ms, 1 s, ... up to 8 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
        .min(Duration::from_secs(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Side;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        max_retry_after: Duration::from_secs(10),
    };

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(30), Duration::from_secs(8));
    }

    #[test]
    fn statuses_are_retried_within_the_budget() {
        let wait = |attempt, status, after| POLICY.wait_after_status(attempt, status, after);
        assert_eq!(wait(1, StatusCode::BAD_GATEWAY, None), Some(backoff(1)));
        assert_eq!(wait(3, StatusCode::BAD_GATEWAY, None), None);
        assert_eq!(wait(1, StatusCode::NOT_FOUND, None), None);
        let long = Some(Duration::from_secs(60));
        // A long Retry-After on a 5xx is shortened; on a 429 it ends the operation.
        assert_eq!(
            wait(1, StatusCode::SERVICE_UNAVAILABLE, long),
            Some(Duration::from_secs(10))
        );
        assert_eq!(wait(1, StatusCode::TOO_MANY_REQUESTS, long), None);
        assert_eq!(
            RetryPolicy::ONCE.wait_after_status(1, StatusCode::BAD_GATEWAY, None),
            None
        );
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let unreachable = CopyError::Unreachable {
            side: Side::Source,
            registry: "r".into(),
            detail: "refused".into(),
        };
        assert_eq!(POLICY.wait_after_error(1, &unreachable), Some(backoff(1)));
        assert_eq!(POLICY.wait_after_error(3, &unreachable), None);
        let spec = CopyError::InvalidSpec("bad".into());
        assert_eq!(POLICY.wait_after_error(1, &spec), None);
    }

    #[test]
    fn a_contradicted_refusal_is_sent_again_within_the_budget() {
        assert_eq!(POLICY.wait_after_contradiction(1), Some(backoff(1)));
        assert_eq!(POLICY.wait_after_contradiction(2), Some(backoff(2)));
        assert_eq!(POLICY.wait_after_contradiction(3), None);
        assert_eq!(RetryPolicy::ONCE.wait_after_contradiction(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_after_the_budget() {
        let mut calls = 0;
        let result: Result<(), CopyError> = POLICY
            .run("test", |_| {
                calls += 1;
                async {
                    Err(CopyError::Unreachable {
                        side: Side::Source,
                        registry: "r".into(),
                        detail: "refused".into(),
                    })
                }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
    }
}
