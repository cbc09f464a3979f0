//! One call from the gateway to a service: within the service's deadline,
//! retried when that is safe and the budget allows, and refused at once
//! while the service's circuit is open.

use bazaar_api::{Method, Problem, StatusCode};
use bazaar_gateway_resilience::{Admission, Breaker, backoff_ms};
use bazaar_service::{TIMEOUT_HEADER, random_fraction, setting_as};
use bytes::Bytes;
use http::HeaderMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::circuit::Circuit;
use crate::routes::Service;
use crate::wasi_http::{self, Answer};

/// The longest pause between two attempts.
const MAX_BACKOFF_MS: u64 = 1_000;

/// A request ready to send to a service, as many times as it takes.
pub struct Call {
    pub service: Service,
    pub method: Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether sending it twice does what sending it once does: GET and
    /// HEAD, and writes that carry an `Idempotency-Key` the service honours.
    pub idempotent: bool,
    pub traffic: Traffic,
}

/// Whose call the gateway forwards: clients', which the service's circuit
/// breaker admits and counts, or the application's own upkeep (the
/// scheduled saga redrive), which an open circuit does not refuse and which
/// cannot open one for the clients.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Clients,
    Upkeep,
}

impl Call {
    fn guarded(&self) -> bool {
        self.traffic == Traffic::Clients
    }
}

enum Outcome {
    Answered(Answer),
    Unreachable(String),
    TimedOut,
}

impl Outcome {
    /// Whether the call counts against the service's health.
    fn failed(&self) -> bool {
        match self {
            Outcome::Answered(answer) => answer.status.is_server_error(),
            Outcome::Unreachable(_) | Outcome::TimedOut => true,
        }
    }

    /// Whether another attempt may succeed where this one failed without
    /// the service having acted on it twice in a way that matters: it was
    /// not reached, or said it was overloaded or could not reach its own
    /// dependencies. A time-out is not retried: the deadline is spent.
    fn retryable(&self) -> bool {
        match self {
            Outcome::Answered(answer) => matches!(
                answer.status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            Outcome::Unreachable(_) => true,
            Outcome::TimedOut => false,
        }
    }
}

pub async fn send(call: &Call) -> Result<Answer, Problem> {
    let service = call.service;
    let timeout_ms: u64 = setting_as(service.timeout_variable()).await?;
    let max_retries: u32 = setting_as("retry_max").await?;
    let retry_base_ms: u64 = setting_as("retry_base_ms").await?;
    let mut circuit = Circuit::load(service).await?;
    let admission = if call.guarded() {
        circuit.state.admit(now_ms())
    } else {
        Admission::Call
    };
    let probe = match admission {
        Admission::Refuse { retry_after_ms } => return Err(circuit_open(service, retry_after_ms)),
        Admission::Probe => {
            circuit
                .save(Breaker::probing(&circuit.policy, now_ms()))
                .await;
            true
        }
        Admission::Call => false,
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut retries = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let outcome = if remaining.is_zero() {
            Outcome::TimedOut
        } else {
            attempt(call, remaining).await
        };
        let failed = outcome.failed();
        if call.guarded() && (failed || probe || !circuit.state.quiet()) {
            circuit.reload().await;
            if let Some(next) = circuit
                .state
                .record(&circuit.policy, now_ms(), probe, failed)
            {
                circuit.save(next).await;
            }
        }
        if call.idempotent && !probe && retries < max_retries && outcome.retryable() {
            retries += 1;
            let pause = backoff_ms(
                retries,
                retry_base_ms,
                MAX_BACKOFF_MS,
                (random_fraction() * MAX_BACKOFF_MS as f64) as u64,
            );
            let time_left = deadline.saturating_duration_since(Instant::now());
            if let Some(next) = circuit.state.take_retry(&circuit.policy)
                && Duration::from_millis(pause) < time_left
            {
                // A failed answer's response (and the stream of its body)
                // is let go now, not held through the pause.
                drop(outcome);
                circuit.save(next).await;
                log_retry(call, retries, pause);
                spin_sdk::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        }
        return match outcome {
            Outcome::Answered(answer) => Ok(answer),
            Outcome::Unreachable(error) => {
                log_unreachable(service, &error);
                Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the {} service is unavailable", service.name()),
                ))
            }
            Outcome::TimedOut => Err(Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the {} service did not answer within {timeout_ms} ms",
                    service.name()
                ),
            )
            .with("service", service.name())),
        };
    }
}

/// One attempt, given `remaining` time: the request carries that budget
/// so the service can stop when the gateway has stopped waiting. The
/// deadline covers the answer's head; its body is passed on as it comes.
async fn attempt(call: &Call, remaining: Duration) -> Outcome {
    let timeout_ms = remaining.as_millis().to_string();
    let request = match wasi_http::request(
        &call.method,
        &call.uri,
        &call.headers,
        (TIMEOUT_HEADER, &timeout_ms),
        call.body.clone(),
    ) {
        Ok(request) => request,
        Err(e) => return Outcome::Unreachable(e),
    };
    match bazaar_service::within(remaining, wasi_http::send(request)).await {
        Some(Ok(answer)) => Outcome::Answered(answer),
        Some(Err(error)) => Outcome::Unreachable(error),
        None => Outcome::TimedOut,
    }
}

fn circuit_open(service: Service, retry_after_ms: u64) -> Problem {
    let seconds = retry_after_ms.div_ceil(1000).max(1);
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the {} service is failing and is not being called (circuit open); retry after {seconds} s",
            service.name()
        ),
    )
    .with("service", service.name())
    .with("retry_after", seconds)
    .header(http::header::RETRY_AFTER, seconds.to_string())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn log_retry(call: &Call, retry: u32, pause_ms: u64) {
    let line = serde_json::json!({
        "level": "warn",
        "msg": "retrying a service call",
        "service": call.service.name(),
        "method": call.method.as_str(),
        "retry": retry,
        "pause_ms": pause_ms,
    });
    println!("{line}");
}

fn log_unreachable(service: Service, error: &str) {
    let line = serde_json::json!({
        "level": "error",
        "msg": "service call failed",
        "service": service.name(),
        "error": error,
    });
    eprintln!("{line}");
}
