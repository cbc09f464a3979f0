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
pub async fn setting(name: &str) -> Result<String, Problem> {
    spin_sdk::variables::get(name).await.map_err(|e| {
        eprintln!("variable {name}: {e:?}");
        Problem::internal("the service is misconfigured")
    })
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

/// Now, as RFC 3339 in UTC (`2026-11-26T06:30:00.123Z`).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A service's own SQLite database, migrated when opened. Failures are
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
        migrate(&conn, migrations)
            .await
            .map_err(|e| unavailable(service, e))?;
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

fn unavailable(service: &str, e: spin_sdk::sqlite::Error) -> Problem {
    eprintln!("{service} database error: {e:?}");
    Problem::new(
        bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
        format!("the {service} database is unavailable"),
    )
}
