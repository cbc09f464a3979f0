//! Bazaar's gateway: the single public entry point. It routes
//! `/api/v1/<service>/...` to the private services by Spin service chaining,
//! verifies access tokens once and vouches for the caller to the services,
//! carries request ids and W3C trace context, limits request bodies, applies
//! CORS, and reports the health of the whole system.

mod cors;
mod gateway;
mod health;
mod openapi;
mod routes;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    gateway::handle(req).await
}
