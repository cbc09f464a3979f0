//! Bazaar's users service: registration, credentials (Argon2id) and access
//! tokens. Reached through the gateway only, which verifies tokens and
//! vouches for the caller.

mod api;
mod domain;
mod store;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let deadline = bazaar_service::Deadline::of(&req);
    bazaar_api::finish(deadline.run(api::route(req)).await)
}
