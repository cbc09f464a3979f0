//! The products service's own SQLite database (label `products`).

use bazaar_api::Problem;
use bazaar_service::{Database, Migration};
use spin_sdk::sqlite::{RowResult, Value};

use crate::domain::Product;

const MIGRATIONS: &[Migration] = &[Migration {
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
}];

const COLUMNS: &str = "id, sku, name, description, price_cents, currency, stock_available";

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

    pub async fn update(&self, p: &Product, now: &str) -> Result<(), Problem> {
        self.rows(
            "UPDATE products SET name = ?, description = ?, price_cents = ?, currency = ?, updated_at = ? WHERE id = ?",
            vec![
                text(&p.name),
                p.description.as_deref().map_or(Value::Null, text),
                Value::Integer(p.price_cents),
                text(&p.currency),
                text(now),
                text(&p.id),
            ],
        )
        .await
        .map(drop)
    }

    /// Sets the available stock; `Ok(false)` when there is no such product.
    pub async fn set_stock(&self, id: &str, available: i64, now: &str) -> Result<bool, Problem> {
        self.rows(
            "UPDATE products SET stock_available = ?, updated_at = ? WHERE id = ?",
            vec![Value::Integer(available), text(now), text(id)],
        )
        .await?;
        Ok(self.0.changes().await == 1)
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.0.ping().await
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
    }
}
