//! The order saga's reply handler, in the orders service's store: it
//! reacts to the steps' replies on `bazaar.saga.replies`. The decision
//! (`bazaar_order_model::saga::decide`) runs inside the transaction that
//! records it (`OrderStore::record`): its events, the commands it sends,
//! the read-model view and the consumed message id commit together, then
//! the handler publishes what it committed.
//!
//! A duplicate message is dropped by its id; a stale one decides nothing;
//! a lost one is covered by redrive, which re-sends what is outstanding
//! once the saga's deadline passes. The saga starts in the orders API, in
//! the transaction that records `order.placed`.

use bazaar_envelope::{Envelope, saga as msg};
use bazaar_order_model::Event;
use bazaar_order_model::saga::{self, Input};
use bazaar_order_store::{AppendError, Cause, OrderStore, reply_timeout};
use bazaar_service::{now_rfc3339, setting};
use spin_sdk::redis_subscriber;

/// Handles one reply, then, on every way out, sweeps the orders outbox: a
/// command committed earlier whose publish failed must not wait for the
/// next reply that succeeds, or for redrive's backoff. Only rows past their
/// writer's lease are swept.
#[redis_subscriber]
async fn on_message(message: Vec<u8>) -> Result<(), String> {
    let handled = handle(&message).await;
    let swept = sweep().await;
    handled.and(swept)
}

async fn sweep() -> Result<(), String> {
    let store = OrderStore::open().await.map_err(|p| p.detail)?;
    let address = setting("redis_url").await.map_err(|p| p.detail)?;
    store
        .relay_due(&address, &now_rfc3339())
        .await
        .map(drop)
        .map_err(|p| p.detail)
}

async fn handle(message: &[u8]) -> Result<(), String> {
    let envelope = Envelope::from_bytes(message)?;
    let Some(input) = input(&envelope)? else {
        return Ok(());
    };
    let store = OrderStore::open().await.map_err(|p| p.detail)?;
    let now = now_rfc3339();
    let cause = Cause {
        now: &now,
        consumes: Some(&envelope.id),
        causation_id: Some(envelope.id.clone()),
        traceparent: envelope.traceparent.clone(),
        idempotency: None,
        card_token: None,
        reply_timeout: reply_timeout().await.map_err(|p| p.detail)?,
    };
    let recorded = store
        .record(&envelope.order_id, cause, |order| {
            let order = order.ok_or_else(|| {
                bazaar_api::Problem::not_found(format!("no order {}", envelope.order_id))
            })?;
            Ok(saga::decide(order, &input))
        })
        .await;
    match recorded {
        Ok(recorded) => {
            log("decided", &envelope, &recorded.appended);
            let address = setting("redis_url").await.map_err(|p| p.detail)?;
            if let Err(problem) = store.publish(&address, &recorded.outbox, &now).await {
                // Committed and claimed: the next sweep publishes it.
                log_problem(&envelope, &problem.detail);
            }
            Ok(())
        }
        Err(AppendError::Duplicate) => {
            log("duplicate dropped", &envelope, &[]);
            Ok(())
        }
        Err(AppendError::KeyTaken) => Err("an idempotency key on a reply".into()),
        Err(AppendError::Failed(problem)) => Err(problem.detail),
    }
}

/// What a reply means to the saga; `None` for messages it ignores.
fn input(envelope: &Envelope) -> Result<Option<Input>, String> {
    Ok(Some(match envelope.kind.as_str() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: &str, data: serde_json::Value) -> Envelope {
        Envelope::from_bytes(
            serde_json::json!({
                "id": "m1", "type": kind, "version": 1, "order_id": "o1",
                "correlation_id": "o1", "causation_id": null, "traceparent": null,
                "occurred_at": "2026-11-27T10:00:00.000000Z", "data": data,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn every_step_reply_is_an_input_and_nothing_else_is() {
        let none = serde_json::json!({});
        for (kind, expected) in [
            (msg::STOCK_RESERVED, Input::StockReserved),
            (msg::STOCK_REJECTED, Input::StockRejected),
            (msg::STOCK_RELEASED, Input::StockReleased),
            (msg::PAYMENT_DECLINED, Input::PaymentDeclined),
            (msg::PAYMENT_FAILED, Input::PaymentFailed),
            (msg::PAYMENT_REFUNDED, Input::PaymentRefunded),
        ] {
            assert_eq!(
                input(&reply(kind, none.clone())),
                Ok(Some(expected)),
                "{kind}"
            );
        }
        assert_eq!(
            input(&reply(
                msg::PAYMENT_CHARGED,
                serde_json::json!({ "payment_id": "p1" })
            )),
            Ok(Some(Input::PaymentCharged {
                payment_id: "p1".into()
            }))
        );
        // Commands and public events on other channels are not replies.
        for kind in [msg::RESERVE_STOCK, "order.confirmed", "something.else"] {
            assert_eq!(input(&reply(kind, none.clone())), Ok(None), "{kind}");
        }
    }

    #[test]
    fn a_charge_without_its_payment_is_refused_and_named() {
        let error = input(&reply(msg::PAYMENT_CHARGED, serde_json::json!({}))).unwrap_err();
        assert!(error.starts_with(msg::PAYMENT_CHARGED), "{error}");
    }
}
