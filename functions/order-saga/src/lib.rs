//! The order saga's orchestrator, in the orders service's store. It reacts
//! to `order.placed` and `order.cancellation_requested` (on the order events
//! channel) and to the steps' replies (on `bazaar.saga.replies`): the
//! decision is `bazaar_order_model::saga::decide`, and its events, the
//! commands it sends, and the consumed message id are committed in one
//! transaction, then the outbox is published.
//!
//! A duplicate message is dropped by its id; a stale one decides nothing;
//! a lost one is covered by redrive, which re-sends the pending command.

use bazaar_envelope::{Envelope, saga as msg};
use bazaar_order_model::saga::{self, Input};
use bazaar_order_model::{Event, Order};
use bazaar_order_store::{Append, AppendError, OrderStore, OutboxMessage};
use bazaar_service::{now_rfc3339, setting};
use spin_sdk::redis_subscriber;

/// Appends that lost an optimistic-concurrency race are decided again.
const ATTEMPTS: usize = 5;

#[redis_subscriber]
async fn on_message(message: Vec<u8>) -> Result<(), String> {
    let envelope = Envelope::from_bytes(&message)?;
    let Some(input) = input(&envelope)? else {
        return Ok(());
    };
    let store = OrderStore::open().await.map_err(|p| p.detail)?;
    for _ in 0..ATTEMPTS {
        let events = store.load(&envelope.order_id).await.map_err(|p| p.detail)?;
        let order = Order::fold(&envelope.order_id, &events)?
            .ok_or_else(|| format!("order {} has no events", envelope.order_id))?;
        let decision = saga::decide(&order, &input);
        let now = now_rfc3339();
        let mut after = order.clone();
        let mut outbox: Vec<OutboxMessage> = Vec::new();
        for (seq, event) in (order.version + 1..).zip(&decision.events) {
            after.apply(event);
            outbox.push(OutboxMessage::announcement(
                &order.id,
                event,
                seq,
                &now,
                Some(envelope.id.clone()),
                envelope.traceparent.clone(),
            ));
        }
        for command in &decision.commands {
            outbox.push(OutboxMessage::command(
                &after,
                *command,
                &now,
                Some(envelope.id.clone()),
                envelope.traceparent.clone(),
            ));
        }
        let append = Append {
            order_id: &order.id,
            user_id: &order.user_id,
            expected: order.version,
            events: &decision.events,
            occurred_at: &now,
            outbox: &outbox,
            idempotency: None,
            consumes: Some(&envelope.id),
            settled: saga::settled(&after),
        };
        match store.append(append).await {
            Ok(_) => {
                log("decided", &envelope, &decision.events);
                let address = setting("redis_url").await.map_err(|p| p.detail)?;
                if let Err(problem) = store.relay_outbox(&address, &now).await {
                    // Committed; redrive will publish it.
                    log_problem(&envelope, &problem.detail);
                }
                return Ok(());
            }
            Err(AppendError::Duplicate) => {
                log("duplicate dropped", &envelope, &[]);
                return Ok(());
            }
            Err(AppendError::Conflict) => continue,
            Err(AppendError::Failed(problem)) => return Err(problem.detail),
        }
    }
    Err(format!(
        "order {} kept changing; redrive will retry",
        envelope.order_id
    ))
}

/// What a message means to the saga; `None` for messages it ignores (its
/// own announcements, other order events).
fn input(envelope: &Envelope) -> Result<Option<Input>, String> {
    Ok(Some(match envelope.kind.as_str() {
        "order.placed" => Input::Placed,
        "order.cancellation_requested" => Input::CancellationRequested,
        msg::STOCK_RESERVED => Input::StockReserved,
        msg::STOCK_REJECTED => Input::StockRejected,
        msg::STOCK_RELEASED => Input::StockReleased,
        msg::PAYMENT_CHARGED => {
            let charged: msg::Charged = serde_json::from_value(envelope.data.clone())
                .map_err(|e| format!("{}: {e}", envelope.kind))?;
            Input::PaymentCharged {
                payment_id: charged.payment_id,
            }
        }
        msg::PAYMENT_DECLINED => Input::PaymentDeclined,
        msg::PAYMENT_FAILED => Input::PaymentFailed,
        msg::PAYMENT_REFUNDED => Input::PaymentRefunded,
        _ => return Ok(None),
    }))
}

fn log(what: &str, envelope: &Envelope, events: &[Event]) {
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    let line = serde_json::json!({
        "level": "info",
        "msg": what,
        "message_id": envelope.id,
        "type": envelope.kind,
        "order_id": envelope.order_id,
        "appended": kinds,
        "traceparent": envelope.traceparent,
    });
    println!("{line}");
}

fn log_problem(envelope: &Envelope, detail: &str) {
    let line = serde_json::json!({ "level": "warn", "msg": "outbox not published yet", "message_id": envelope.id, "error": detail });
    println!("{line}");
}
