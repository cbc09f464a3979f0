//! The orders write model: an order is the fold of its event stream.
//!
//! Events are facts in the past tense, appended with consecutive sequence
//! numbers and never changed. [`Order::fold`] rebuilds the current state
//! from them; the decision functions ([`NewOrder::validate`],
//! [`Order::cancel`]) check a command against that state and say which
//! event to append. No I/O here: this crate is the rules, tested natively.

use bazaar_api::{Conflict, Problem};
use serde::{Deserialize, Serialize};

pub mod events;
pub mod placing;
pub mod saga;

pub use events::{
    Event, LineItem, OrderCancelled, OrderPlaced, PaymentCharged, PaymentFailed, StoredEvent,
};
pub use placing::{NewOrder, NewOrderItem, PaymentDetails};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Confirmed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    CancelledByUser,
}

/// An order's current state, as the API shows it (plus whose it is and how
/// many events it reflects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cancel_reason: Option<CancelReason>,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: String,
    /// The sequence number of the last event folded in.
    pub version: i64,
    /// How far the saga got: the service's bookkeeping, not shown.
    #[serde(default)]
    pub saga: SagaState,
}

/// What the saga has done so far for one order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub stock: Stock,
    pub payment: Payment,
    /// Transient payment failures so far.
    pub payment_failures: u32,
    pub cancellation_requested: bool,
    /// Whether `payment.charge` was ever sent: from then on a cancellation
    /// must also undo a charge that may still succeed.
    #[serde(default)]
    pub charge_requested: bool,
    /// When the last event was recorded (RFC 3339).
    pub last_event_at: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stock {
    #[default]
    NotReserved,
    Reserved,
    Released,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payment {
    #[default]
    NotCharged,
    Charged,
    Declined,
    Refunded,
}

impl Order {
    /// Rebuilds an order from its events, in sequence order; `None` for an
    /// empty stream. A stream that does not start with `order.placed`, or
    /// skips a number, is corrupt and says so.
    pub fn fold(order_id: &str, events: &[StoredEvent]) -> Result<Option<Order>, String> {
        let mut order: Option<Order> = None;
        for (expected, stored) in (1..).zip(events) {
            if stored.seq != expected {
                return Err(format!(
                    "order {order_id}: event {} where {expected} was expected",
                    stored.seq
                ));
            }
            let event = stored.event()?;
            let mut next = match (order, event) {
                (None, Event::Placed(placed)) => Order {
                    id: order_id.to_string(),
                    user_id: placed.user_id,
                    status: Status::Pending,
                    cancel_reason: None,
                    items: placed.items,
                    total_cents: placed.total_cents,
                    currency: placed.currency,
                    created_at: stored.occurred_at.clone(),
                    version: 0,
                    saga: SagaState::default(),
                },
                (None, other) => {
                    return Err(format!("order {order_id} starts with {}", other.kind()));
                }
                (Some(_), Event::Placed(_)) => {
                    return Err(format!("order {order_id} was placed twice"));
                }
                (Some(mut o), event) => {
                    o.apply(&event);
                    o
                }
            };
            next.version = stored.seq;
            next.saga.last_event_at = stored.occurred_at.clone();
            order = Some(next);
        }
        Ok(order)
    }

    /// Applies one event after `order.placed`.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Placed(_) => {}
            Event::StockReserved => {
                // The saga charges on a reservation unless it is unwinding
                // (see `saga::decide`).
                self.saga.charge_requested |= self.status == Status::Pending
                    && !self.saga.cancellation_requested
                    && self.saga.payment == Payment::NotCharged;
                self.saga.stock = Stock::Reserved;
            }
            Event::PaymentCharged(_) => self.saga.payment = Payment::Charged,
            Event::Confirmed => self.status = Status::Confirmed,
            Event::PaymentFailed(failed) => self.saga.payment_failures = failed.attempt,
            Event::PaymentDeclined => self.saga.payment = Payment::Declined,
            Event::PaymentRefunded => self.saga.payment = Payment::Refunded,
            Event::StockReleased => self.saga.stock = Stock::Released,
            Event::CancellationRequested => self.saga.cancellation_requested = true,
            Event::Cancelled(c) => {
                self.status = Status::Cancelled;
                self.cancel_reason = Some(c.reason);
            }
        }
    }

    /// The order as the API shows it: without its owner, version and saga
    /// state, which are the service's bookkeeping.
    pub fn to_api(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("an order always serialises");
        if let Some(object) = value.as_object_mut() {
            object.remove("user_id");
            object.remove("version");
            object.remove("saga");
        }
        value
    }

    /// Who may see this order: its owner, and administrators.
    pub fn visible_to(&self, user_id: &str, is_admin: bool) -> bool {
        is_admin || self.user_id == user_id
    }

    /// A customer's cancellation: a request the saga carries out (refund
    /// if charged, release if reserved). `None` when it was already asked.
    pub fn cancel(&self) -> Result<Option<Event>, Problem> {
        match self.status {
            Status::Cancelled => Err(Problem::conflict(
                Conflict::OrderCancelled,
                format!("order {} is already cancelled", self.id),
            )),
            _ if self.saga.cancellation_requested => Ok(None),
            Status::Pending | Status::Confirmed => Ok(Some(Event::CancellationRequested)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> StoredEvent {
        StoredEvent::new(
            1,
            &Event::Placed(OrderPlaced {
                user_id: "u-1".into(),
                items: vec![LineItem {
                    product_id: "p-1".into(),
                    quantity: 2,
                    unit_price_cents: 250,
                }],
                total_cents: 500,
                currency: "EUR".into(),
            }),
            "2026-11-26T06:00:00Z",
        )
    }

    #[test]
    fn folding_rebuilds_the_order() {
        let order = Order::fold("o-1", &[placed()]).unwrap().unwrap();
        assert_eq!(
            (order.status, order.total_cents, order.version),
            (Status::Pending, 500, 1)
        );
        let request = order.cancel().unwrap().unwrap();
        let cancelled = Event::Cancelled(OrderCancelled {
            reason: CancelReason::CancelledByUser,
        });
        let events = [
            placed(),
            StoredEvent::new(2, &request, "2026-11-26T06:01:00Z"),
            StoredEvent::new(3, &cancelled, "2026-11-26T06:02:00Z"),
        ];
        let asked = Order::fold("o-1", &events[..2]).unwrap().unwrap();
        assert_eq!(
            (asked.status, asked.cancel().unwrap()),
            (Status::Pending, None)
        );
        let order = Order::fold("o-1", &events).unwrap().unwrap();
        assert_eq!(order.status, Status::Cancelled);
        assert_eq!(order.cancel_reason, Some(CancelReason::CancelledByUser));
        assert_eq!(order.saga.last_event_at, "2026-11-26T06:02:00Z");
        assert_eq!(order.cancel().unwrap_err().status, 409);
    }

    #[test]
    fn corrupt_streams_are_reported() {
        assert_eq!(Order::fold("o-1", &[]).unwrap(), None);
        let mut skipped = placed();
        skipped.seq = 2;
        assert!(Order::fold("o-1", &[skipped]).is_err());
        let twice = [placed(), StoredEvent { seq: 2, ..placed() }];
        assert!(Order::fold("o-1", &twice).is_err());
    }

    #[test]
    fn visibility() {
        let order = Order::fold("o-1", &[placed()]).unwrap().unwrap();
        assert!(order.visible_to("u-1", false));
        assert!(!order.visible_to("u-2", false));
        assert!(order.visible_to("u-2", true));
    }

    #[test]
    fn the_api_shape_omits_an_absent_reason() {
        let order = Order::fold("o-1", &[placed()]).unwrap().unwrap();
        let json = order.to_api();
        assert_eq!(json["status"], "pending");
        assert!(json.get("cancel_reason").is_none() && json.get("user_id").is_none());
        assert!(json.get("saga").is_none() && json.get("version").is_none());
    }
}
