//! The payments service's own SQLite database (label `payments`): at most
//! one payment per order (`charged`, `declined`, `refunded`). Shared by the
//! payments component and the saga's payment step (`functions/payments`),
//! and by nothing else.
//!
//! Because the payment is keyed by order, a charge delivered twice (or
//! re-sent by redrive) is answered with the recorded outcome and never
//! charges twice.

use bazaar_api::Problem;
use bazaar_database::{Database, MESSAGING_TABLES, MESSAGING_TABLES_V2, Migration};
use bazaar_envelope::saga::{self, Charge};
use bazaar_payment_domain::{Answer, ChargeRequest};
use serde::Serialize;
use spin_sdk::sqlite::Value;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &["CREATE TABLE payments (
        id           TEXT PRIMARY KEY,
        order_id     TEXT NOT NULL UNIQUE,
        user_id      TEXT NOT NULL,
        amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
        currency     TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('charged', 'refunded', 'declined')),
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    )"],
    },
    Migration {
        version: 2,
        statements: MESSAGING_TABLES,
    },
    Migration {
        version: 3,
        statements: MESSAGING_TABLES_V2,
    },
    Migration {
        version: 4,
        statements: &[
            // The processor's charge for a payment (see bazaar-payment-domain).
            "ALTER TABLE payments ADD COLUMN processor_charge_id TEXT",
            // Orders whose charge was cancelled before it was made: a
            // charge that arrives later is refused.
            "CREATE TABLE payment_voids (order_id TEXT PRIMARY KEY, voided_at TEXT NOT NULL)",
        ],
    },
];

/// A payment as the API shows it, and whose it is.
#[derive(Debug, Clone, Serialize)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    #[serde(skip)]
    pub user_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
}

pub struct Store(Database);

impl Store {
    pub async fn open() -> Result<Store, Problem> {
        Database::open("payments", "payments", MIGRATIONS)
            .await
            .map(Store)
    }

    pub async fn for_order(&self, order_id: &str) -> Result<Vec<Payment>, Problem> {
        let rows = self
            .0
            .rows(
                "SELECT id, order_id, user_id, amount_cents, currency, status FROM payments WHERE order_id = ? ORDER BY id",
                vec![Value::Text(order_id.to_string())],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let text = |i: usize| row.get::<&str>(i).unwrap_or_default().to_string();
                Payment {
                    id: text(0),
                    order_id: text(1),
                    user_id: text(2),
                    amount_cents: row.get::<i64>(3).unwrap_or_default(),
                    currency: text(4),
                    status: text(5),
                }
            })
            .collect())
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.0.ping().await
    }

    /// The database, for the messaging primitives.
    pub fn db(&self) -> &Database {
        &self.0
    }

    /// Charges an order once; answers with the reply type and data. Inside
    /// the caller's transaction. Every attempt asks the processor with the
    /// order id as idempotency key; a charge voided by an earlier refund
    /// is refused.
    pub async fn charge(
        &self,
        order_id: &str,
        charge: &Charge,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), Problem> {
        if let Some(payment) = self.for_order(order_id).await?.into_iter().next() {
            return Ok(recorded(&payment));
        }
        if self.voided(order_id).await? {
            return Ok((saga::PAYMENT_REFUNDED, serde_json::json!({})));
        }
        let answer = bazaar_payment_domain::charge(&ChargeRequest {
            idempotency_key: order_id,
            amount_cents: charge.amount_cents,
            currency: &charge.currency,
            card_token: &charge.card_token,
        });
        let (status, charge_id) = match answer {
            Answer::Unavailable => return Ok((saga::PAYMENT_FAILED, serde_json::json!({}))),
            Answer::Approved { charge_id } => ("charged", Value::Text(charge_id)),
            Answer::Declined => ("declined", Value::Null),
        };
        let payment = Payment {
            id: uuid::Uuid::now_v7().to_string(),
            order_id: order_id.to_string(),
            user_id: charge.user_id.clone(),
            amount_cents: charge.amount_cents,
            currency: charge.currency.clone(),
            status: status.to_string(),
        };
        self.0
            .rows(
                "INSERT INTO payments (id, order_id, user_id, amount_cents, currency, status, created_at, updated_at, processor_charge_id)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    Value::Text(payment.id.clone()),
                    Value::Text(payment.order_id.clone()),
                    Value::Text(payment.user_id.clone()),
                    Value::Integer(payment.amount_cents),
                    Value::Text(payment.currency.clone()),
                    Value::Text(payment.status.clone()),
                    Value::Text(now.to_string()),
                    Value::Text(now.to_string()),
                    charge_id,
                ],
            )
            .await?;
        Ok(recorded(&payment))
    }

    async fn voided(&self, order_id: &str) -> Result<bool, Problem> {
        let rows = self
            .0
            .rows(
                "SELECT 1 FROM payment_voids WHERE order_id = ?",
                vec![Value::Text(order_id.to_string())],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Refunds an order's charge; refunding twice changes nothing. A refund
    /// that comes before any charge voids the order's charge, so one still
    /// on its way is refused. Inside the caller's transaction.
    pub async fn refund(
        &self,
        order_id: &str,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), Problem> {
        let order = Value::Text(order_id.to_string());
        self.0
            .rows(
                "UPDATE payments SET status = 'refunded', updated_at = ? WHERE order_id = ? AND status = 'charged'",
                vec![Value::Text(now.to_string()), order.clone()],
            )
            .await?;
        self.0
            .rows(
                "INSERT INTO payment_voids (order_id, voided_at)
                 SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM payments WHERE order_id = ?1)
                 ON CONFLICT (order_id) DO NOTHING",
                vec![order, Value::Text(now.to_string())],
            )
            .await?;
        Ok((saga::PAYMENT_REFUNDED, serde_json::json!({})))
    }
}

/// The reply that states a recorded payment.
fn recorded(payment: &Payment) -> (&'static str, serde_json::Value) {
    match payment.status.as_str() {
        "charged" => (
            saga::PAYMENT_CHARGED,
            serde_json::json!({ "payment_id": payment.id }),
        ),
        "refunded" => (saga::PAYMENT_REFUNDED, serde_json::json!({})),
        _ => (saga::PAYMENT_DECLINED, serde_json::json!({})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: &str) -> Payment {
        Payment {
            id: "p1".into(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            amount_cents: 1200,
            currency: "EUR".into(),
            status: status.into(),
        }
    }

    /// A redelivered charge is answered from the recorded payment, so the
    /// processor is never asked twice and a refunded charge stays refunded.
    #[test]
    fn a_recorded_payment_answers_as_it_ended() {
        assert_eq!(
            recorded(&payment("charged")),
            (
                saga::PAYMENT_CHARGED,
                serde_json::json!({ "payment_id": "p1" })
            )
        );
        assert_eq!(recorded(&payment("refunded")).0, saga::PAYMENT_REFUNDED);
        assert_eq!(recorded(&payment("declined")).0, saga::PAYMENT_DECLINED);
    }
}
