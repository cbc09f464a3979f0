//! What every Bazaar service component does the same way, on top of
//! `spin-sdk`: reading JSON bodies, reading its settings (Spin variables),
//! knowing who is calling, and using its own database. Rules that need no Spin live in `bazaar-api`
//! and `bazaar-auth`, where they are tested natively.

use bazaar_api::{Problem, parse_json};
use bazaar_auth::{IDENTITY_AUDIENCE, IDENTITY_HEADER, Identity};
use serde::de::DeserializeOwned;
use spin_sdk::http::Request;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::sqlite::{Connection, RowResult, Value};

use bazaar_envelope::Envelope;
pub use bazaar_migrations::{Migration, migrate};

/// Reads and parses the request's JSON body.
pub async fn json_body<T: DeserializeOwned>(req: Request) -> Result<T, Problem> {
    let content_type = header(&req, "content-type");
    let bytes = req
        .into_body()
        .bytes()
        .await
        .map_err(|e| Problem::bad_request(format!("cannot read the request body: {e:?}")))?;
    parse_json(content_type.as_deref(), &bytes)
}

pub fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A component variable. A missing one is the operator's mistake: logged
/// in full, answered as a 500 that leaks nothing.
///
/// Values are kept for the instance's life (at most a few hundred requests
/// on Spin and bazaar), so a request pays for a host call only the first
/// time an instance reads a name; a changed value reaches the next instance.
pub async fn setting(name: &str) -> Result<String, Problem> {
    if let Some(value) = SETTINGS.with_borrow(|known| known.get(name).cloned()) {
        return Ok(value);
    }
    let value = spin_sdk::variables::get(name).await.map_err(|e| {
        eprintln!("variable {name}: {e:?}");
        Problem::internal("the service is misconfigured")
    })?;
    SETTINGS.with_borrow_mut(|known| known.insert(name.to_string(), value.clone()));
    Ok(value)
}

thread_local! {
    /// The variables this instance has read (see [`setting`]).
    static SETTINGS: std::cell::RefCell<std::collections::BTreeMap<String, String>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// The caller, as the gateway vouches for it in the identity header.
pub async fn caller(req: &Request) -> Result<Identity, Problem> {
    let token = header(req, IDENTITY_HEADER).ok_or_else(|| {
        Problem::unauthorized("authentication required: send a Bearer access token")
    })?;
    bazaar_auth::verify(
        &setting("identity_token_secret").await?,
        IDENTITY_AUDIENCE,
        &token,
    )
    .map_err(|e| Problem::unauthorized(format!("the caller's identity could not be verified: {e}")))
}

/// The caller if the request carries an identity; `None` if anonymous.
pub async fn optional_caller(req: &Request) -> Result<Option<Identity>, Problem> {
    match header(req, IDENTITY_HEADER) {
        None => Ok(None),
        Some(_) => caller(req).await.map(Some),
    }
}

/// A saga step (inventory, payments): how it applies one command to its
/// service's store.
#[allow(async_fn_in_trait)] // guests are single-threaded: no Send bound wanted
pub trait Step {
    fn db(&self) -> &Database;

    /// Applies `command` inside the open transaction; the reply's type and
    /// data.
    async fn apply(
        &self,
        command: &Envelope,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), String>;
}

/// Runs one command through a step: the effect, its reply and the consumed
/// message id commit in one transaction (a duplicate changes nothing), then
/// the outbox is published.
pub async fn run_step(step: &impl Step, message: &[u8]) -> Result<(), String> {
    let detail = |p: Problem| p.detail;
    let command = Envelope::from_bytes(message)?;
    injected_fault().await.map_err(detail)?;
    let now = now_rfc3339();
    let db = step.db();
    db.begin().await.map_err(detail)?;
    let outcome = async {
        if !db.consume(&command.id, &now).await.map_err(detail)? {
            return Ok(None);
        }
        let (kind, data) = step.apply(&command, &now).await?;
        let reply = command.follow_up(uuid::Uuid::now_v7().to_string(), kind, now.clone(), data);
        db.enqueue(bazaar_envelope::saga::SAGA_REPLIES, &reply)
            .await
            .map_err(detail)?;
        Ok::<_, String>(Some(kind))
    }
    .await;
    db.end(outcome.is_ok()).await.map_err(detail)?;
    log_handled(&command, outcome?);
    let address = setting("redis_url").await.map_err(detail)?;
    db.relay_outbox(&address, &now).await.map_err(detail)?;
    Ok(())
}

/// One JSON log line for a handled saga command (`reply` is `None` for a
/// duplicate that was dropped).
fn log_handled(command: &Envelope, reply: Option<&str>) {
    let line = serde_json::json!({
        "level": "info",
        "msg": if reply.is_some() { "command handled" } else { "duplicate dropped" },
        "message_id": command.id,
        "type": command.kind,
        "order_id": command.order_id,
        "reply": reply,
        "traceparent": command.traceparent,
    });
    println!("{line}");
}

/// Fault injection for tests: fails the current message with the
/// probability in the `fault_percent` variable (0, the default, never), as
/// if the function had crashed before doing anything. Redrive must make up
/// for it.
async fn injected_fault() -> Result<(), Problem> {
    let percent: u32 = setting("fault_percent").await?.parse().unwrap_or(0);
    let mut byte = [0u8; 2];
    getrandom::fill(&mut byte).map_err(|e| Problem::internal(e.to_string()))?;
    if u32::from(u16::from_le_bytes(byte)) % 100 < percent {
        return Err(Problem::internal("injected fault (fault_percent)"));
    }
    Ok(())
}

/// Timestamps are RFC 3339 in UTC with a fixed six-digit fraction, so that
/// they also sort correctly as text (SQL comparisons rely on it).
const TIMESTAMP: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// Now (`2026-11-26T06:30:00.123456Z`).
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `seconds` ago.
pub fn seconds_ago_rfc3339(seconds: f64) -> String {
    rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds_f64(seconds))
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(TIMESTAMP).unwrap_or_default()
}

/// Seconds elapsed since an RFC 3339 timestamp (`None` if unparsable).
pub fn seconds_since(timestamp: &str) -> Option<f64> {
    let at = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time::OffsetDateTime::now_utc() - at).as_seconds_f64())
}

thread_local! {
    /// Databases this instance has migrated: migrations run once per
    /// instance (an instance serves many requests), not on every `open`.
    /// Only a cache: a new instance checks the schema again.
    static MIGRATED: std::cell::RefCell<std::collections::BTreeSet<String>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// A service's own SQLite database, migrated when first opened. Failures are
/// logged with their cause and answered as 503.
pub struct Database {
    conn: Connection,
    service: &'static str,
}

impl Database {
    pub async fn open(
        label: &str,
        service: &'static str,
        migrations: &[Migration],
    ) -> Result<Database, Problem> {
        let conn = Connection::open(label)
            .await
            .map_err(|e| unavailable(service, e))?;
        if !MIGRATED.with_borrow(|done| done.contains(label)) {
            migrate(&conn, migrations)
                .await
                .map_err(|e| unavailable(service, e))?;
            MIGRATED.with_borrow_mut(|done| done.insert(label.to_string()));
        }
        Ok(Database { conn, service })
    }

    /// Runs one statement and collects its rows.
    pub async fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<RowResult>, Problem> {
        let failed = |e| unavailable(self.service, e);
        self.conn
            .execute(sql, params)
            .await
            .map_err(failed)?
            .collect()
            .await
            .map_err(failed)
    }

    /// Rows changed by the last statement.
    pub async fn changes(&self) -> u64 {
        self.conn.changes().await
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.rows("SELECT 1", vec![]).await.map(drop)
    }
}

/// The tables of the transactional outbox and of idempotent consumption,
/// for a service's migrations.
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

/// Messaging on top of a service's database: a state change and the
/// messages it emits commit together; a message id is consumed once.
impl Database {
    pub async fn begin(&self) -> Result<(), Problem> {
        self.rows("BEGIN IMMEDIATE", vec![]).await.map(drop)
    }

    /// Commits if `ok`, else rolls back.
    pub async fn end(&self, ok: bool) -> Result<(), Problem> {
        self.rows(if ok { "COMMIT" } else { "ROLLBACK" }, vec![])
            .await
            .map(drop)
    }

    /// Records `message_id` as consumed; `false` if it already was (a
    /// duplicate delivery, to be dropped).
    pub async fn consume(&self, message_id: &str, now: &str) -> Result<bool, Problem> {
        self.rows(
            "INSERT INTO processed_messages (id, processed_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            vec![Value::Text(message_id.to_string()), Value::Text(now.to_string())],
        )
        .await?;
        Ok(self.changes().await == 1)
    }

    /// Queues `message` for `channel`, inside the caller's transaction.
    pub async fn enqueue(&self, channel: &str, message: &Envelope) -> Result<(), Problem> {
        self.rows(
            "INSERT INTO outbox (id, channel, payload, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            vec![
                Value::Text(message.id.clone()),
                Value::Text(channel.to_string()),
                Value::Blob(message.to_bytes()),
                Value::Text(message.occurred_at.clone()),
            ],
        )
        .await
        .map(drop)
    }

    /// Publishes what the outbox holds, oldest first, to the Redis server at
    /// `address`. Each message is claimed before it is sent, so handlers
    /// relaying at the same time do not all send it; one that fails to send
    /// is released for the next relay. (A crash between claim and send loses
    /// that publication: redrive re-sends what the saga still waits for.)
    pub async fn relay_outbox(&self, address: &str, now: &str) -> Result<usize, Problem> {
        let pending = self
            .rows(
                "SELECT id, channel, payload FROM outbox WHERE published_at IS NULL ORDER BY created_at, id LIMIT 200",
                vec![],
            )
            .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let redis = spin_sdk::redis::Connection::open(address)
            .await
            .map_err(|e| {
                Problem::new(
                    bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot reach Redis: {e:?}"),
                )
            })?;
        let mut published = 0;
        for row in &pending {
            let id = row.get::<&str>(0).unwrap_or_default();
            let channel = row.get::<&str>(1).unwrap_or_default();
            let payload = row.get::<&[u8]>(2).unwrap_or_default();
            self.rows(
                "UPDATE outbox SET published_at = ? WHERE id = ? AND published_at IS NULL",
                vec![Value::Text(now.to_string()), Value::Text(id.to_string())],
            )
            .await?;
            if self.changes().await != 1 {
                continue; // another relay has it
            }
            if let Err(e) = redis.publish(channel, payload).await {
                self.rows(
                    "UPDATE outbox SET published_at = NULL WHERE id = ?",
                    vec![Value::Text(id.to_string())],
                )
                .await?;
                eprintln!(
                    "{}",
                    serde_json::json!({ "level": "warn", "msg": "outbox publish failed", "message_id": id, "error": format!("{e:?}") })
                );
                break;
            }
            published += 1;
        }
        Ok(published)
    }
}

fn unavailable(service: &str, e: spin_sdk::sqlite::Error) -> Problem {
    eprintln!("{service} database error: {e:?}");
    Problem::new(
        bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
        format!("the {service} database is unavailable"),
    )
}
