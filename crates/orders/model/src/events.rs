//! Order events: their names, versions and data.

use serde::{Deserialize, Serialize};

use crate::CancelReason;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineItem {
    pub product_id: String,
    pub quantity: i64,
    /// The product's price when the order was placed.
    pub unit_price_cents: i64,
}

/// `order.placed` v1: prices are snapshotted. The card token is not part of
/// it: it is kept with the saga until the charge is sent (see the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    pub user_id: String,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
}

/// `order.cancelled` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub reason: CancelReason,
}

/// `order.payment_charged` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentCharged {
    pub payment_id: String,
}

/// `order.payment_failed` v1: a transient failure, the `attempt`-th.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentFailed {
    pub attempt: u32,
}

/// The data of the events that carry none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Placed(OrderPlaced),
    StockReserved,
    PaymentCharged(PaymentCharged),
    Confirmed,
    PaymentFailed(PaymentFailed),
    PaymentDeclined,
    PaymentRefunded,
    StockReleased,
    CancellationRequested,
    Cancelled(OrderCancelled),
}

/// The schema version of every event type's `data`.
pub const EVENT_VERSION: u32 = 1;

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Placed(_) => "order.placed",
            Event::StockReserved => "order.stock_reserved",
            Event::PaymentCharged(_) => "order.payment_charged",
            Event::Confirmed => "order.confirmed",
            Event::PaymentFailed(_) => "order.payment_failed",
            Event::PaymentDeclined => "order.payment_declined",
            Event::PaymentRefunded => "order.payment_refunded",
            Event::StockReleased => "order.stock_released",
            Event::CancellationRequested => "order.cancellation_requested",
            Event::Cancelled(_) => "order.cancelled",
        }
    }

    pub fn data(&self) -> serde_json::Value {
        match self {
            Event::Placed(e) => serde_json::to_value(e),
            Event::PaymentCharged(e) => serde_json::to_value(e),
            Event::PaymentFailed(e) => serde_json::to_value(e),
            Event::Cancelled(e) => serde_json::to_value(e),
            Event::StockReserved
            | Event::Confirmed
            | Event::PaymentDeclined
            | Event::PaymentRefunded
            | Event::StockReleased
            | Event::CancellationRequested => serde_json::to_value(Nothing {}),
        }
        .expect("events always serialise")
    }

    pub fn parse(kind: &str, version: u32, data: &serde_json::Value) -> Result<Event, String> {
        if version != EVENT_VERSION {
            return Err(format!(
                "{kind} version {version} is not understood (expected {EVENT_VERSION})"
            ));
        }
        let bad = |e: serde_json::Error| format!("{kind}: {e}");
        let data = data.clone();
        let nothing = |event: Event| {
            serde_json::from_value::<Nothing>(data.clone())
                .map(|_| event)
                .map_err(bad)
        };
        match kind {
            "order.placed" => serde_json::from_value(data).map(Event::Placed).map_err(bad),
            "order.stock_reserved" => nothing(Event::StockReserved),
            "order.payment_charged" => serde_json::from_value(data)
                .map(Event::PaymentCharged)
                .map_err(bad),
            "order.confirmed" => nothing(Event::Confirmed),
            "order.payment_failed" => serde_json::from_value(data)
                .map(Event::PaymentFailed)
                .map_err(bad),
            "order.payment_declined" => nothing(Event::PaymentDeclined),
            "order.payment_refunded" => nothing(Event::PaymentRefunded),
            "order.stock_released" => nothing(Event::StockReleased),
            "order.cancellation_requested" => nothing(Event::CancellationRequested),
            "order.cancelled" => serde_json::from_value(data)
                .map(Event::Cancelled)
                .map_err(bad),
            other => Err(format!("unknown order event {other}")),
        }
    }
}

/// An event as stored in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub version: u32,
    pub data: serde_json::Value,
    pub occurred_at: String,
}

impl StoredEvent {
    pub fn new(seq: i64, event: &Event, occurred_at: &str) -> StoredEvent {
        StoredEvent {
            seq,
            kind: event.kind().to_string(),
            version: EVENT_VERSION,
            data: event.data(),
            occurred_at: occurred_at.to_string(),
        }
    }

    pub fn event(&self) -> Result<Event, String> {
        Event::parse(&self.kind, self.version, &self.data)
    }

    /// The API's view of one event: `{seq, type, data, at}`.
    pub fn to_api(&self) -> serde_json::Value {
        serde_json::json!({ "seq": self.seq, "type": self.kind, "data": self.data, "at": self.occurred_at })
    }
}
