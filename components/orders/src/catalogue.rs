//! Prices come from the products service, at the moment the order is
//! placed; the order keeps them even if the catalogue changes later.

use bazaar_api::{Problem, StatusCode};
use bazaar_auth::{Hop, IDENTITY_HEADER};
use bazaar_order_model::{LineItem, NewOrder};
use bazaar_service::{identity_token, setting};
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Request, Uri};

/// The name orders signs its own calls with: the issuer the products
/// service trusts for the price lookup.
const SERVICE: &str = "orders";

/// Line items priced from the catalogue.
pub struct Priced {
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
}

#[derive(Deserialize)]
struct Product {
    id: String,
    price_cents: i64,
    currency: String,
}

#[derive(Deserialize)]
struct Lookup {
    products: Vec<Product>,
}

/// Prices every line with one call to the products service.
pub async fn price(order: &NewOrder) -> Result<Priced, Problem> {
    let ids: Vec<&str> = order.items.iter().map(|i| i.product_id.as_str()).collect();
    let found = lookup(&setting("products_url").await?, &ids).await?;
    let mut items = Vec::with_capacity(order.items.len());
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    for (i, item) in order.items.iter().enumerate() {
        let product = found
            .iter()
            .find(|p| p.id == item.product_id)
            .ok_or_else(|| {
                Problem::unprocessable(format!(
                    "`items[{i}].product_id`: no product {}",
                    item.product_id
                ))
            })?;
        match &currency {
            None => currency = Some(product.currency.clone()),
            Some(c) if *c != product.currency => {
                return Err(Problem::unprocessable(format!(
                    "`items[{i}]` is priced in {}, the order in {c}; one order has one currency",
                    product.currency
                )));
            }
            Some(_) => {}
        }
        total = product
            .price_cents
            .checked_mul(item.quantity)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| Problem::unprocessable("the order total is too large"))?;
        items.push(LineItem {
            product_id: item.product_id.clone(),
            quantity: item.quantity,
            unit_price_cents: product.price_cents,
        });
    }
    Ok(Priced {
        items,
        total_cents: total,
        currency: currency.unwrap_or_default(),
    })
}

async fn lookup(base: &str, ids: &[&str]) -> Result<Vec<Product>, Problem> {
    let unavailable = |detail: String| Problem::new(StatusCode::BAD_GATEWAY, detail);
    let path = bazaar_api::service_path("products", "/internal/products/lookup");
    let uri: Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| Problem::internal(format!("products_url {base:?}: {e}")))?;
    let body = serde_json::to_vec(&serde_json::json!({ "ids": ids }))
        .map_err(|e| Problem::internal(e.to_string()))?;
    // The products service answers orders alone here, as its identity
    // token (signed with orders' own key) shows.
    let hop = Hop {
        service: "products",
        method: "POST",
        path: uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    let token = identity_token(SERVICE, &hop, 0).await?;
    let request = Request::post(&uri)
        .header("content-type", "application/json")
        .header(IDENTITY_HEADER, token)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Problem::internal(format!("the catalogue request: {e}")))?;
    let response = spin_sdk::http::send(request)
        .await
        .map_err(|e| unavailable(format!("the products service is unavailable: {e:?}")))?;
    if response.status() != StatusCode::OK {
        return Err(unavailable(format!(
            "the products service answered {}",
            response.status()
        )));
    }
    let body = response
        .into_body()
        .bytes()
        .await
        .map_err(|e| unavailable(format!("the products service's answer broke off: {e:?}")))?;
    serde_json::from_slice::<Lookup>(&body)
        .map(|l| l.products)
        .map_err(|e| unavailable(format!("the products service answered nonsense: {e}")))
}
