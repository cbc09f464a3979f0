//! The envelope every Bazaar message travels in (see `docs/messages.md`).
//!
//! Consumers deduplicate on `id`, follow one order's whole saga by
//! `correlation_id` (the order id), see which message caused which through
//! `causation_id`, and join traces through `traceparent`. `version` is the
//! version of `data`'s schema for this `type`, so a consumer can refuse (and
//! log) a message it does not understand instead of misreading it.

use serde::{Deserialize, Serialize};

/// Channel carrying every order event, announced for whoever subscribes.
pub const ORDER_EVENTS_CHANNEL: &str = "bazaar.orders.events";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique per message; a redelivered message keeps its id.
    pub id: String,
    /// What happened or is asked, e.g. `order.placed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub order_id: String,
    /// The order id: every message of one saga shares it.
    pub correlation_id: String,
    /// The id of the message (or request) that caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context of the hop that sent it.
    pub traceparent: Option<String>,
    /// RFC 3339 time the fact was recorded.
    pub occurred_at: String,
    pub data: serde_json::Value,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a Bazaar message envelope: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_documented_field_names() {
        let e = Envelope {
            id: "m-1".into(),
            kind: "order.placed".into(),
            version: 1,
            order_id: "o-1".into(),
            correlation_id: "o-1".into(),
            causation_id: Some("req-1".into()),
            traceparent: None,
            occurred_at: "2026-11-26T06:00:00Z".into(),
            data: serde_json::json!({ "total_cents": 100 }),
        };
        let bytes = e.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "order.placed");
        assert_eq!(Envelope::from_bytes(&bytes).unwrap(), e);
        assert!(Envelope::from_bytes(b"{}").is_err());
    }
}

/// The order saga's commands and replies (see `docs/saga.md`).
pub mod saga {
    use serde::{Deserialize, Serialize};

    /// Commands to the inventory step (products' store).
    pub const INVENTORY_COMMANDS: &str = "bazaar.inventory.commands";
    /// Commands to the payment step (payments' store).
    pub const PAYMENT_COMMANDS: &str = "bazaar.payments.commands";
    /// Every step's replies, to the orchestrator.
    pub const SAGA_REPLIES: &str = "bazaar.saga.replies";

    pub const RESERVE_STOCK: &str = "inventory.reserve";
    pub const RELEASE_STOCK: &str = "inventory.release";
    pub const CHARGE: &str = "payment.charge";
    pub const REFUND: &str = "payment.refund";

    pub const STOCK_RESERVED: &str = "inventory.reserved";
    pub const STOCK_REJECTED: &str = "inventory.rejected";
    pub const STOCK_RELEASED: &str = "inventory.released";
    pub const PAYMENT_CHARGED: &str = "payment.charged";
    pub const PAYMENT_DECLINED: &str = "payment.declined";
    /// A transient failure: the charge may be retried.
    pub const PAYMENT_FAILED: &str = "payment.failed";
    pub const PAYMENT_REFUNDED: &str = "payment.refunded";

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct StockLine {
        pub product_id: String,
        pub quantity: i64,
    }

    /// `inventory.reserve` data.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ReserveStock {
        pub items: Vec<StockLine>,
    }

    /// `payment.charge` data.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Charge {
        pub user_id: String,
        pub amount_cents: i64,
        pub currency: String,
        pub card_token: String,
    }

    /// `payment.charged` data.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Charged {
        pub payment_id: String,
    }
}

impl Envelope {
    /// A message answering or following from this one: same order and
    /// correlation, caused by this message, in the same trace.
    pub fn follow_up(
        &self,
        id: String,
        kind: &str,
        occurred_at: String,
        data: serde_json::Value,
    ) -> Envelope {
        Envelope {
            id,
            kind: kind.to_string(),
            version: 1,
            order_id: self.order_id.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.id.clone()),
            traceparent: self.traceparent.clone(),
            occurred_at,
            data,
        }
    }
}
