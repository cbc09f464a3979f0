//! Prices come from the products service, at the moment the order is
//! placed; the order keeps them even if the catalogue changes later.

use bazaar_api::{Problem, StatusCode};
use bazaar_order_model::{LineItem, NewOrder};
use bazaar_service::setting;
use serde::Deserialize;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{EmptyBody, Request};

/// Line items priced from the catalogue.
pub struct Priced {
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
}

#[derive(Deserialize)]
struct Product {
    price_cents: i64,
    currency: String,
}

pub async fn price(order: &NewOrder) -> Result<Priced, Problem> {
    let base = setting("products_url").await?;
    let mut items = Vec::with_capacity(order.items.len());
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    for (i, item) in order.items.iter().enumerate() {
        let product = fetch(&base, &item.product_id).await?.ok_or_else(|| {
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

async fn fetch(base: &str, product_id: &str) -> Result<Option<Product>, Problem> {
    let unavailable = |detail: String| Problem::new(StatusCode::BAD_GATEWAY, detail);
    let url = format!(
        "{}/api/v1/products/{}",
        base.trim_end_matches('/'),
        encode(product_id)
    );
    let request = Request::get(url)
        .body(EmptyBody::new())
        .map_err(|e| Problem::unprocessable(format!("invalid product id {product_id:?}: {e}")))?;
    let response = spin_sdk::http::send(request)
        .await
        .map_err(|e| unavailable(format!("the products service is unavailable: {e:?}")))?;
    match response.status() {
        StatusCode::OK => {
            let body = response.into_body().bytes().await.map_err(|e| {
                unavailable(format!("the products service's answer broke off: {e:?}"))
            })?;
            serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| unavailable(format!("the products service answered nonsense: {e}")))
        }
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(unavailable(format!(
            "the products service answered {other}"
        ))),
    }
}

/// Percent-encodes a path segment, so an id cannot smuggle in a path.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
