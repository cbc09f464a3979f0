//! The envelope every Bazaar message travels in (see `docs/messages.md`).
//!
//! Consumers deduplicate on `id`, follow one order's whole saga by
//! `correlation_id` (the order id), see which message caused which through
//! `causation_id`, and join traces through `traceparent`. `version` is the
//! version of `data`'s schema for this `type`, so a consumer can refuse (and
//! log) a message it does not understand instead of misreading it.

use serde::{Deserialize, Serialize};

/// Channel carrying every order event, for projections and the saga.
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
