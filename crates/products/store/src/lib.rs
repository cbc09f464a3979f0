//! The products service's own SQLite database (label `products`): the
//! catalogue with each product's available stock, and the inventory step's
//! reservations. Shared by the products component and the saga's
//! inventory step (`functions/inventory`), and by nothing else.
//!
//! A reservation is recorded per order, whatever happens to it, so a
//! command delivered twice (or re-sent by redrive) gets the recorded answer
//! instead of reserving again, and a release that arrives before its
//! reservation leaves a tombstone that the late reservation respects.

use bazaar_api::Problem;
use bazaar_database::{Database, MESSAGING_TABLES, MESSAGING_TABLES_V2, Migration};
use bazaar_envelope::saga::{self, StockLine};
use serde::Serialize;
use spin_sdk::sqlite::{RowResult, Value};

/// A product as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub currency: String,
    pub stock_available: i64,
    /// Bumped by every change (stock included): the product's `ETag`.
    #[serde(skip)]
    pub version: i64,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &["CREATE TABLE products (
        id              TEXT PRIMARY KEY,
        sku             TEXT NOT NULL UNIQUE,
        name            TEXT NOT NULL,
        description     TEXT,
        price_cents     INTEGER NOT NULL CHECK (price_cents >= 0),
        currency        TEXT NOT NULL,
        stock_available INTEGER NOT NULL CHECK (stock_available >= 0),
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL
    )"],
    },
    Migration {
        version: 2,
        statements: &[
            "CREATE TABLE reservations (
            order_id   TEXT PRIMARY KEY,
            status     TEXT NOT NULL CHECK (status IN ('reserved', 'rejected', 'released')),
            items      TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )",
            MESSAGING_TABLES[0],
            MESSAGING_TABLES[1],
            MESSAGING_TABLES[2],
        ],
    },
    Migration {
        version: 3,
        statements: MESSAGING_TABLES_V2,
    },
    Migration {
        version: 4,
        // Every change bumps it, so `PUT /stock` can require `If-Match`.
        statements: &["ALTER TABLE products ADD COLUMN version INTEGER NOT NULL DEFAULT 1"],
    },
];

/// What a change made only if the product is still at the caller's
/// version (`If-Match`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    Applied,
    NoSuchProduct,
    /// The product is at another version (this one) than the caller's.
    Stale(i64),
}

const COLUMNS: &str = "id, sku, name, description, price_cents, currency, stock_available, version";

pub struct Store(Database);

fn text(value: &str) -> Value {
    Value::Text(value.to_string())
}

impl Store {
    pub async fn open() -> Result<Store, Problem> {
        Database::open("products", "products", MIGRATIONS)
            .await
            .map(Store)
    }

    async fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<RowResult>, Problem> {
        self.0.rows(sql, params).await
    }

    /// Inserts the product; `Ok(false)` when its SKU is taken.
    pub async fn insert(&self, p: &Product, now: &str) -> Result<bool, Problem> {
        self.rows(
            "INSERT INTO products (id, sku, name, description, price_cents, currency, stock_available, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sku) DO NOTHING",
            vec![
                text(&p.id),
                text(&p.sku),
                text(&p.name),
                p.description.as_deref().map_or(Value::Null, text),
                Value::Integer(p.price_cents),
                text(&p.currency),
                Value::Integer(p.stock_available),
                text(now),
                text(now),
            ],
        )
        .await?;
        Ok(self.0.changes().await == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Product>, Problem> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM products WHERE id = ?"),
                vec![text(id)],
            )
            .await?;
        Ok(rows.first().map(product))
    }

    /// The products with these ids that exist, in no particular order.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Product>, Problem> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM products WHERE id IN ({placeholders})"),
                ids.iter().map(|id| text(id)).collect(),
            )
            .await?;
        Ok(rows.iter().map(product).collect())
    }

    /// One page in id order (ids are time-ordered UUIDv7s), after `cursor`.
    pub async fn page(&self, after: Option<&str>, limit: u32) -> Result<Vec<Product>, Problem> {
        let rows = self
            .rows(
                &format!("SELECT {COLUMNS} FROM products WHERE id > ? ORDER BY id LIMIT ?"),
                vec![text(after.unwrap_or("")), Value::Integer(i64::from(limit))],
            )
            .await?;
        Ok(rows.iter().map(product).collect())
    }

    /// Writes a product's name, description and price if it is still at
    /// `version` (so an edit made since the caller read it is not lost).
    pub async fn update(
        &self,
        p: &Product,
        version: i64,
        now: &str,
    ) -> Result<Conditional, Problem> {
        self.rows(
            "UPDATE products SET name = ?, description = ?, price_cents = ?, currency = ?, updated_at = ?,
             version = version + 1 WHERE id = ? AND version = ?",
            vec![
                text(&p.name),
                p.description.as_deref().map_or(Value::Null, text),
                Value::Integer(p.price_cents),
                text(&p.currency),
                text(now),
                text(&p.id),
                Value::Integer(version),
            ],
        )
        .await?;
        self.conditional_outcome(&p.id).await
    }

    /// Sets the available stock if the product is still at `version` (so
    /// a reservation made since the caller read it is not overwritten).
    pub async fn set_stock(
        &self,
        id: &str,
        available: i64,
        version: i64,
        now: &str,
    ) -> Result<Conditional, Problem> {
        self.rows(
            "UPDATE products SET stock_available = ?, updated_at = ?, version = version + 1
             WHERE id = ? AND version = ?",
            vec![
                Value::Integer(available),
                text(now),
                text(id),
                Value::Integer(version),
            ],
        )
        .await?;
        self.conditional_outcome(id).await
    }

    /// What the `UPDATE … WHERE id = ? AND version = ?` just run did.
    async fn conditional_outcome(&self, id: &str) -> Result<Conditional, Problem> {
        if self.0.changes().await == 1 {
            return Ok(Conditional::Applied);
        }
        Ok(match self.get(id).await? {
            Some(product) => Conditional::Stale(product.version),
            None => Conditional::NoSuchProduct,
        })
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.0.ping().await
    }

    /// The database, for the messaging primitives (transactions, outbox,
    /// consumed message ids).
    pub fn db(&self) -> &Database {
        &self.0
    }

    async fn reservation(
        &self,
        order_id: &str,
    ) -> Result<Option<(String, Vec<StockLine>)>, Problem> {
        let rows = self
            .rows(
                "SELECT status, items FROM reservations WHERE order_id = ?",
                vec![text(order_id)],
            )
            .await?;
        Ok(rows.first().map(|row| {
            let status = row.get::<&str>(0).unwrap_or_default().to_string();
            let items =
                serde_json::from_str(row.get::<&str>(1).unwrap_or("[]")).unwrap_or_default();
            (status, items)
        }))
    }

    async fn record(
        &self,
        order_id: &str,
        status: &str,
        items: &[StockLine],
        now: &str,
    ) -> Result<(), Problem> {
        let items = serde_json::to_string(items).map_err(|e| Problem::internal(e.to_string()))?;
        self.rows(
            "INSERT INTO reservations (order_id, status, items, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            vec![text(order_id), text(status), text(&items), text(now)],
        )
        .await
        .map(drop)
    }

    /// Reserves every line or none; answers with the reply type. Inside the
    /// caller's transaction.
    pub async fn reserve(
        &self,
        order_id: &str,
        items: &[StockLine],
        now: &str,
    ) -> Result<&'static str, Problem> {
        if let Some((status, _)) = self.reservation(order_id).await? {
            return Ok(reply_for(&status));
        }
        for line in items {
            let rows = self
                .rows(
                    "SELECT stock_available FROM products WHERE id = ?",
                    vec![text(&line.product_id)],
                )
                .await?;
            let available = rows.first().and_then(|r| r.get::<i64>(0));
            if available.is_none_or(|a| a < line.quantity) {
                self.record(order_id, "rejected", items, now).await?;
                return Ok(saga::STOCK_REJECTED);
            }
        }
        for line in items {
            self.rows(
                "UPDATE products SET stock_available = stock_available - ?, updated_at = ?,
                 version = version + 1 WHERE id = ?",
                vec![
                    Value::Integer(line.quantity),
                    text(now),
                    text(&line.product_id),
                ],
            )
            .await?;
        }
        self.record(order_id, "reserved", items, now).await?;
        Ok(saga::STOCK_RESERVED)
    }

    /// Returns a reservation's stock; releasing twice, or what was never
    /// reserved, changes nothing. Inside the caller's transaction.
    pub async fn release(&self, order_id: &str, now: &str) -> Result<&'static str, Problem> {
        match self.reservation(order_id).await? {
            Some((status, items)) if status == "reserved" => {
                for line in &items {
                    self.rows(
                        "UPDATE products SET stock_available = stock_available + ?, updated_at = ?,
                         version = version + 1 WHERE id = ?",
                        vec![
                            Value::Integer(line.quantity),
                            text(now),
                            text(&line.product_id),
                        ],
                    )
                    .await?;
                }
                self.record(order_id, "released", &items, now).await?;
            }
            Some(_) => {}
            None => self.record(order_id, "released", &[], now).await?,
        }
        Ok(saga::STOCK_RELEASED)
    }
}

/// The reply that states a recorded reservation.
fn reply_for(status: &str) -> &'static str {
    match status {
        "reserved" => saga::STOCK_RESERVED,
        "rejected" => saga::STOCK_REJECTED,
        _ => saga::STOCK_RELEASED,
    }
}

fn product(row: &RowResult) -> Product {
    let text = |i: usize| row.get::<&str>(i).unwrap_or_default().to_string();
    Product {
        id: text(0),
        sku: text(1),
        name: text(2),
        description: row.get::<&str>(3).map(str::to_string),
        price_cents: row.get::<i64>(4).unwrap_or_default(),
        currency: text(5),
        stock_available: row.get::<i64>(6).unwrap_or_default(),
        version: row.get::<i64>(7).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redelivered command is answered from the recorded reservation: a
    /// reservation that was released (or voided before it was made) must
    /// never be reported as reserved again.
    #[test]
    fn a_recorded_reservation_answers_as_it_ended() {
        assert_eq!(reply_for("reserved"), saga::STOCK_RESERVED);
        assert_eq!(reply_for("rejected"), saga::STOCK_REJECTED);
        assert_eq!(reply_for("released"), saga::STOCK_RELEASED);
    }
}
