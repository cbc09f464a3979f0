//! Bazaar's products service: the catalogue and each product's available
//! stock. Reached through the gateway, and by the orders service for the
//! prices it snapshots; its catalogue reads serve anyone (see
//! `bazaar_api::service_path`).

mod api;
mod domain;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let deadline = bazaar_service::Deadline::of(&req);
    bazaar_api::finish(deadline.run(api::route(req)).await)
}
