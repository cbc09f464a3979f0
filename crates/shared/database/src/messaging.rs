//! Messaging on top of a service's own database: the transactional outbox
//! and idempotent consumption.
//!
//! A state change and the messages it emits commit in one transaction
//! ([`Database::enqueue`]), each message *claimed* by the writer for a
//! short lease. After the commit the writer publishes its own messages and
//! then marks them published ([`Database::publish`]): at least once, and
//! without a second look at the table on the normal path. A writer that
//! dies between commit and publish leaves rows whose lease runs out; the
//! next sweep ([`Database::relay_due`]) claims, publishes and marks them.
//! Consumers drop a message they already consumed, so publishing twice is
//! harmless.

use bazaar_api::{Problem, StatusCode};
use bazaar_envelope::Envelope;
use spin_sdk::sqlite::Value;

use crate::Database;
use bazaar_service::seconds_from_now_rfc3339;

/// How long a writer owns the messages it enqueued before a sweep may
/// publish them in its place.
pub const OUTBOX_LEASE_SECONDS: f64 = 10.0;

/// Messages swept per call: a sweep after an outage drains in batches.
const SWEEP_BATCH: i64 = 100;

/// Rows pruned per call, so a prune never holds the writer for long.
pub const PRUNE_BATCH: i64 = 1000;

/// The tables of the transactional outbox and of idempotent consumption,
/// for a service's first messaging migration.
pub const MESSAGING_TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS outbox (
        id           TEXT PRIMARY KEY,
        channel      TEXT NOT NULL,
        payload      BLOB NOT NULL,
        created_at   TEXT NOT NULL,
        published_at TEXT
    )",
    "CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL",
    "CREATE TABLE IF NOT EXISTS processed_messages (id TEXT PRIMARY KEY, processed_at TEXT NOT NULL)",
];

/// The second messaging migration: claim leases on outbox rows, and the
/// indexes that make sweeping and pruning cheap.
pub const MESSAGING_TABLES_V2: &[&str] = &[
    "ALTER TABLE outbox ADD COLUMN claimed_until TEXT",
    "UPDATE outbox SET claimed_until = created_at WHERE published_at IS NULL",
    "DROP INDEX IF EXISTS outbox_unpublished",
    "CREATE INDEX outbox_due ON outbox (claimed_until) WHERE published_at IS NULL",
    "CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL",
    "CREATE INDEX processed_messages_by_age ON processed_messages (processed_at)",
];

/// A message to publish once its transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub channel: String,
    pub envelope: Envelope,
}

/// What a prune deleted.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Pruned {
    pub outbox: u64,
    pub consumed: u64,
}

fn text(value: &str) -> Value {
    Value::Text(value.to_string())
}

fn redis_unavailable(e: impl std::fmt::Debug) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot reach Redis: {e:?}"),
    )
}

impl Database {
    /// Records `message_id` as consumed; `false` if it already was (a
    /// duplicate delivery, to be dropped).
    pub async fn consume(&self, message_id: &str, now: &str) -> Result<bool, Problem> {
        self.rows(
            "INSERT INTO processed_messages (id, processed_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            vec![text(message_id), text(now)],
        )
        .await?;
        Ok(self.changes().await == 1)
    }

    /// Queues `messages`, inside the caller's transaction, claimed by the
    /// caller for [`OUTBOX_LEASE_SECONDS`]; one statement for all of them.
    pub async fn enqueue_all(&self, messages: &[OutboxMessage]) -> Result<(), Problem> {
        if messages.is_empty() {
            return Ok(());
        }
        let lease = seconds_from_now_rfc3339(OUTBOX_LEASE_SECONDS);
        let rows = vec!["(?, ?, ?, ?, ?)"; messages.len()].join(", ");
        let mut params = Vec::with_capacity(messages.len() * 5);
        for message in messages {
            params.extend([
                text(&message.envelope.id),
                text(&message.channel),
                Value::Blob(message.envelope.to_bytes()),
                text(&message.envelope.occurred_at),
                text(&lease),
            ]);
        }
        self.rows(
            &format!(
                "INSERT INTO outbox (id, channel, payload, created_at, claimed_until) VALUES {rows}
                 ON CONFLICT (id) DO NOTHING"
            ),
            params,
        )
        .await
        .map(drop)
    }

    /// Publishes messages this caller enqueued and committed, in order, to
    /// the Redis server at `address`, then marks those sent as published.
    /// One that cannot be sent stays claimed until its lease ends, and a
    /// sweep sends it.
    pub async fn publish(
        &self,
        address: &str,
        messages: &[OutboxMessage],
        now: &str,
    ) -> Result<usize, Problem> {
        if messages.is_empty() {
            return Ok(0);
        }
        crate::inject_fault(crate::Fault::AfterCommit).await?;
        let redis = spin_sdk::redis::Connection::open(address)
            .await
            .map_err(redis_unavailable)?;
        let mut sent = Vec::with_capacity(messages.len());
        let mut failure = None;
        for message in messages {
            match redis
                .publish(&message.channel, &message.envelope.to_bytes())
                .await
            {
                Ok(()) => sent.push(message.envelope.id.as_str()),
                Err(e) => {
                    failure = Some(redis_unavailable(e));
                    break;
                }
            }
        }
        self.mark_published(&sent, now).await?;
        match failure {
            Some(problem) => Err(problem),
            None => Ok(sent.len()),
        }
    }

    async fn mark_published(&self, ids: &[&str], now: &str) -> Result<(), Problem> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let mut params = vec![text(now)];
        params.extend(ids.iter().map(|id| text(id)));
        self.rows(
            &format!("UPDATE outbox SET published_at = ? WHERE id IN ({placeholders})"),
            params,
        )
        .await
        .map(drop)
    }

    /// Publishes messages whose writer did not (its lease ran out): claims
    /// each before sending, so concurrent sweeps do not all send it, and
    /// marks it after. Oldest first, at most one batch per call.
    pub async fn relay_due(&self, address: &str, now: &str) -> Result<usize, Problem> {
        let due = self
            .rows(
                "SELECT id, channel, payload FROM outbox WHERE published_at IS NULL AND claimed_until < ?
                 ORDER BY claimed_until LIMIT ?",
                vec![text(now), Value::Integer(SWEEP_BATCH)],
            )
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let redis = spin_sdk::redis::Connection::open(address)
            .await
            .map_err(redis_unavailable)?;
        let lease = seconds_from_now_rfc3339(OUTBOX_LEASE_SECONDS);
        let mut published = 0;
        for row in &due {
            let id = row.get::<&str>(0).unwrap_or_default();
            let channel = row.get::<&str>(1).unwrap_or_default();
            let payload = row.get::<&[u8]>(2).unwrap_or_default();
            self.rows(
                "UPDATE outbox SET claimed_until = ? WHERE id = ? AND published_at IS NULL AND claimed_until < ?",
                vec![text(&lease), text(id), text(now)],
            )
            .await?;
            if self.changes().await != 1 {
                continue; // another sweep has it
            }
            crate::inject_fault(crate::Fault::AfterClaim).await?;
            if let Err(e) = redis.publish(channel, payload).await {
                // Stays claimed until the lease ends: the next sweep retries.
                return Err(redis_unavailable(e));
            }
            self.mark_published(&[id], now).await?;
            published += 1;
        }
        Ok(published)
    }

    /// `GET /internal/metrics` of a service whose only number for operators
    /// is its outbox: the gateway's `GET /metrics` asks it.
    pub async fn outbox_metrics(&self) -> bazaar_api::ApiResult {
        let unpublished = self.unpublished().await?;
        Ok(bazaar_api::json(
            StatusCode::OK,
            &serde_json::json!({ "outbox_unpublished": unpublished }),
        ))
    }

    /// Outbox messages committed but not yet published.
    pub async fn unpublished(&self) -> Result<i64, Problem> {
        let rows = self
            .rows(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                vec![],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<i64>(0))
            .unwrap_or_default())
    }

    /// Deletes published outbox rows and consumed message ids older than
    /// `before`, one bounded batch of each. A consumed id must outlive any
    /// redelivery of its message; the retention is days, redelivery seconds.
    pub async fn prune(&self, before: &str) -> Result<Pruned, Problem> {
        self.rows(
            "DELETE FROM outbox WHERE id IN
             (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?)",
            vec![text(before), Value::Integer(PRUNE_BATCH)],
        )
        .await?;
        let outbox = self.changes().await;
        self.rows(
            "DELETE FROM processed_messages WHERE id IN
             (SELECT id FROM processed_messages WHERE processed_at < ? LIMIT ?)",
            vec![text(before), Value::Integer(PRUNE_BATCH)],
        )
        .await?;
        let consumed = self.changes().await;
        Ok(Pruned { outbox, consumed })
    }
}
