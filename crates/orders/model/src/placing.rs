//! Placing an order: the request, and its validation.

use bazaar_api::Problem;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i64 = 1000;

/// `POST /api/v1/orders` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub items: Vec<NewOrderItem>,
    pub payment: PaymentDetails,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    pub product_id: String,
    #[serde(deserialize_with = "bazaar_api::integer")]
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentDetails {
    pub card_token: String,
}

impl NewOrder {
    pub fn validate(&self) -> Result<(), Problem> {
        if self.items.is_empty() {
            return Err(Problem::unprocessable(
                "`items` must list at least one product",
            ));
        }
        if self.items.len() > MAX_ITEMS {
            return Err(Problem::unprocessable(format!(
                "`items` may list at most {MAX_ITEMS} products"
            )));
        }
        let mut seen = BTreeSet::new();
        for (i, item) in self.items.iter().enumerate() {
            if item.product_id.trim().is_empty() {
                return Err(Problem::unprocessable(format!(
                    "`items[{i}].product_id` is empty"
                )));
            }
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(Problem::unprocessable(format!(
                    "`items[{i}].quantity` must be from 1 to {MAX_QUANTITY}"
                )));
            }
            if !seen.insert(item.product_id.as_str()) {
                return Err(Problem::unprocessable(format!(
                    "`items[{i}].product_id` {} is listed twice; give one line per product",
                    item.product_id
                )));
            }
        }
        let token = self.payment.card_token.trim();
        if token.is_empty() || token.len() > 200 {
            return Err(Problem::unprocessable(
                "`payment.card_token` must be 1 to 200 characters",
            ));
        }
        Ok(())
    }

    /// A digest of the request in canonical form, to tell a retry (same
    /// key, same body) from a reuse of the key for another order. A
    /// digest, so that the card token is not stored with the key.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_string(self).expect("a parsed order always serialises");
        let digest = Sha256::digest(canonical.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Whether `stored`, the fingerprint kept with an idempotency key, is
    /// this request's: a digest, or (keys from before digests) the request
    /// as JSON with its card token removed, compared without it.
    pub fn has_fingerprint(&self, stored: &str) -> bool {
        if !stored.starts_with('{') {
            return stored == self.fingerprint();
        }
        let mut mine = serde_json::to_value(self).expect("a parsed order always serialises");
        if let Some(payment) = mine.get_mut("payment").and_then(|p| p.as_object_mut()) {
            payment.remove("card_token");
        }
        serde_json::from_str::<serde_json::Value>(stored).is_ok_and(|theirs| theirs == mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: &[(&str, i64)], token: &str) -> NewOrder {
        NewOrder {
            items: items
                .iter()
                .map(|(p, q)| NewOrderItem {
                    product_id: p.to_string(),
                    quantity: *q,
                })
                .collect(),
            payment: PaymentDetails {
                card_token: token.into(),
            },
        }
    }

    #[test]
    fn validation() {
        assert!(
            order(&[("p-1", 1), ("p-2", 3)], "tok_ok")
                .validate()
                .is_ok()
        );
        for bad in [
            order(&[], "tok_ok"),
            order(&[("p-1", 0)], "tok_ok"),
            order(&[("p-1", 1001)], "tok_ok"),
            order(&[("p-1", 1), ("p-1", 2)], "tok_ok"),
            order(&[(" ", 1)], "tok_ok"),
            order(&[("p-1", 1)], ""),
        ] {
            assert_eq!(bad.validate().unwrap_err().status, 422, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_bodies_apart() {
        let a = order(&[("p-1", 1)], "tok_ok");
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(
            a.fingerprint(),
            order(&[("p-1", 2)], "tok_ok").fingerprint()
        );
        assert!(a.has_fingerprint(&a.fingerprint()));
        assert!(!a.has_fingerprint(&order(&[("p-1", 2)], "tok_ok").fingerprint()));
        // Keys from before digests: the request without its card token.
        let legacy = r#"{"items":[{"product_id":"p-1","quantity":1}],"payment":{}}"#;
        assert!(a.has_fingerprint(legacy));
        assert!(!order(&[("p-1", 2)], "tok_ok").has_fingerprint(legacy));
        let other_card = order(&[("p-1", 1)], "tok_other");
        assert_ne!(a.fingerprint(), other_card.fingerprint());
        assert!(!a.fingerprint().contains("tok_ok"), "{}", a.fingerprint());
    }
}
