//! Bazaar's orders service. Orders are event-sourced: every change is an
//! event appended to the order's stream (SQLite `orders`), announced on
//! Redis through a transactional outbox, and folded into views for the read
//! side (key-value `order_views`, maintained by `functions/order-projection`).

mod api;
mod catalogue;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    bazaar_api::finish(api::route(req).await)
}
