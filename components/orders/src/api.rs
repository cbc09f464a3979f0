//! The orders service's HTTP routes (reached from the gateway only).

use bazaar_api::{ApiResult, Method, Problem, StatusCode, json, query_param};
use bazaar_auth::Identity;
use bazaar_order_model::{Event, NewOrder, Order, OrderPlaced, StoredEvent, saga};
use bazaar_order_store::{Append, AppendError, IdempotencyKey, OrderStore, OutboxMessage};
use bazaar_order_views::OrderViews;
use bazaar_service::{
    caller, header, json_body, now_rfc3339, seconds_ago_rfc3339, seconds_since, setting,
};
use bazaar_trace::{TRACEPARENT, TraceContext};
use spin_sdk::http::Request;

use crate::catalogue;

pub async fn route(req: Request) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (method, bazaar_api::segments(&path).as_slice()) {
        (Method::GET, ["health"]) => health().await,
        (Method::POST, ["api", "v1", "orders"]) => place(req).await,
        (Method::GET, ["api", "v1", "orders"]) => list(&req).await,
        (Method::GET, ["api", "v1", "orders", id]) => get(&req, id).await,
        (Method::GET, ["api", "v1", "orders", id, "events"]) => events(&req, id).await,
        (Method::POST, ["api", "v1", "orders", id, "cancel"]) => cancel(&req, id).await,
        (Method::POST, ["internal", "saga", "redrive"]) => redrive(&req).await,
        (Method::POST, ["api", "v1", "admin", "saga", "redrive"]) => admin_redrive(&req).await,
        (_, ["api", "v1", "orders"]) => Err(Problem::method_not_allowed("GET, POST")),
        (_, ["api", "v1", "orders", _] | ["api", "v1", "orders", _, "events"]) => {
            Err(Problem::method_not_allowed("GET"))
        }
        (_, ["api", "v1", "orders", _, "cancel"]) => Err(Problem::method_not_allowed("POST")),
        _ => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

async fn health() -> ApiResult {
    OrderStore::open().await?.ping().await?;
    Ok(bazaar_api::healthy("orders"))
}

fn accepted(order: &Order) -> ApiResult {
    let mut response = json(StatusCode::ACCEPTED, &order.to_api());
    let location = format!("/api/v1/orders/{}", order.id);
    response.headers_mut().insert(
        "location",
        location
            .parse()
            .map_err(|_| Problem::internal("order id is not a valid header"))?,
    );
    Ok(response)
}

async fn place(req: Request) -> ApiResult {
    let identity = caller(&req).await?;
    let idempotency_key = header(&req, "idempotency-key");
    let traceparent = header(&req, TRACEPARENT);
    let request_id = header(&req, bazaar_trace::REQUEST_ID);
    let new: NewOrder = json_body(req).await?;
    new.validate()?;
    if idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 200)
    {
        return Err(Problem::bad_request(
            "the Idempotency-Key header must be 1 to 200 characters",
        ));
    }
    let fingerprint = new.fingerprint();
    let store = OrderStore::open().await?;
    if let Some(key) = &idempotency_key
        && let Some(order) = replay(&store, &identity, key, &fingerprint).await?
    {
        return accepted(&order);
    }

    let priced = catalogue::price(&new).await?;
    let order_id = uuid::Uuid::now_v7().to_string();
    let now = now_rfc3339();
    let placed = Event::Placed(OrderPlaced {
        user_id: identity.sub.clone(),
        total_cents: priced.total_cents,
        currency: priced.currency,
        items: priced.items,
        card_token: new.payment.card_token.trim().to_string(),
    });
    let message =
        OutboxMessage::announcement(&order_id, &placed, 1, &now, request_id, child(traceparent));
    let key = idempotency_key.as_deref().map(|key| IdempotencyKey {
        key,
        fingerprint: &fingerprint,
    });
    let stored = match store
        .append(Append {
            order_id: &order_id,
            user_id: &identity.sub,
            expected: 0,
            events: &[placed],
            occurred_at: &now,
            outbox: &[message],
            idempotency: key,
            consumes: None,
            settled: false,
        })
        .await
    {
        Ok(stored) => stored,
        // Only a concurrent request with the same idempotency key can
        // collide with a brand-new order id.
        Err(AppendError::Conflict | AppendError::Duplicate) => {
            let key = idempotency_key.unwrap_or_default();
            return match replay(&store, &identity, &key, &fingerprint).await? {
                Some(order) => accepted(&order),
                None => Err(Problem::conflict("the order could not be recorded; retry")),
            };
        }
        Err(AppendError::Failed(problem)) => return Err(problem),
    };
    publish(&store, &now).await;
    let order = fold(&order_id, &stored)?;
    accepted(&order)
}

/// The order an earlier request with this key created, if the body is the
/// same; a 409 if the key was used for a different order.
async fn replay(
    store: &OrderStore,
    identity: &Identity,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Order>, Problem> {
    let Some((first_fingerprint, order_id)) = store.idempotent_order(&identity.sub, key).await?
    else {
        return Ok(None);
    };
    if first_fingerprint != fingerprint {
        return Err(Problem::conflict(
            "this Idempotency-Key was already used for a different order",
        ));
    }
    let events = store.load(&order_id).await?;
    fold(&order_id, &events).map(Some)
}

/// Publishes the outbox now; whatever fails stays there for a later relay.
async fn publish(store: &OrderStore, now: &str) {
    let outcome = match setting("redis_url").await {
        Ok(address) => store.relay_outbox(&address, now).await,
        Err(problem) => Err(problem),
    };
    if let Err(problem) = outcome {
        eprintln!(
            "{{\"level\":\"warn\",\"msg\":\"outbox not published yet\",\"error\":{:?}}}",
            problem.detail
        );
    }
}

fn fold(order_id: &str, events: &[StoredEvent]) -> Result<Order, Problem> {
    Order::fold(order_id, events)
        .map_err(Problem::internal)?
        .ok_or_else(|| Problem::not_found(format!("no order {order_id}")))
}

/// The order, if the caller may see it; otherwise "not found", so other
/// users' orders are not even known to exist.
async fn visible(
    store: &OrderStore,
    identity: &Identity,
    order_id: &str,
) -> Result<(Order, Vec<StoredEvent>), Problem> {
    let events = store.load(order_id).await?;
    let order = fold(order_id, &events)?;
    if !order.visible_to(&identity.sub, identity.is_admin()) {
        return Err(Problem::not_found(format!("no order {order_id}")));
    }
    Ok((order, events))
}

async fn get(req: &Request, order_id: &str) -> ApiResult {
    let identity = caller(req).await?;
    let (order, _) = visible(&OrderStore::open().await?, &identity, order_id).await?;
    Ok(json(StatusCode::OK, &order.to_api()))
}

async fn events(req: &Request, order_id: &str) -> ApiResult {
    let identity = caller(req).await?;
    let (_, events) = visible(&OrderStore::open().await?, &identity, order_id).await?;
    let events: Vec<serde_json::Value> = events.iter().map(StoredEvent::to_api).collect();
    Ok(json(StatusCode::OK, &events))
}

async fn list(req: &Request) -> ApiResult {
    let identity = caller(req).await?;
    let orders = OrderViews::open().await?.for_user(&identity.sub).await?;
    let orders: Vec<serde_json::Value> = orders.iter().map(Order::to_api).collect();
    Ok(json(StatusCode::OK, &orders))
}

async fn cancel(req: &Request, order_id: &str) -> ApiResult {
    let identity = caller(req).await?;
    let store = OrderStore::open().await?;
    // Optimistic concurrency: decide on what was read, append only if
    // nothing was appended meanwhile, else decide again.
    for _ in 0..3 {
        let (order, _) = visible(&store, &identity, order_id).await?;
        if order.user_id != identity.sub {
            return Err(Problem::forbidden(
                "only the customer who placed an order may cancel it",
            ));
        }
        let Some(event) = order.cancel()? else {
            return accepted(&order);
        };
        let now = now_rfc3339();
        let message = OutboxMessage::announcement(
            order_id,
            &event,
            order.version + 1,
            &now,
            header(req, bazaar_trace::REQUEST_ID),
            child(header(req, TRACEPARENT)),
        );
        let append = Append {
            order_id,
            user_id: &order.user_id,
            expected: order.version,
            events: &[event],
            occurred_at: &now,
            outbox: &[message],
            idempotency: None,
            consumes: None,
            settled: false,
        };
        match store.append(append).await {
            Ok(_) => {
                publish(&store, &now).await;
                let order = fold(order_id, &store.load(order_id).await?)?;
                return accepted(&order);
            }
            Err(AppendError::Conflict | AppendError::Duplicate) => continue,
            Err(AppendError::Failed(problem)) => return Err(problem),
        }
    }
    Err(Problem::conflict(
        "the order kept changing; retry the cancellation",
    ))
}

/// A new hop in the caller's trace, if it sent one.
fn child(traceparent: Option<String>) -> Option<String> {
    traceparent
        .and_then(|t| TraceContext::parse(&t))
        .map(|t| t.child().to_string())
}

/// Re-sends the pending command of every saga quiet for `quiet_seconds`
/// (payment retries also wait out their backoff), and publishes whatever
/// the outbox still holds. Safe to run often and from several places:
/// every step is idempotent per order.
async fn redrive(req: &Request) -> ApiResult {
    let quiet_seconds: f64 = query_param(req.uri().query(), "quiet_seconds")
        .map(|q| {
            q.parse()
                .map_err(|_| Problem::bad_request("`quiet_seconds` must be a number"))
        })
        .transpose()?
        .unwrap_or(2.0);
    let store = OrderStore::open().await?;
    let mut redriven = 0;
    for order_id in store
        .quiet_sagas(&seconds_ago_rfc3339(quiet_seconds), 500)
        .await?
    {
        let Ok(order) = fold(&order_id, &store.load(&order_id).await?) else {
            continue;
        };
        let Some(command) = saga::pending(&order) else {
            continue;
        };
        let waited = seconds_since(&order.saga.last_event_at).unwrap_or(f64::MAX);
        if command == saga::Command::Charge
            && waited < saga::retry_delay_seconds(order.saga.payment_failures) as f64
        {
            continue;
        }
        let now = now_rfc3339();
        let message =
            OutboxMessage::command(&order, command, &now, Some(format!("redrive:{now}")), None);
        store.redrive(&order_id, &message, &now).await?;
        redriven += 1;
    }
    let mut refreshed = 0;
    for order_id in store
        .stale_views(&seconds_ago_rfc3339(quiet_seconds), 500)
        .await?
    {
        let now = now_rfc3339();
        let message = OutboxMessage::view_refresh(&order_id, &now);
        store.redrive(&order_id, &message, &now).await?;
        refreshed += 1;
    }
    let published = match setting("redis_url").await {
        Ok(address) => store
            .relay_outbox(&address, &now_rfc3339())
            .await
            .unwrap_or(0),
        Err(_) => 0,
    };
    let outcome = serde_json::json!({ "redriven": redriven, "views_refreshed": refreshed, "published": published });
    println!(
        "{}",
        serde_json::json!({ "level": "info", "msg": "saga redrive", "outcome": outcome })
    );
    Ok(json(StatusCode::OK, &outcome))
}

async fn admin_redrive(req: &Request) -> ApiResult {
    if !caller(req).await?.is_admin() {
        return Err(Problem::forbidden("only administrators may redrive sagas"));
    }
    redrive(req).await
}
