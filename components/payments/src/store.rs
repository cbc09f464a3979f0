//! The payments service's own SQLite database (label `payments`).

use bazaar_api::Problem;
use bazaar_service::{Database, Migration};
use serde::Serialize;
use spin_sdk::sqlite::Value;

const MIGRATIONS: &[Migration] = &[Migration {
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
}];

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
                "SELECT id, order_id, user_id, amount_cents, currency, status FROM payments WHERE order_id = ? ORDER BY created_at",
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
}
