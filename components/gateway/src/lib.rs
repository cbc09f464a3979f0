//! Bazaar's gateway: the single public entry point. It routes
//! `/api/v1/<service>/...` to each service's own route, by Spin service
//! chaining in one process or over HTTP to a service's process of its own
//! (`<service>_url`), verifies access tokens once and vouches for the
//! caller to the services,
//! carries request ids and W3C trace context, limits request bodies, applies
//! CORS, and reports the health of the whole system. It calls each service
//! within a deadline, retries what is safe to retry, stops calling a failing
//! service (circuit breaker) and rate-limits logins, sign-ups and writes,
//! with the shared state in its key-value store.

mod app_metrics;
mod circuit;
mod cors;
mod gateway;
mod health;
mod limits;
mod openapi;
mod routes;
mod upstream;
mod wasi_http;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    wasi_http::respond(gateway::handle(req).await)
}
