//! The orders service's HTTP routes (reached from the gateway only).

use bazaar_api::{
    ApiResult, Conflict, Method, Page, PageRequest, Problem, StatusCode, json, query_param,
};
use bazaar_auth::Identity;
use bazaar_order_model::{Event, NewOrder, Order, OrderPlaced, StoredEvent, saga};
use bazaar_order_store::{
    AppendError, Cause, IdempotencyKey, OrderStore, OutboxMessage, Redriven, reply_timeout,
};
use bazaar_service::{admin, caller, header, json_body, now_rfc3339, seconds_ago_rfc3339, setting};
use bazaar_trace::{TRACEPARENT, TraceContext};
use spin_sdk::http::Request;

use crate::catalogue;

/// This service's name: the audience of the identity tokens it accepts.
const SERVICE: &str = "orders";

pub async fn route(req: Request) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let local = bazaar_api::local_path(SERVICE, &path)?;
    match (method, bazaar_api::segments(local).as_slice()) {
        (Method::GET, ["health"]) => health().await,
        (Method::POST, ["api", "v1", "orders"]) => place(req).await,
        (Method::GET, ["api", "v1", "orders"]) => list(&req).await,
        (Method::GET, ["api", "v1", "orders", id]) => get(&req, id).await,
        (Method::GET, ["api", "v1", "orders", id, "events"]) => events(&req, id).await,
        (Method::POST, ["api", "v1", "orders", id, "cancel"]) => cancel(&req, id).await,
        (Method::POST, ["internal", "saga", "redrive"]) => admin_redrive(&req).await,
        (Method::GET, ["internal", "metrics"]) => {
            admin(&req, SERVICE, "read the metrics").await?;
            let gauges = OrderStore::open().await?.gauges(&now_rfc3339()).await?;
            Ok(json(StatusCode::OK, &gauges))
        }
        (Method::POST, ["api", "v1", "admin", "saga", "redrive"]) => admin_redrive(&req).await,
        (Method::GET, ["api", "v1", "admin", "sagas"]) => list_sagas(&req).await,
        (Method::POST, ["api", "v1", "admin", "sagas", "expedite"]) => expedite(&req).await,
        (Method::POST, ["api", "v1", "admin", "sagas", id, "restart"]) => {
            restart_saga(&req, id).await
        }
        (Method::POST, ["api", "v1", "admin", "orders", "views", "rebuild"]) => {
            rebuild_views(&req).await
        }
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
    let identity = caller(&req, SERVICE).await?;
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
        && let Some(order) = replay(&store, &identity, key, &new).await?
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
    });
    let cause = Cause {
        now: &now,
        consumes: None,
        causation_id: request_id,
        traceparent: continued(traceparent),
        idempotency: idempotency_key.as_deref().map(|key| IdempotencyKey {
            key,
            fingerprint: &fingerprint,
        }),
        card_token: Some(new.payment.card_token.trim()),
        reply_timeout: reply_timeout().await?,
    };
    let recorded = store
        .record(&order_id, cause, |existing| {
            if existing.is_some() {
                return Err(Problem::conflict(
                    Conflict::ConcurrentChange,
                    "the order could not be recorded; retry",
                ));
            }
            let new_order = fold(&order_id, &[StoredEvent::new(1, &placed, &now)])?;
            Ok(saga::Decision {
                events: vec![placed.clone()],
                ..saga::start(&new_order)
            })
        })
        .await;
    match recorded {
        Ok(recorded) => {
            publish(&store, &recorded.outbox, &now).await;
            accepted(&recorded.order)
        }
        // A concurrent request with the same idempotency key won the race.
        Err(AppendError::KeyTaken | AppendError::Duplicate) => {
            let key = idempotency_key.unwrap_or_default();
            match replay(&store, &identity, &key, &new).await? {
                Some(order) => accepted(&order),
                None => Err(Problem::conflict(
                    Conflict::ConcurrentChange,
                    "the order could not be recorded; retry",
                )),
            }
        }
        Err(AppendError::Failed(problem)) => Err(problem),
    }
}

/// The order an earlier request with this key created, if the body is the
/// same; a 409 if the key was used for a different order.
async fn replay(
    store: &OrderStore,
    identity: &Identity,
    key: &str,
    new: &NewOrder,
) -> Result<Option<Order>, Problem> {
    let Some((first_fingerprint, order_id)) = store.idempotent_order(&identity.sub, key).await?
    else {
        return Ok(None);
    };
    if !new.has_fingerprint(&first_fingerprint) {
        return Err(Problem::conflict(
            Conflict::IdempotencyKeyReused,
            "this Idempotency-Key was already used for a different order",
        ));
    }
    let events = store.load(&order_id).await?;
    fold(&order_id, &events).map(Some)
}

/// Publishes what this request committed; what fails stays claimed in the
/// outbox until a sweep (redrive) publishes it.
async fn publish(store: &OrderStore, outbox: &[OutboxMessage], now: &str) {
    let outcome = match setting("redis_url").await {
        Ok(address) => store.publish(&address, outbox, now).await,
        Err(problem) => Err(problem),
    };
    if let Err(problem) = outcome {
        eprintln!(
            "{}",
            serde_json::json!({ "level": "warn", "msg": "outbox not published yet", "error": problem.detail })
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
    let identity = caller(req, SERVICE).await?;
    let (order, _) = visible(&OrderStore::open().await?, &identity, order_id).await?;
    Ok(json(StatusCode::OK, &order.to_api()))
}

/// An order's events in order, a page at a time; the cursor is the last
/// event's `seq`.
async fn events(req: &Request, order_id: &str) -> ApiResult {
    let ask = PageRequest::from_query(req.uri().query(), bazaar_api::is_position)?;
    let identity = caller(req, SERVICE).await?;
    let (_, events) = visible(&OrderStore::open().await?, &identity, order_id).await?;
    let after: i64 = ask
        .cursor
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let events: Vec<StoredEvent> = events
        .into_iter()
        .filter(|e| e.seq > after)
        .take(ask.fetch() as usize)
        .collect();
    let page = ask.page(events, |e| e.seq.to_string());
    let items: Vec<serde_json::Value> = page.items.iter().map(StoredEvent::to_api).collect();
    Ok(json(
        StatusCode::OK,
        &Page {
            items,
            next_cursor: page.next_cursor,
        },
    ))
}

/// The caller's orders, newest first, a page at a time; the cursor is the
/// last order's id.
async fn list(req: &Request) -> ApiResult {
    let ask = PageRequest::from_query(req.uri().query(), bazaar_api::is_id)?;
    let identity = caller(req, SERVICE).await?;
    let views = OrderStore::open()
        .await?
        .views_for_user(&identity.sub, ask.cursor.as_deref(), ask.fetch())
        .await?;
    let page = ask.page(views, |(id, _)| id.clone());
    let page = Page {
        items: page.items.into_iter().map(|(_, view)| view).collect(),
        next_cursor: page.next_cursor,
    };
    Ok(bazaar_api::json_text(StatusCode::OK, page.to_json_text()))
}

async fn cancel(req: &Request, order_id: &str) -> ApiResult {
    let identity = caller(req, SERVICE).await?;
    let store = OrderStore::open().await?;
    let now = now_rfc3339();
    let cause = Cause {
        now: &now,
        consumes: None,
        causation_id: header(req, bazaar_trace::REQUEST_ID),
        traceparent: continued(header(req, TRACEPARENT)),
        idempotency: None,
        card_token: None,
        reply_timeout: reply_timeout().await?,
    };
    let recorded = store
        .record(order_id, cause, |order| {
            let order = order
                .filter(|o| o.visible_to(&identity.sub, identity.is_admin()))
                .ok_or_else(|| Problem::not_found(format!("no order {order_id}")))?;
            if order.user_id != identity.sub {
                return Err(Problem::forbidden(
                    "only the customer who placed an order may cancel it",
                ));
            }
            Ok(match order.cancel()? {
                Some(_) => saga::decide(order, &saga::Input::CancellationRequested),
                None => saga::Decision {
                    events: Vec::new(),
                    commands: Vec::new(),
                    wake: saga::Wake::Keep,
                },
            })
        })
        .await;
    match recorded {
        Ok(recorded) => {
            publish(&store, &recorded.outbox, &now).await;
            accepted(&recorded.order)
        }
        Err(AppendError::Failed(problem)) => Err(problem),
        Err(AppendError::Duplicate | AppendError::KeyTaken) => {
            Err(Problem::internal("a cancellation consumes no message"))
        }
    }
}

/// The caller's trace context, if it sent a valid one, for the messages
/// this request causes. It is passed on unchanged: the span it names (the
/// host's client span for the call, when the host traces) is one a tracing
/// backend receives, so the saga's spans hang under it in the same trace;
/// a span id made up here would be a parent no backend ever sees.
fn continued(traceparent: Option<String>) -> Option<String> {
    traceparent
        .and_then(|t| TraceContext::parse(&t))
        .map(|t| t.to_string())
}

/// A positive whole number from the query, or `default`.
fn count_param(req: &Request, name: &str, default: u32, max: u32) -> Result<u32, Problem> {
    match query_param(req.uri().query(), name) {
        None => Ok(default),
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!("`{name}` must be a whole number from 1 to {max}"))
            }),
    }
}

/// Redrives every saga past its deadline (re-sends what it waits for, or
/// parks it after `saga_max_attempts`), rebuilds views that lag their
/// stream, publishes what writers left in the outbox, and prunes what is
/// past retention. Each part is one bounded batch (`batch`, default 200),
/// found through an index, so a run with nothing due costs a few reads.
/// Safe to run often and from several places at once: a saga is acted on
/// only if it is still as the run found it.
async fn redrive(req: &Request) -> ApiResult {
    let batch = count_param(req, "batch", 200, 5000)?;
    let retention: f64 = match query_param(req.uri().query(), "retention_seconds") {
        None => bazaar_database::MESSAGE_RETENTION_SECONDS,
        Some(value) => value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                Problem::bad_request("`retention_seconds` must be a number of seconds")
            })?,
    };
    let max_attempts: i64 = setting("saga_max_attempts")
        .await?
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Problem::internal("the service is misconfigured: saga_max_attempts"))?;
    let timeout = reply_timeout().await?;
    let address = setting("redis_url").await?;
    let store = OrderStore::open().await?;
    let now = now_rfc3339();
    let (mut redriven, mut parked) = (0, 0);
    for due in store.due_sagas(&now, batch).await? {
        // One saga's failure is logged, and the run goes on to the others.
        let outcome = match store.redrive(&due, &now, timeout, max_attempts).await {
            Ok(outcome) => outcome,
            Err(problem) => {
                eprintln!(
                    "{}",
                    serde_json::json!({ "level": "error", "msg": "saga redrive failed", "order_id": due.order_id, "error": problem.detail })
                );
                continue;
            }
        };
        match outcome {
            Redriven::Resent(outbox) => {
                redriven += 1;
                publish(&store, &outbox, &now).await;
            }
            Redriven::Parked => {
                parked += 1;
                println!(
                    "{}",
                    serde_json::json!({ "level": "warn", "msg": "saga parked", "order_id": due.order_id, "attempts": due.attempts })
                );
            }
            Redriven::Skipped => {}
        }
    }
    let views_rebuilt = store.rebuild_stale_views(batch).await?;
    store.forget_sent_card_tokens(&now).await?;
    let published = match store.relay_due(&address, &now).await {
        Ok(n) => n,
        Err(problem) => {
            eprintln!(
                "{}",
                serde_json::json!({ "level": "warn", "msg": "outbox sweep failed", "error": problem.detail })
            );
            0
        }
    };
    let pruned = store.prune(&seconds_ago_rfc3339(retention)).await?;
    let outcome = serde_json::json!({
        "redriven": redriven,
        "parked": parked,
        "views_rebuilt": views_rebuilt,
        "published": published,
        "pruned": pruned,
    });
    println!(
        "{}",
        serde_json::json!({ "level": "info", "msg": "saga redrive", "outcome": outcome })
    );
    Ok(json(StatusCode::OK, &outcome))
}

async fn admin_redrive(req: &Request) -> ApiResult {
    admin(req, SERVICE, "redrive sagas").await?;
    redrive(req).await
}

/// Sagas as administrators follow them: `state=parked` (out of redrive
/// attempts, with why) or `state=open` (in flight, with their attempts and
/// when each is next due).
async fn list_sagas(req: &Request) -> ApiResult {
    admin(req, SERVICE, "see sagas").await?;
    let state = query_param(req.uri().query(), "state");
    let ask = PageRequest::from_query(req.uri().query(), bazaar_api::is_id)?;
    let store = OrderStore::open().await?;
    let cursor = ask.cursor.as_deref();
    match state.as_deref() {
        Some("parked") => {
            let parked = store.parked(cursor, ask.fetch()).await?;
            Ok(json(
                StatusCode::OK,
                &ask.page(parked, |s| s.order_id.clone()),
            ))
        }
        Some("open") => {
            let open = store.open_sagas(cursor, ask.fetch()).await?;
            Ok(json(
                StatusCode::OK,
                &ask.page(open, |s| s.order_id.clone()),
            ))
        }
        _ => Err(Problem::bad_request("give `state=open` or `state=parked`")),
    }
}

/// After an incident: every open saga backed off into the future is due
/// now, for the next redrive runs to re-send (each re-send still counts
/// as an attempt). Parked sagas stay parked: restart those one by one.
async fn expedite(req: &Request) -> ApiResult {
    admin(req, SERVICE, "expedite sagas").await?;
    let expedited = OrderStore::open().await?.expedite(&now_rfc3339()).await?;
    println!(
        "{}",
        serde_json::json!({ "level": "info", "msg": "sagas expedited", "expedited": expedited })
    );
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "expedited": expedited }),
    ))
}

/// Restarts a parked saga: attempts start again and it is due now.
async fn restart_saga(req: &Request, order_id: &str) -> ApiResult {
    admin(req, SERVICE, "restart sagas").await?;
    let store = OrderStore::open().await?;
    if !store.restart(order_id, &now_rfc3339()).await? {
        return Err(Problem::conflict(
            Conflict::SagaNotParked,
            format!("the saga of order {order_id} is not parked"),
        ));
    }
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "order_id": order_id, "restarted": true }),
    ))
}

/// Rebuilds every order's view from the event store, in batches on the
/// following redrive runs (after a change to the view's shape).
async fn rebuild_views(req: &Request) -> ApiResult {
    admin(req, SERVICE, "rebuild the read model").await?;
    let marked = OrderStore::open().await?.mark_views_stale().await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "views_to_rebuild": marked }),
    ))
}
