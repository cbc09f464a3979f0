//! The orders service's SQLite database (label `orders`): the event store,
//! the transactional outbox, and idempotency keys. Shared by the orders
//! component and the orders service's Redis-triggered functions, and by
//! nothing else.
//!
//! An append writes the new events, the messages announcing them and the
//! idempotency record in one transaction, so a crash can never leave an
//! event unannounced or an announcement without its event. The append
//! checks the stream's version (optimistic concurrency): two writers that
//! read the same version cannot both append.

use bazaar_api::Problem;
use bazaar_envelope::Envelope;
use bazaar_order_model::{Event, StoredEvent};
use bazaar_service::{Database, Migration};
use spin_sdk::sqlite::{RowResult, Value};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    statements: &[
        "CREATE TABLE events (
            order_id    TEXT NOT NULL,
            seq         INTEGER NOT NULL CHECK (seq >= 1),
            type        TEXT NOT NULL,
            version     INTEGER NOT NULL,
            data        TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            user_id     TEXT NOT NULL,
            PRIMARY KEY (order_id, seq)
        )",
        "CREATE INDEX events_by_user ON events (user_id, order_id)",
        "CREATE TABLE outbox (
            id           TEXT PRIMARY KEY,
            channel      TEXT NOT NULL,
            payload      BLOB NOT NULL,
            created_at   TEXT NOT NULL,
            published_at TEXT
        )",
        "CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL",
        "CREATE TABLE idempotency_keys (
            user_id     TEXT NOT NULL,
            key         TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            order_id    TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (user_id, key)
        )",
    ],
}];

/// A message to publish once its transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub channel: String,
    pub envelope: Envelope,
}

/// One append: the events that follow version `expected` (0 for a new
/// order), the messages announcing them, and the client's idempotency key.
pub struct Append<'a> {
    pub order_id: &'a str,
    pub user_id: &'a str,
    pub expected: i64,
    pub events: &'a [Event],
    pub occurred_at: &'a str,
    pub outbox: &'a [OutboxMessage],
    pub idempotency: Option<IdempotencyKey<'a>>,
}

/// A client's idempotency key for a new order.
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

/// Why an append did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// Another writer appended first; reload and decide again.
    Conflict,
    Failed(Problem),
}

impl From<Problem> for AppendError {
    fn from(p: Problem) -> Self {
        AppendError::Failed(p)
    }
}

pub struct OrderStore(Database);

fn text(value: &str) -> Value {
    Value::Text(value.to_string())
}

impl OrderStore {
    pub async fn open() -> Result<OrderStore, Problem> {
        Database::open("orders", "orders", MIGRATIONS)
            .await
            .map(OrderStore)
    }

    async fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<RowResult>, Problem> {
        self.0.rows(sql, params).await
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.0.ping().await
    }

    /// The order's events in sequence order.
    pub async fn load(&self, order_id: &str) -> Result<Vec<StoredEvent>, Problem> {
        let rows = self
            .rows(
                "SELECT seq, type, version, data, occurred_at FROM events WHERE order_id = ? ORDER BY seq",
                vec![text(order_id)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let data = row.get::<&str>(3).unwrap_or("null");
                Ok(StoredEvent {
                    seq: row.get::<i64>(0).unwrap_or_default(),
                    kind: row.get::<&str>(1).unwrap_or_default().to_string(),
                    version: row
                        .get::<i64>(2)
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or_default(),
                    data: serde_json::from_str(data).map_err(|e| {
                        Problem::internal(format!("order {order_id} has an unreadable event: {e}"))
                    })?,
                    occurred_at: row.get::<&str>(4).unwrap_or_default().to_string(),
                })
            })
            .collect()
    }

    /// The order an idempotency key was first used for, with that
    /// request's fingerprint.
    pub async fn idempotent_order(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<(String, String)>, Problem> {
        let rows = self
            .rows(
                "SELECT fingerprint, order_id FROM idempotency_keys WHERE user_id = ? AND key = ?",
                vec![text(user_id), text(key)],
            )
            .await?;
        Ok(rows.first().map(|row| {
            let get = |i| row.get::<&str>(i).unwrap_or_default().to_string();
            (get(0), get(1))
        }))
    }

    /// Appends atomically: events, outbox messages and idempotency key.
    pub async fn append(&self, append: Append<'_>) -> Result<Vec<StoredEvent>, AppendError> {
        self.rows("BEGIN IMMEDIATE", vec![]).await?;
        let outcome = self.append_in_transaction(append).await;
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        self.rows(end, vec![]).await?;
        outcome
    }

    async fn append_in_transaction(
        &self,
        append: Append<'_>,
    ) -> Result<Vec<StoredEvent>, AppendError> {
        let Append {
            order_id,
            user_id,
            expected,
            events,
            occurred_at,
            outbox,
            idempotency,
        } = append;
        let current = self
            .rows(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE order_id = ?",
                vec![text(order_id)],
            )
            .await?
            .first()
            .and_then(|r| r.get::<i64>(0))
            .unwrap_or(0);
        if current != expected {
            return Err(AppendError::Conflict);
        }
        let mut stored = Vec::new();
        for (seq, event) in (expected + 1..).zip(events) {
            let event = StoredEvent::new(seq, event, occurred_at);
            self.rows(
                "INSERT INTO events (order_id, seq, type, version, data, occurred_at, user_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                vec![
                    text(order_id),
                    Value::Integer(seq),
                    text(&event.kind),
                    Value::Integer(i64::from(event.version)),
                    text(&event.data.to_string()),
                    text(occurred_at),
                    text(user_id),
                ],
            )
            .await?;
            stored.push(event);
        }
        for message in outbox {
            self.rows(
                "INSERT INTO outbox (id, channel, payload, created_at) VALUES (?, ?, ?, ?)",
                vec![
                    text(&message.envelope.id),
                    text(&message.channel),
                    Value::Blob(message.envelope.to_bytes()),
                    text(occurred_at),
                ],
            )
            .await?;
        }
        if let Some(key) = idempotency {
            self.rows(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, created_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, key) DO NOTHING",
                vec![
                    text(user_id),
                    text(key.key),
                    text(key.fingerprint),
                    text(order_id),
                    text(occurred_at),
                ],
            )
            .await?;
            if self.0.changes().await != 1 {
                // A concurrent request with the same key won the race.
                return Err(AppendError::Conflict);
            }
        }
        Ok(stored)
    }

    /// Messages committed but not yet published, oldest first.
    pub async fn unpublished(&self, limit: u32) -> Result<Vec<(String, String, Vec<u8>)>, Problem> {
        let rows = self
            .rows(
                "SELECT id, channel, payload FROM outbox WHERE published_at IS NULL ORDER BY created_at, id LIMIT ?",
                vec![Value::Integer(i64::from(limit))],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<&str>(0).unwrap_or_default().to_string(),
                    row.get::<&str>(1).unwrap_or_default().to_string(),
                    row.get::<&[u8]>(2).unwrap_or_default().to_vec(),
                )
            })
            .collect())
    }

    pub async fn mark_published(&self, id: &str, at: &str) -> Result<(), Problem> {
        self.rows(
            "UPDATE outbox SET published_at = ? WHERE id = ?",
            vec![text(at), text(id)],
        )
        .await
        .map(drop)
    }

    /// Publishes what the outbox holds to Redis at `address`; a message
    /// that cannot be published now stays for the next attempt.
    pub async fn relay_outbox(&self, address: &str, now: &str) -> Result<usize, Problem> {
        let pending = self.unpublished(100).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let conn = spin_sdk::redis::Connection::open(address)
            .await
            .map_err(|e| {
                Problem::new(
                    bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot reach Redis: {e:?}"),
                )
            })?;
        let mut published = 0;
        for (id, channel, payload) in pending {
            if let Err(e) = conn.publish(&channel, &payload).await {
                eprintln!(
                    "{{\"level\":\"warn\",\"msg\":\"outbox publish failed\",\"message_id\":\"{id}\",\"error\":{:?}}}",
                    format!("{e:?}")
                );
                break;
            }
            self.mark_published(&id, now).await?;
            published += 1;
        }
        Ok(published)
    }
}
