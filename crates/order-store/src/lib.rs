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
use bazaar_envelope::saga::{self, Charge, ReserveStock, StockLine};
use bazaar_order_model::saga::Command;
use bazaar_order_model::{Event, Order, StoredEvent};
use bazaar_service::{Database, MESSAGING_TABLES, Migration};
use spin_sdk::sqlite::{RowResult, Value};

const MIGRATIONS: &[Migration] = &[
    Migration {
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
            MESSAGING_TABLES[0],
            MESSAGING_TABLES[1],
            MESSAGING_TABLES[2],
            "CREATE TABLE idempotency_keys (
            user_id     TEXT NOT NULL,
            key         TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            order_id    TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (user_id, key)
        )",
        ],
    },
    Migration {
        version: 2,
        statements: &[
            "CREATE TABLE sagas (
            order_id    TEXT PRIMARY KEY,
            settled     INTEGER NOT NULL,
            activity_at TEXT NOT NULL
        )",
            "CREATE INDEX sagas_open ON sagas (activity_at) WHERE settled = 0",
        ],
    },
    Migration {
        version: 3,
        statements: &[
            // How far each order's stream and its read-model view have got,
            // so redrive can refresh views whose update was lost.
            "ALTER TABLE sagas ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE sagas ADD COLUMN projected INTEGER NOT NULL DEFAULT 0",
        ],
    },
];

/// Not an event: a request to the projection to rebuild one view.
pub const VIEW_REFRESH: &str = "order.view_refresh";

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
    /// The message this append answers, consumed in the same transaction.
    pub consumes: Option<&'a str>,
    /// Whether the saga has nothing left to do once this is appended.
    pub settled: bool,
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
    /// The message was consumed before: a duplicate delivery.
    Duplicate,
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
            consumes,
            settled,
        } = append;
        if let Some(message_id) = consumes
            && !self.0.consume(message_id, occurred_at).await?
        {
            return Err(AppendError::Duplicate);
        }
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
            self.0.enqueue(&message.channel, &message.envelope).await?;
        }
        let version = expected + stored.len() as i64;
        self.rows(
            "INSERT INTO sagas (order_id, settled, activity_at, version) VALUES (?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET settled = excluded.settled, activity_at = excluded.activity_at,
             version = excluded.version",
            vec![text(order_id), Value::Integer(i64::from(settled)), text(occurred_at), Value::Integer(version)],
        )
        .await?;
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

    /// Publishes the outbox to Redis at `address`.
    pub async fn relay_outbox(&self, address: &str, now: &str) -> Result<usize, Problem> {
        self.0.relay_outbox(address, now).await
    }

    /// Orders whose saga is unsettled and has been quiet since `before`.
    pub async fn quiet_sagas(&self, before: &str, limit: u32) -> Result<Vec<String>, Problem> {
        self.order_ids(
            "SELECT order_id FROM sagas WHERE settled = 0 AND activity_at < ? ORDER BY activity_at LIMIT ?",
            before,
            limit,
        )
        .await
    }

    async fn order_ids(&self, sql: &str, before: &str, limit: u32) -> Result<Vec<String>, Problem> {
        let rows = self
            .rows(sql, vec![text(before), Value::Integer(i64::from(limit))])
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<&str>(0).map(str::to_string))
            .collect())
    }

    /// Records that the read model shows `version` of the order.
    pub async fn projected(&self, order_id: &str, version: i64) -> Result<(), Problem> {
        self.rows(
            "UPDATE sagas SET projected = ? WHERE order_id = ? AND projected < ?",
            vec![
                Value::Integer(version),
                text(order_id),
                Value::Integer(version),
            ],
        )
        .await
        .map(drop)
    }

    /// Orders whose view lags their stream and that have been quiet since
    /// `before`: their view update was lost.
    pub async fn stale_views(&self, before: &str, limit: u32) -> Result<Vec<String>, Problem> {
        self.order_ids(
            "SELECT order_id FROM sagas WHERE projected < version AND activity_at < ? LIMIT ?",
            before,
            limit,
        )
        .await
    }

    /// Sends a redriven command: queued and the saga's activity noted, so
    /// the next redrive waits again.
    pub async fn redrive(
        &self,
        order_id: &str,
        message: &OutboxMessage,
        now: &str,
    ) -> Result<(), Problem> {
        self.0.begin().await?;
        let outcome = async {
            self.0.enqueue(&message.channel, &message.envelope).await?;
            self.rows(
                "UPDATE sagas SET activity_at = ? WHERE order_id = ?",
                vec![text(now), text(order_id)],
            )
            .await
            .map(drop)
        }
        .await;
        self.0.end(outcome.is_ok()).await?;
        outcome
    }
}

impl OutboxMessage {
    /// The message carrying `command` for `order` to its step.
    pub fn command(
        order: &Order,
        command: Command,
        now: &str,
        causation_id: Option<String>,
        traceparent: Option<String>,
    ) -> OutboxMessage {
        let (channel, kind, data) = match command {
            Command::ReserveStock => {
                let items = order
                    .items
                    .iter()
                    .map(|i| StockLine {
                        product_id: i.product_id.clone(),
                        quantity: i.quantity,
                    })
                    .collect();
                (
                    saga::INVENTORY_COMMANDS,
                    saga::RESERVE_STOCK,
                    serde_json::to_value(ReserveStock { items }),
                )
            }
            Command::ReleaseStock => (
                saga::INVENTORY_COMMANDS,
                saga::RELEASE_STOCK,
                Ok(serde_json::json!({})),
            ),
            Command::Charge => (
                saga::PAYMENT_COMMANDS,
                saga::CHARGE,
                serde_json::to_value(Charge {
                    user_id: order.user_id.clone(),
                    amount_cents: order.total_cents,
                    currency: order.currency.clone(),
                    card_token: order.saga.card_token.clone(),
                }),
            ),
            Command::Refund => (
                saga::PAYMENT_COMMANDS,
                saga::REFUND,
                Ok(serde_json::json!({})),
            ),
        };
        OutboxMessage {
            channel: channel.to_string(),
            envelope: Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                kind: kind.to_string(),
                version: 1,
                order_id: order.id.clone(),
                correlation_id: order.id.clone(),
                causation_id,
                traceparent,
                occurred_at: now.to_string(),
                data: data.expect("commands always serialise"),
            },
        }
    }

    /// Asks the projection to rebuild an order's view.
    pub fn view_refresh(order_id: &str, now: &str) -> OutboxMessage {
        OutboxMessage {
            channel: bazaar_envelope::ORDER_EVENTS_CHANNEL.to_string(),
            envelope: Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                kind: VIEW_REFRESH.to_string(),
                version: 1,
                order_id: order_id.to_string(),
                correlation_id: order_id.to_string(),
                causation_id: None,
                traceparent: None,
                occurred_at: now.to_string(),
                data: serde_json::json!({}),
            },
        }
    }

    /// The message announcing event number `seq` of an order on the order
    /// events channel.
    pub fn announcement(
        order_id: &str,
        event: &Event,
        seq: i64,
        now: &str,
        causation_id: Option<String>,
        traceparent: Option<String>,
    ) -> OutboxMessage {
        let mut data = event.data();
        if let Some(object) = data.as_object_mut() {
            object.insert("seq".into(), seq.into());
        }
        OutboxMessage {
            channel: bazaar_envelope::ORDER_EVENTS_CHANNEL.to_string(),
            envelope: Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                kind: event.kind().to_string(),
                version: bazaar_order_model::events::EVENT_VERSION,
                order_id: order_id.to_string(),
                correlation_id: order_id.to_string(),
                causation_id,
                traceparent,
                occurred_at: now.to_string(),
                data,
            },
        }
    }
}
