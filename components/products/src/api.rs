//! The products service's HTTP routes (reached from the gateway, and from
//! the orders service for prices).

use bazaar_api::{
    ApiResult, Conflict, Method, PageRequest, Problem, Response, StatusCode, header, json,
};
use bazaar_service::{admin, calling_service, json_body, now_rfc3339};
use spin_sdk::http::Request;

use crate::domain::{self, NewProduct, ProductPatch, StockLevel};
use bazaar_product_store::{Conditional, Store};

/// This service's name: the audience of the identity tokens it accepts.
const SERVICE: &str = "products";

pub async fn route(req: Request) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let local = bazaar_api::local_path(SERVICE, &path)?;
    match (method, bazaar_api::segments(local).as_slice()) {
        (Method::GET, ["health"]) => health().await,
        (Method::GET, ["api", "v1", "products"]) => list(&req).await,
        (Method::POST, ["api", "v1", "products"]) => create(req).await,
        (Method::GET, ["api", "v1", "products", id]) => get(id).await,
        (Method::POST, ["internal", "products", "lookup"]) => lookup(req).await,
        (Method::GET, ["internal", "metrics"]) => {
            admin(&req, SERVICE, "read the metrics").await?;
            Store::open().await?.db().outbox_metrics().await
        }
        (Method::PATCH, ["api", "v1", "products", id]) => update(id, req).await,
        (Method::PUT, ["api", "v1", "products", id, "stock"]) => set_stock(id, req).await,
        (_, ["api", "v1", "products"]) => Err(Problem::method_not_allowed("GET, POST")),
        (_, ["api", "v1", "products", _]) => Err(Problem::method_not_allowed("GET, PATCH")),
        (_, ["api", "v1", "products", _, "stock"]) => Err(Problem::method_not_allowed("PUT")),
        _ => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

/// Several products in one call, for the orders service to price an order
/// (the gateway has no route here, and only orders may call it: its
/// identity token must be signed with orders' key). Ids not found are
/// left out.
async fn lookup(req: Request) -> ApiResult {
    calling_service(&req, SERVICE, "orders").await?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Lookup {
        ids: Vec<String>,
    }
    let lookup: Lookup = json_body(req).await?;
    if lookup.ids.len() > domain::MAX_LOOKUP {
        return Err(Problem::unprocessable(format!(
            "`ids` may list at most {} products",
            domain::MAX_LOOKUP
        )));
    }
    let products = Store::open().await?.get_many(&lookup.ids).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "products": products }),
    ))
}

async fn health() -> ApiResult {
    Store::open().await?.ping().await?;
    Ok(bazaar_api::healthy("products"))
}

async fn list(req: &Request) -> ApiResult {
    let ask = PageRequest::from_query(req.uri().query(), bazaar_api::is_id)?;
    let items = Store::open()
        .await?
        .page(ask.cursor.as_deref(), ask.fetch())
        .await?;
    Ok(json(StatusCode::OK, &ask.page(items, |p| p.id.clone())))
}

async fn get(id: &str) -> ApiResult {
    match Store::open().await?.get(id).await? {
        Some(product) => with_etag(json(StatusCode::OK, &product), product.version),
        None => Err(Problem::not_found(format!("no product {id}"))),
    }
}

fn with_etag(mut response: Response<String>, version: i64) -> ApiResult {
    let value = domain::etag(version)
        .parse()
        .map_err(|_| Problem::internal("an ETag that is not a header value"))?;
    response.headers_mut().insert("etag", value);
    Ok(response)
}

async fn create(req: Request) -> ApiResult {
    admin(&req, SERVICE, "change the catalogue").await?;
    let product = json_body::<NewProduct>(req).await?.validate()?;
    if !Store::open()
        .await?
        .insert(&product, &now_rfc3339())
        .await?
    {
        return Err(Problem::conflict(
            Conflict::SkuTaken,
            format!("a product with sku {} already exists", product.sku),
        ));
    }
    Ok(json(StatusCode::CREATED, &product))
}

/// Changes a product's name, description or price. Another admin may have
/// changed it since the caller read it, so the caller must say which
/// version it read (`If-Match`), as for stock: otherwise one of two edits
/// would be lost.
async fn update(id: &str, req: Request) -> ApiResult {
    admin(&req, SERVICE, "change the catalogue").await?;
    let version = if_match(&req, id, "an edit made since you read it is not lost")?;
    let patch: ProductPatch = json_body(req).await?;
    let store = Store::open().await?;
    let current = store
        .get(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    if current.version != version {
        return Err(stale(id, version, current.version));
    }
    let updated = patch.apply(current)?;
    let change = store.update(&updated, version, &now_rfc3339()).await?;
    changed(&store, id, version, change).await
}

/// Sets the stock a product has. Reservations change it too, so the
/// caller must say which version it read (`If-Match`): an absolute value
/// computed from an older read would undo them.
async fn set_stock(id: &str, req: Request) -> ApiResult {
    admin(&req, SERVICE, "change the catalogue").await?;
    let version = if_match(
        &req,
        id,
        "stock reserved since you read it is not overwritten",
    )?;
    let available = json_body::<StockLevel>(req).await?.validate()?;
    let store = Store::open().await?;
    let change = store
        .set_stock(id, available, version, &now_rfc3339())
        .await?;
    changed(&store, id, version, change).await
}

/// The product version a change is made against: its `If-Match`, which is
/// required (428), so that `why` holds.
fn if_match(req: &Request, id: &str, why: &str) -> Result<i64, Problem> {
    match bazaar_service::header(req, "if-match") {
        Some(value) => domain::if_match_version(&value),
        None => Err(Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            format!(
                "send If-Match with the product's ETag (GET /api/v1/products/{id}), so that {why}"
            ),
        )),
    }
}

/// 412, with the product's current `ETag`.
fn stale(id: &str, version: i64, current: i64) -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_FAILED,
        format!("product {id} changed since version {version} (it is at {current}): read it again"),
    )
    .header(header::ETAG, domain::etag(current))
}

/// The answer to a change made against `version`: the product as it is
/// now, with its new `ETag`; 404 or 412 if the change was not made.
async fn changed(store: &Store, id: &str, version: i64, change: Conditional) -> ApiResult {
    match change {
        Conditional::Applied => {}
        Conditional::NoSuchProduct => {
            return Err(Problem::not_found(format!("no product {id}")));
        }
        Conditional::Stale(current) => return Err(stale(id, version, current)),
    }
    let product = store
        .get(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    with_etag(json(StatusCode::OK, &product), product.version)
}
