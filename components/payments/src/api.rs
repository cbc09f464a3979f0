//! The payments service's HTTP routes (reached from the gateway only).

use bazaar_api::{ApiResult, Method, PageRequest, Problem, StatusCode, json, query_param};
use bazaar_service::{admin, caller};
use spin_sdk::http::Request;

use bazaar_payment_store::Store;

/// This service's name: the audience of the identity tokens it accepts.
const SERVICE: &str = "payments";

pub async fn route(req: Request) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let local = bazaar_api::local_path(SERVICE, &path)?;
    match (method, bazaar_api::segments(local).as_slice()) {
        (Method::GET, ["health"]) => health().await,
        (Method::GET, ["api", "v1", "payments"]) => list(&req).await,
        (Method::GET, ["internal", "metrics"]) => {
            admin(&req, SERVICE, "read the metrics").await?;
            Store::open().await?.db().outbox_metrics().await
        }
        (_, ["api", "v1", "payments"]) => Err(Problem::method_not_allowed("GET")),
        _ => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

async fn health() -> ApiResult {
    Store::open().await?.ping().await?;
    Ok(bazaar_api::healthy("payments"))
}

/// An order's payments, for its owner or an administrator. Another user's
/// order answers 404, as an unknown one would.
async fn list(req: &Request) -> ApiResult {
    let identity = caller(req, SERVICE).await?;
    let order_id = query_param(req.uri().query(), "order_id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Problem::bad_request("the `order_id` query parameter is required"))?;
    let ask = PageRequest::from_query(req.uri().query(), bazaar_api::is_id)?;
    let payments = Store::open().await?.for_order(&order_id).await?;
    if payments.iter().any(|p| p.user_id != identity.sub) && !identity.is_admin() {
        return Err(Problem::not_found(format!("no order {order_id}")));
    }
    // An order has at most one payment (`order_id` is unique; a refund
    // changes its status), paged in memory only to keep every list's shape.
    let payments: Vec<_> = payments
        .into_iter()
        .filter(|p| {
            ask.cursor
                .as_deref()
                .is_none_or(|after| p.id.as_str() > after)
        })
        .take(ask.fetch() as usize)
        .collect();
    Ok(json(StatusCode::OK, &ask.page(payments, |p| p.id.clone())))
}
