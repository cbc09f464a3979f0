//! Answers every request with a fixed body: what remains of a request's cost
//! when the guest does nothing is the host's own (HTTP, routing, instances).

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;

#[http_service]
async fn handle(_req: Request) -> impl IntoResponse {
    Response::new("Hello, Bazaar!\n".to_string())
}
