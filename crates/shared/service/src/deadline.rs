//! The time a caller still gives a request, carried from the gateway to the
//! service, so a service stops working on an answer nobody will read.

use bazaar_api::{ApiResult, Problem, StatusCode};
use spin_sdk::http::Request;
use std::time::Duration;

/// The caller's remaining budget for this request, in milliseconds, when it
/// was sent (relative, so the two clocks need not agree).
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";

/// The budget a request arrived with, if its caller set one.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Option<u64>);

impl Deadline {
    pub fn of(req: &Request) -> Deadline {
        Deadline(crate::header(req, TIMEOUT_HEADER).and_then(|ms| ms.parse().ok()))
    }

    /// Runs `handler` within the budget; past it, the handler is dropped
    /// and the answer is 504. Dropping is safe: a guest connection dropped
    /// inside a transaction is rolled back by the host.
    pub async fn run<F>(self, handler: F) -> ApiResult
    where
        F: Future<Output = ApiResult>,
    {
        let Some(budget) = self.0 else {
            return handler.await;
        };
        within(Duration::from_millis(budget), handler)
            .await
            .unwrap_or_else(|| {
                Err(Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the request was not answered within the caller's {budget} ms"),
                ))
            })
    }
}

/// `work`'s output if it finishes within `limit`, else `None` (and `work`
/// is dropped, which cancels what it was waiting for).
pub async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    let timer = spin_sdk::time::sleep(limit);
    futures::pin_mut!(work, timer);
    match futures::future::select(work, timer).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}
