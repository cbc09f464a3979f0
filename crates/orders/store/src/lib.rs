//! The orders service's SQLite database (label `orders`): the event store,
//! the saga's bookkeeping, the orders read model, the transactional outbox
//! and idempotency keys. Shared by the orders component and the
//! `order-saga` function, and by nothing else.
//!
//! Every change to an order is decided and recorded in one write
//! transaction ([`OrderStore::record`]): the saga's decision runs on the
//! state read under the write lock, and the new events, the messages they
//! cause, the read-model view and the saga's next deadline commit together.
//! A crash can never leave an event unannounced, a command unsent (it is in
//! the outbox) or a view behind its stream.

use bazaar_api::Problem;
use bazaar_database::{Database, MESSAGING_TABLES, MESSAGING_TABLES_V2, Migration};
pub use bazaar_database::{OutboxMessage, Pruned};
use bazaar_envelope::Envelope;
use bazaar_envelope::saga::{self as saga_messages, Charge, ReserveStock, StockLine};
use bazaar_order_model::saga::{self, Command, Decision, Wake};
use bazaar_order_model::{Event, Order, StoredEvent};
use bazaar_service::{random_fraction, seconds_from_now_rfc3339};

/// The card token a saga keeps: none once it is settled (nothing left to
/// charge), else `$token`; the one place that rule is written, as an SQL
/// expression over the statement's `$settled` flag.
macro_rules! card_token_unless_settled {
    ($settled:literal, $token:literal) => {
        concat!(
            "CASE WHEN ",
            $settled,
            " = 1 THEN NULL ELSE ",
            $token,
            " END"
        )
    };
}
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
    Migration {
        version: 4,
        statements: MESSAGING_TABLES_V2,
    },
    Migration {
        version: 5,
        statements: SAGA_DEADLINES,
    },
    Migration {
        version: 6,
        statements: CARD_TOKENS_WITH_THE_SAGA,
    },
    Migration {
        version: 7,
        // Idempotency keys are pruned by age, like consumed message ids.
        statements: &["CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)"],
    },
];

/// The sixth migration: card tokens leave the event store. A token is kept
/// on its saga's row only until the saga settles, for the charge (and its
/// re-sends); an idempotency key keeps a digest of its request, not the
/// request (older keys keep their request without the token).
const CARD_TOKENS_WITH_THE_SAGA: &[&str] = &[
    "ALTER TABLE sagas ADD COLUMN card_token TEXT",
    "UPDATE sagas SET card_token = (SELECT json_extract(data, '$.card_token') FROM events
        WHERE events.order_id = sagas.order_id AND events.seq = 1) WHERE settled = 0",
    "UPDATE events SET data = json_remove(data, '$.card_token')
        WHERE type = 'order.placed' AND json_extract(data, '$.card_token') IS NOT NULL",
    "UPDATE idempotency_keys SET fingerprint = json_remove(fingerprint, '$.payment.card_token')
        WHERE json_valid(fingerprint)",
];

/// The fourth migration: the read model moves into this database, written
/// in the transaction that appends the events; sagas get deadlines,
/// attempts and parking; the outbox gets claim leases.
const SAGA_DEADLINES: &[&str] = &[
    "CREATE TABLE order_views (
        order_id TEXT PRIMARY KEY,
        user_id  TEXT NOT NULL,
        version  INTEGER NOT NULL,
        view     TEXT NOT NULL
    )",
    "CREATE INDEX order_views_by_user ON order_views (user_id, order_id)",
    "ALTER TABLE sagas ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sagas ADD COLUMN next_attempt_at TEXT",
    "ALTER TABLE sagas ADD COLUMN parked_at TEXT",
    "ALTER TABLE sagas ADD COLUMN last_error TEXT",
    "UPDATE sagas SET next_attempt_at = activity_at WHERE settled = 0",
    // Views written before this migration lived in a key-value store:
    // redrive rebuilds each from the event store.
    "UPDATE sagas SET projected = 0",
    "DROP INDEX IF EXISTS sagas_open",
    "CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE settled = 0 AND parked_at IS NULL",
    "CREATE INDEX sagas_parked ON sagas (parked_at) WHERE parked_at IS NOT NULL",
    "CREATE INDEX sagas_unprojected ON sagas (order_id) WHERE projected < version",
];

/// What a prune of the orders database deleted.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OrdersPruned {
    #[serde(flatten)]
    pub messages: Pruned,
    pub idempotency_keys: u64,
}

/// A client's idempotency key for a new order.
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

/// Where a change comes from: what it consumes and what it passes on.
pub struct Cause<'a> {
    pub now: &'a str,
    /// The message this change answers, consumed in the same transaction.
    pub consumes: Option<&'a str>,
    /// The id the outgoing messages name as their cause.
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
    /// Only for a new order.
    pub idempotency: Option<IdempotencyKey<'a>>,
    /// Only for a new order: the card to charge, kept with the saga (never
    /// in an event) until it settles.
    pub card_token: Option<&'a str>,
    /// How long to wait for a step's answer before redriving.
    pub reply_timeout: f64,
}

/// What a change did.
#[derive(Debug)]
pub struct Recorded {
    /// The order after the change.
    pub order: Order,
    /// The events appended.
    pub appended: Vec<Event>,
    /// Committed messages, claimed by the caller: publish them.
    pub outbox: Vec<OutboxMessage>,
}

/// Why a change did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// The message was consumed before: a duplicate delivery.
    Duplicate,
    /// A concurrent request with the same idempotency key won.
    KeyTaken,
    Failed(Problem),
}

impl From<Problem> for AppendError {
    fn from(p: Problem) -> Self {
        AppendError::Failed(p)
    }
}

/// A saga whose deadline has passed.
#[derive(Debug, Clone)]
pub struct DueSaga {
    pub order_id: String,
    pub version: i64,
    pub attempts: i64,
}

/// What redrive did with one due saga.
#[derive(Debug)]
pub enum Redriven {
    /// Its commands, committed and claimed: publish them.
    Resent(Vec<OutboxMessage>),
    /// It ran out of attempts.
    Parked,
    /// Someone else acted first, or nothing was outstanding.
    Skipped,
}

/// A parked saga, as administrators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedSaga {
    pub order_id: String,
    pub attempts: i64,
    pub parked_at: String,
    pub last_error: String,
}

/// An open saga (neither settled nor parked), as administrators see it:
/// how often it has been re-sent and when it is next due.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenSaga {
    pub order_id: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
}

/// How many sagas are open, parked and overdue, and outbox messages
/// unpublished, now.
#[derive(Debug, serde::Serialize)]
pub struct SagaGauges {
    pub sagas_open: i64,
    pub sagas_parked: i64,
    pub sagas_overdue: i64,
    pub outbox_unpublished: i64,
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

    async fn order(&self, order_id: &str) -> Result<Option<Order>, Problem> {
        Order::fold(order_id, &self.load(order_id).await?).map_err(Problem::internal)
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

    /// Decides and records one change to an order, in one write
    /// transaction: `decide` sees the order as it is (`None` for a new one)
    /// and says what to append and send; the events, the messages (the
    /// events announced, the commands), the read-model view, the saga's
    /// deadline, the consumed message id and the idempotency key commit
    /// together. Holding the write lock from the read to the commit makes
    /// the decision final: no one else can append in between.
    pub async fn record<F>(
        &self,
        order_id: &str,
        cause: Cause<'_>,
        decide: F,
    ) -> Result<Recorded, AppendError>
    where
        F: FnOnce(Option<&Order>) -> Result<Decision, Problem>,
    {
        self.0
            .transaction(async || self.record_in_transaction(order_id, cause, decide).await)
            .await
    }

    async fn record_in_transaction<F>(
        &self,
        order_id: &str,
        cause: Cause<'_>,
        decide: F,
    ) -> Result<Recorded, AppendError>
    where
        F: FnOnce(Option<&Order>) -> Result<Decision, Problem>,
    {
        let now = cause.now;
        if let Some(message_id) = cause.consumes
            && !self.0.consume(message_id, now).await?
        {
            return Err(AppendError::Duplicate);
        }
        let mut events = self.load(order_id).await?;
        let before = Order::fold(order_id, &events).map_err(Problem::internal)?;
        let decision = decide(before.as_ref())?;
        let version = before.as_ref().map_or(0, |o| o.version);
        let user_id = match (&before, decision.events.first()) {
            (Some(order), _) => order.user_id.clone(),
            (None, Some(Event::Placed(placed))) => placed.user_id.clone(),
            (None, _) => return Err(Problem::not_found(format!("no order {order_id}")).into()),
        };
        let appended: Vec<StoredEvent> = (version + 1..)
            .zip(&decision.events)
            .map(|(seq, event)| StoredEvent::new(seq, event, now))
            .collect();
        self.insert_events(order_id, &user_id, &appended, now)
            .await?;
        events.extend(appended);
        let after = Order::fold(order_id, &events)
            .map_err(Problem::internal)?
            .ok_or_else(|| Problem::not_found(format!("no order {order_id}")))?;
        let mut outbox = Vec::new();
        for (seq, event) in (version + 1..).zip(&decision.events) {
            outbox.push(announcement(order_id, event, seq, now, &cause));
        }
        let card_token = match cause.card_token {
            Some(token) => Some(token.to_string()),
            None if decision.commands.contains(&Command::Charge) => {
                Some(self.card_token(order_id).await?)
            }
            None => None,
        };
        for command in &decision.commands {
            outbox.push(command_message(
                &after,
                *command,
                now,
                &cause,
                card_token.as_deref(),
            ));
        }
        self.0.enqueue_all(&outbox).await?;
        if !decision.events.is_empty() {
            self.write_view(&after).await?;
            self.write_saga(&after, decision.wake, now, &cause).await?;
        }
        if let Some(key) = cause.idempotency {
            self.rows(
                "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, created_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, key) DO NOTHING",
                vec![
                    text(&user_id),
                    text(key.key),
                    text(key.fingerprint),
                    text(order_id),
                    text(now),
                ],
            )
            .await?;
            if self.0.changes().await != 1 {
                return Err(AppendError::KeyTaken);
            }
        }
        Ok(Recorded {
            order: after,
            appended: decision.events,
            outbox,
        })
    }

    /// The new events, in one statement.
    async fn insert_events(
        &self,
        order_id: &str,
        user_id: &str,
        events: &[StoredEvent],
        now: &str,
    ) -> Result<(), Problem> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; events.len()].join(", ");
        let mut params = Vec::with_capacity(events.len() * 7);
        for event in events {
            params.extend([
                text(order_id),
                Value::Integer(event.seq),
                text(&event.kind),
                Value::Integer(i64::from(event.version)),
                text(&event.data.to_string()),
                text(now),
                text(user_id),
            ]);
        }
        self.rows(
            &format!(
                "INSERT INTO events (order_id, seq, type, version, data, occurred_at, user_id) VALUES {rows}"
            ),
            params,
        )
        .await
        .map(drop)
    }

    /// The read-model view, never replaced by an older one. One of the
    /// same version is replaced: it was made from the same events, so only
    /// the view's shape can differ (a rebuild after that shape changed).
    async fn write_view(&self, order: &Order) -> Result<(), Problem> {
        self.rows(
            "INSERT INTO order_views (order_id, user_id, version, view) VALUES (?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET version = excluded.version, view = excluded.view
             WHERE excluded.version >= order_views.version",
            vec![
                text(&order.id),
                text(&order.user_id),
                Value::Integer(order.version),
                text(&order.to_api().to_string()),
            ],
        )
        .await
        .map(drop)
    }

    /// The saga's bookkeeping after new events: how far it is, when it
    /// must act on its own if no answer comes, and the card token while it
    /// may still have to charge (erased when it settles).
    async fn write_saga(
        &self,
        order: &Order,
        wake: Wake,
        now: &str,
        cause: &Cause<'_>,
    ) -> Result<(), Problem> {
        let settled = Value::Integer(i64::from(saga::settled(order)));
        let version = Value::Integer(order.version);
        let next = match wake {
            Wake::Keep => None,
            Wake::Never => Some(Value::Null),
            Wake::AfterReplyTimeout => Some(text(&seconds_from_now_rfc3339(cause.reply_timeout))),
            Wake::AfterSeconds(seconds) => Some(text(&seconds_from_now_rfc3339(seconds as f64))),
        };
        match next {
            // Progress: a fresh deadline, attempts start again, unparked.
            Some(next) => self.rows(
                concat!(
                    "INSERT INTO sagas (order_id, settled, activity_at, version, projected, attempts, next_attempt_at, card_token)
                     VALUES (?1, ?2, ?3, ?4, ?4, 0, ?5, ",
                    card_token_unless_settled!("?2", "?6"),
                    ")
                     ON CONFLICT (order_id) DO UPDATE SET settled = excluded.settled, activity_at = excluded.activity_at,
                     version = excluded.version, projected = excluded.projected, attempts = 0,
                     next_attempt_at = excluded.next_attempt_at, parked_at = NULL, last_error = NULL,
                     card_token = ",
                    card_token_unless_settled!(
                        "excluded.settled",
                        "coalesce(excluded.card_token, sagas.card_token)"
                    )
                ),
                vec![
                    text(&order.id),
                    settled,
                    text(now),
                    version,
                    next,
                    cause.card_token.map_or(Value::Null, text),
                ],
            ),
            None => self.rows(
                concat!(
                    "UPDATE sagas SET settled = ?2, activity_at = ?3, version = ?4, projected = ?4, card_token = ",
                    card_token_unless_settled!("?2", "card_token"),
                    " WHERE order_id = ?1"
                ),
                vec![text(&order.id), settled, text(now), version],
            ),
        }
        .await
        .map(drop)
    }

    /// The card to charge for an open saga.
    async fn card_token(&self, order_id: &str) -> Result<String, Problem> {
        let rows = self
            .rows(
                "SELECT card_token FROM sagas WHERE order_id = ?",
                vec![text(order_id)],
            )
            .await?;
        rows.first()
            .and_then(|row| row.get::<&str>(0))
            .map(str::to_string)
            .ok_or_else(|| {
                Problem::internal(format!(
                    "order {order_id}: a charge is due but its saga holds no card token"
                ))
            })
    }

    /// Up to `limit` of the user's orders from the read model, newest
    /// first, older than the order `before`: `(order id, view)`, each view
    /// JSON text as the API shows it, served as stored.
    pub async fn views_for_user(
        &self,
        user_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, Problem> {
        let rows = match before {
            None => {
                self.rows(
                    "SELECT order_id, view FROM order_views WHERE user_id = ?
                     ORDER BY order_id DESC LIMIT ?",
                    vec![text(user_id), Value::Integer(i64::from(limit))],
                )
                .await?
            }
            Some(before) => {
                self.rows(
                    "SELECT order_id, view FROM order_views WHERE user_id = ? AND order_id < ?
                     ORDER BY order_id DESC LIMIT ?",
                    vec![
                        text(user_id),
                        text(before),
                        Value::Integer(i64::from(limit)),
                    ],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|row| {
                let get = |i| row.get::<&str>(i).unwrap_or("null").to_string();
                (get(0), get(1))
            })
            .collect())
    }

    /// Publishes messages this caller committed (see
    /// [`Database::publish`]).
    pub async fn publish(
        &self,
        address: &str,
        outbox: &[OutboxMessage],
        now: &str,
    ) -> Result<usize, Problem> {
        self.0.publish(address, outbox, now).await
    }

    /// Publishes what writers left unpublished (see [`Database::relay_due`]).
    pub async fn relay_due(&self, address: &str, now: &str) -> Result<usize, Problem> {
        self.0.relay_due(address, now).await
    }

    /// Deletes (a batch of) what is older than `before`: published
    /// messages, consumed message ids, and idempotency keys (a retry after
    /// the retention period places a new order).
    pub async fn prune(&self, before: &str) -> Result<OrdersPruned, Problem> {
        let messages = self.0.prune(before).await?;
        self.rows(
            "DELETE FROM idempotency_keys WHERE rowid IN
             (SELECT rowid FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
            vec![text(before), Value::Integer(bazaar_database::PRUNE_BATCH)],
        )
        .await?;
        Ok(OrdersPruned {
            messages,
            idempotency_keys: self.0.changes().await,
        })
    }

    /// Sagas past their deadline, most overdue first.
    pub async fn due_sagas(&self, now: &str, limit: u32) -> Result<Vec<DueSaga>, Problem> {
        let rows = self
            .rows(
                "SELECT order_id, version, attempts FROM sagas
                 WHERE settled = 0 AND parked_at IS NULL AND next_attempt_at <= ?
                 ORDER BY next_attempt_at LIMIT ?",
                vec![text(now), Value::Integer(i64::from(limit))],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DueSaga {
                order_id: r.get::<&str>(0).unwrap_or_default().to_string(),
                version: r.get::<i64>(1).unwrap_or_default(),
                attempts: r.get::<i64>(2).unwrap_or_default(),
            })
            .collect())
    }

    /// Re-sends what a due saga still waits for, or parks it after
    /// `max_attempts`. Acts only if the saga is still as `due` saw it
    /// (same version, same attempt count, still due): of two redrives that
    /// picked the same saga, one acts and the other skips.
    pub async fn redrive(
        &self,
        due: &DueSaga,
        now: &str,
        reply_timeout: f64,
        max_attempts: i64,
    ) -> Result<Redriven, Problem> {
        self.0
            .transaction(async || {
                self.redrive_in_transaction(due, now, reply_timeout, max_attempts)
                    .await
            })
            .await
    }

    async fn redrive_in_transaction(
        &self,
        due: &DueSaga,
        now: &str,
        reply_timeout: f64,
        max_attempts: i64,
    ) -> Result<Redriven, Problem> {
        let still_due = self
            .rows(
                "SELECT 1 FROM sagas WHERE order_id = ? AND version = ? AND attempts = ?
                 AND settled = 0 AND parked_at IS NULL AND next_attempt_at <= ?",
                vec![
                    text(&due.order_id),
                    Value::Integer(due.version),
                    Value::Integer(due.attempts),
                    text(now),
                ],
            )
            .await?;
        if still_due.is_empty() {
            return Ok(Redriven::Skipped);
        }
        let Some(order) = self.order(&due.order_id).await? else {
            return Ok(Redriven::Skipped);
        };
        let commands = saga::outstanding(&order);
        if commands.is_empty() {
            self.rows(
                concat!(
                    "UPDATE sagas SET settled = ?1, next_attempt_at = NULL, card_token = ",
                    card_token_unless_settled!("?1", "card_token"),
                    " WHERE order_id = ?2"
                ),
                vec![
                    Value::Integer(i64::from(saga::settled(&order))),
                    text(&order.id),
                ],
            )
            .await?;
            return Ok(Redriven::Skipped);
        }
        let waiting_for = commands
            .iter()
            .map(|c| command_kind(*c))
            .collect::<Vec<_>>()
            .join(", ");
        let attempt = due.attempts + 1;
        if attempt > max_attempts {
            let error = format!("no answer to {waiting_for} after {max_attempts} attempts");
            return self.park(&order.id, now, &error).await;
        }
        let cause = Cause {
            now,
            consumes: None,
            causation_id: Some(format!("redrive:{}:{attempt}", order.id)),
            traceparent: None,
            idempotency: None,
            card_token: None,
            reply_timeout,
        };
        let card_token = if commands.contains(&Command::Charge) {
            match self.card_token(&order.id).await {
                Ok(token) => Some(token),
                // Nothing to charge with: an operator must look, and the
                // other sagas of this run go on.
                Err(problem) => return self.park(&order.id, now, &problem.detail).await,
            }
        } else {
            None
        };
        let outbox: Vec<OutboxMessage> = commands
            .iter()
            .map(|c| command_message(&order, *c, now, &cause, card_token.as_deref()))
            .collect();
        self.0.enqueue_all(&outbox).await?;
        let delay = saga::redrive_delay_seconds(
            reply_timeout,
            u32::try_from(attempt).unwrap_or(u32::MAX),
            random_fraction(),
        );
        self.rows(
            "UPDATE sagas SET attempts = ?, next_attempt_at = ?, activity_at = ?, last_error = ? WHERE order_id = ?",
            vec![
                Value::Integer(attempt),
                text(&seconds_from_now_rfc3339(delay)),
                text(now),
                text(&format!("no answer to {waiting_for} yet (attempt {attempt})")),
                text(&order.id),
            ],
        )
        .await?;
        Ok(Redriven::Resent(outbox))
    }

    /// Blanks the card token of charge commands published within the last
    /// hour (older ones were blanked by earlier sweeps): once the payment
    /// step has the command, the orders database has no reason to keep it.
    /// Redrive runs it; a re-send of a charge takes the token from the
    /// saga's row, not from an old message.
    pub async fn forget_sent_card_tokens(&self, now: &str) -> Result<u64, Problem> {
        let hour_ago = bazaar_service::seconds_ago_rfc3339(3600.0);
        self.rows(
            "UPDATE outbox SET payload = CAST(json_remove(CAST(payload AS TEXT), '$.data.card_token') AS BLOB)
             WHERE published_at IS NOT NULL AND published_at > ? AND published_at <= ?
               AND channel = ? AND instr(payload, CAST('\"card_token\"' AS BLOB)) > 0",
            vec![
                text(&hour_ago),
                text(now),
                text(saga_messages::PAYMENT_COMMANDS),
            ],
        )
        .await?;
        Ok(self.0.changes().await)
    }

    /// Parks a saga with `error`, for an operator to see and restart.
    async fn park(&self, order_id: &str, now: &str, error: &str) -> Result<Redriven, Problem> {
        self.rows(
            "UPDATE sagas SET parked_at = ?, last_error = ? WHERE order_id = ?",
            vec![text(now), text(error), text(order_id)],
        )
        .await?;
        Ok(Redriven::Parked)
    }

    /// The saga numbers an operator watches (docs/operations.md).
    pub async fn gauges(&self, now: &str) -> Result<SagaGauges, Problem> {
        let rows = self
            .rows(
                "SELECT count(*), count(parked_at),
                        coalesce(sum(parked_at IS NULL AND next_attempt_at <= ?), 0)
                 FROM sagas WHERE settled = 0",
                vec![text(now)],
            )
            .await?;
        let get = |i| {
            rows.first()
                .and_then(|r| r.get::<i64>(i))
                .unwrap_or_default()
        };
        Ok(SagaGauges {
            sagas_open: get(0),
            sagas_parked: get(1),
            sagas_overdue: get(2),
            outbox_unpublished: self.0.unpublished().await?,
        })
    }

    /// Parked sagas, a page in order-id order after `after`.
    pub async fn parked(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ParkedSaga>, Problem> {
        let rows = self
            .rows(
                "SELECT order_id, attempts, parked_at, last_error FROM sagas
                 WHERE parked_at IS NOT NULL AND order_id > ? ORDER BY order_id LIMIT ?",
                vec![text(after.unwrap_or("")), Value::Integer(i64::from(limit))],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let get = |i| r.get::<&str>(i).unwrap_or_default().to_string();
                ParkedSaga {
                    order_id: get(0),
                    attempts: r.get::<i64>(1).unwrap_or_default(),
                    parked_at: get(2),
                    last_error: get(3),
                }
            })
            .collect())
    }

    /// Open sagas (not settled, not parked), by order id.
    pub async fn open_sagas(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OpenSaga>, Problem> {
        let rows = self
            .rows(
                "SELECT order_id, attempts, next_attempt_at, last_error FROM sagas
                 WHERE settled = 0 AND parked_at IS NULL AND order_id > ? ORDER BY order_id LIMIT ?",
                vec![text(after.unwrap_or("")), Value::Integer(i64::from(limit))],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| OpenSaga {
                order_id: r.get::<&str>(0).unwrap_or_default().to_string(),
                attempts: r.get::<i64>(1).unwrap_or_default(),
                next_attempt_at: r.get::<&str>(2).map(str::to_string),
                last_error: r.get::<&str>(3).map(str::to_string),
            })
            .collect())
    }

    /// Makes every open, unparked saga that is due later than `now` due
    /// now (after an incident, so sagas backed off for minutes are re-sent
    /// by the next redrive runs, in their usual batches); how many.
    pub async fn expedite(&self, now: &str) -> Result<u64, Problem> {
        self.rows(
            "UPDATE sagas SET next_attempt_at = ?1
             WHERE settled = 0 AND parked_at IS NULL AND next_attempt_at > ?1",
            vec![text(now)],
        )
        .await?;
        Ok(self.0.changes().await)
    }

    /// Unparks a saga and makes it due now; `false` if it was not parked.
    pub async fn restart(&self, order_id: &str, now: &str) -> Result<bool, Problem> {
        self.rows(
            "UPDATE sagas SET parked_at = NULL, attempts = 0, next_attempt_at = ? WHERE order_id = ? AND parked_at IS NOT NULL",
            vec![text(now), text(order_id)],
        )
        .await?;
        Ok(self.0.changes().await == 1)
    }

    /// Rebuilds, from the event store, views that lag their stream (after a
    /// migration, or a rebuild an administrator asked for); a bounded batch.
    pub async fn rebuild_stale_views(&self, limit: u32) -> Result<usize, Problem> {
        let stale = self
            .rows(
                "SELECT order_id FROM sagas WHERE projected < version LIMIT ?",
                vec![Value::Integer(i64::from(limit))],
            )
            .await?;
        let mut rebuilt = 0;
        for row in &stale {
            let order_id = row.get::<&str>(0).unwrap_or_default();
            self.0
                .transaction(async || {
                    if let Some(order) = self.order(order_id).await? {
                        self.write_view(&order).await?;
                        self.rows(
                            "UPDATE sagas SET projected = ? WHERE order_id = ?",
                            vec![Value::Integer(order.version), text(order_id)],
                        )
                        .await?;
                    }
                    Ok::<_, Problem>(())
                })
                .await?;
            rebuilt += 1;
        }
        Ok(rebuilt)
    }

    /// Marks every view for a rebuild from the event store (redrive
    /// rebuilds them in batches); how many were marked.
    pub async fn mark_views_stale(&self) -> Result<u64, Problem> {
        self.rows("UPDATE sagas SET projected = 0", vec![]).await?;
        Ok(self.0.changes().await)
    }
}

fn command_kind(command: Command) -> &'static str {
    match command {
        Command::ReserveStock => saga_messages::RESERVE_STOCK,
        Command::ReleaseStock => saga_messages::RELEASE_STOCK,
        Command::Charge => saga_messages::CHARGE,
        Command::Refund => saga_messages::REFUND,
    }
}

/// The message carrying `command` for `order` to its step; a charge
/// carries `card_token`, the only message that does.
fn command_message(
    order: &Order,
    command: Command,
    now: &str,
    cause: &Cause,
    card_token: Option<&str>,
) -> OutboxMessage {
    let data = match command {
        Command::ReserveStock => serde_json::to_value(ReserveStock {
            items: order
                .items
                .iter()
                .map(|i| StockLine {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                })
                .collect(),
        }),
        Command::Charge => serde_json::to_value(Charge {
            user_id: order.user_id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            card_token: card_token.unwrap_or_default().to_string(),
        }),
        Command::ReleaseStock | Command::Refund => Ok(serde_json::json!({})),
    };
    let channel = match command {
        Command::ReserveStock | Command::ReleaseStock => saga_messages::INVENTORY_COMMANDS,
        Command::Charge | Command::Refund => saga_messages::PAYMENT_COMMANDS,
    };
    OutboxMessage {
        channel: channel.to_string(),
        envelope: Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            kind: command_kind(command).to_string(),
            version: 1,
            order_id: order.id.clone(),
            correlation_id: order.id.clone(),
            causation_id: cause.causation_id.clone(),
            traceparent: cause.traceparent.clone(),
            occurred_at: now.to_string(),
            data: data.expect("commands always serialise"),
        },
    }
}

/// The public message announcing event number `seq` of an order on the
/// order events channel, for whoever subscribes.
fn announcement(
    order_id: &str,
    event: &Event,
    seq: i64,
    now: &str,
    cause: &Cause,
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
            causation_id: cause.causation_id.clone(),
            traceparent: cause.traceparent.clone(),
            occurred_at: now.to_string(),
            data,
        },
    }
}

/// How long the saga waits for a step's answer before redrive re-sends the
/// command (`saga_reply_timeout_seconds`, 5 by default): the first
/// deadline; each re-send doubles it.
pub async fn reply_timeout() -> Result<f64, Problem> {
    let value = bazaar_service::setting("saga_reply_timeout_seconds").await?;
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            eprintln!("variable saga_reply_timeout_seconds: {value:?} is not a positive number");
            Problem::internal("the service is misconfigured")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as it was before migration 6: `order.placed` events,
    /// idempotency fingerprints and open sagas as older releases wrote them.
    fn before_card_tokens_moved() -> rusqlite::Connection {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for migration in &MIGRATIONS[..5] {
            for statement in migration.statements {
                db.execute_batch(statement).unwrap();
            }
        }
        db.execute_batch(
            r#"
            INSERT INTO events VALUES ('open', 1, 'order.placed', 1,
              '{"user_id":"u","items":[],"total_cents":1,"currency":"EUR","card_token":"tok_open"}', 't', 'u');
            INSERT INTO events VALUES ('done', 1, 'order.placed', 1,
              '{"user_id":"u","items":[],"total_cents":1,"currency":"EUR","card_token":"tok_done"}', 't', 'u');
            INSERT INTO events VALUES ('done', 2, 'order.cancelled', 1, '{"reason":"out_of_stock"}', 't', 'u');
            INSERT INTO sagas (order_id, settled, activity_at) VALUES ('open', 0, 't'), ('done', 1, 't');
            INSERT INTO idempotency_keys VALUES ('u', 'k', '{"items":[],"payment":{"card_token":"tok_open"}}', 'open', 't');
            "#,
        )
        .unwrap();
        db
    }

    #[test]
    fn migration_six_moves_card_tokens_to_open_sagas_and_out_of_everything_else() {
        let db = before_card_tokens_moved();
        for statement in MIGRATIONS[5].statements {
            db.execute_batch(statement).unwrap();
        }
        let one =
            |sql: &str| -> Option<String> { db.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(
            one("SELECT card_token FROM sagas WHERE order_id = 'open'").as_deref(),
            Some("tok_open")
        );
        assert_eq!(
            one("SELECT card_token FROM sagas WHERE order_id = 'done'"),
            None
        );
        let leaks: i64 = db
            .query_row(
                "SELECT (SELECT count(*) FROM events WHERE data LIKE '%tok_%')
                      + (SELECT count(*) FROM idempotency_keys WHERE fingerprint LIKE '%tok_%')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(leaks, 0);
        // What remains still reads as the events it was.
        let placed = one("SELECT data FROM events WHERE order_id = 'open' AND seq = 1").unwrap();
        let event = bazaar_order_model::events::Event::parse(
            "order.placed",
            1,
            &serde_json::from_str(&placed).unwrap(),
        );
        let Ok(bazaar_order_model::events::Event::Placed(order)) = event else {
            panic!("{placed}: {event:?}");
        };
        assert_eq!(
            (
                order.user_id.as_str(),
                order.total_cents,
                order.currency.as_str()
            ),
            ("u", 1, "EUR")
        );
        assert!(order.items.is_empty());
        assert_eq!(
            one("SELECT fingerprint FROM idempotency_keys").as_deref(),
            Some(r#"{"items":[],"payment":{}}"#)
        );
    }
}
