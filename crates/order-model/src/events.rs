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

/// `order.placed` v1: prices are snapshotted; the card token travels on to
/// the payment step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    pub user_id: String,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub currency: String,
    pub card_token: String,
}

/// `order.cancelled` v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub reason: CancelReason,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Placed(OrderPlaced),
    Cancelled(OrderCancelled),
}

/// The schema version of every event type's `data`.
pub const EVENT_VERSION: u32 = 1;

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Placed(_) => "order.placed",
            Event::Cancelled(_) => "order.cancelled",
        }
    }

    pub fn data(&self) -> serde_json::Value {
        match self {
            Event::Placed(e) => serde_json::to_value(e),
            Event::Cancelled(e) => serde_json::to_value(e),
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
        match kind {
            "order.placed" => serde_json::from_value(data.clone())
                .map(Event::Placed)
                .map_err(bad),
            "order.cancelled" => serde_json::from_value(data.clone())
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
        let mut data = self.data.clone();
        // The card token is the payment step's business, not the client's.
        if let Some(object) = data.as_object_mut() {
            object.remove("card_token");
        }
        serde_json::json!({ "seq": self.seq, "type": self.kind, "data": data, "at": self.occurred_at })
    }
}
