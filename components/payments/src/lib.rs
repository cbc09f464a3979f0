//! Bazaar's payments service: the payments recorded against orders (charged,
//! refunded, declined). Charging itself happens in the order saga's payment
//! step, which shares this database.

mod api;

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let deadline = bazaar_service::Deadline::of(&req);
    bazaar_api::finish(deadline.run(api::route(req)).await)
}
