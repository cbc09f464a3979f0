//! Bazaar's orders service. Orders are event-sourced: every change is an
//! event appended to the order's stream (SQLite `orders`) together with the
//! saga's decision, the commands it sends (a transactional outbox) and the
//! order's read-model view (CQRS: `GET /api/v1/orders` reads views, never
//! folds streams).

mod api;
mod catalogue;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let deadline = bazaar_service::Deadline::of(&req);
    bazaar_api::finish(deadline.run(api::route(req)).await)
}
