//! The orders service's HTTP routes (reached from the gateway only).

use bazaar_api::{ApiResult, Method, Problem, StatusCode, json};
use bazaar_auth::Identity;
use bazaar_envelope::{Envelope, ORDER_EVENTS_CHANNEL};
use bazaar_order_model::{Event, NewOrder, Order, OrderPlaced, StoredEvent};
use bazaar_order_store::{Append, AppendError, IdempotencyKey, OrderStore, OutboxMessage};
use bazaar_order_views::OrderViews;
use bazaar_service::{caller, header, json_body, now_rfc3339, setting};
use bazaar_trace::TRACEPARENT;
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
    let message = announce(&order_id, &placed, 1, &now, request_id, traceparent);
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
        })
        .await
    {
        Ok(stored) => stored,
        // Only a concurrent request with the same idempotency key can
        // collide with a brand-new order id.
        Err(AppendError::Conflict) => {
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

/// The envelope announcing event number `seq` of an order.
fn announce(
    order_id: &str,
    event: &Event,
    seq: i64,
    now: &str,
    cause: Option<String>,
    traceparent: Option<String>,
) -> OutboxMessage {
    let mut data = event.data();
    if let Some(object) = data.as_object_mut() {
        object.insert("seq".into(), seq.into());
    }
    OutboxMessage {
        channel: ORDER_EVENTS_CHANNEL.to_string(),
        envelope: Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            kind: event.kind().to_string(),
            version: bazaar_order_model::events::EVENT_VERSION,
            order_id: order_id.to_string(),
            correlation_id: order_id.to_string(),
            causation_id: cause,
            traceparent: traceparent
                .and_then(|t| bazaar_trace::TraceContext::parse(&t))
                .map(|t| t.child().to_string()),
            occurred_at: now.to_string(),
            data,
        },
    }
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
        let event = order.cancel()?;
        let now = now_rfc3339();
        let message = announce(
            order_id,
            &event,
            order.version + 1,
            &now,
            header(req, bazaar_trace::REQUEST_ID),
            header(req, TRACEPARENT),
        );
        match store
            .append(Append {
                order_id,
                user_id: &order.user_id,
                expected: order.version,
                events: &[event],
                occurred_at: &now,
                outbox: &[message],
                idempotency: None,
            })
            .await
        {
            Ok(_) => {
                publish(&store, &now).await;
                let order = fold(order_id, &store.load(order_id).await?)?;
                return accepted(&order);
            }
            Err(AppendError::Conflict) => continue,
            Err(AppendError::Failed(problem)) => return Err(problem),
        }
    }
    Err(Problem::conflict(
        "the order kept changing; retry the cancellation",
    ))
}
