//! What every Bazaar service component does the same way, on top of
//! `spin-sdk`: reading JSON bodies, reading its settings (Spin variables),
//! and knowing who is calling. Rules that need no Spin live in `bazaar-api`
//! and `bazaar-auth`, where they are tested natively.

use bazaar_api::{Problem, parse_json};
use bazaar_auth::{IDENTITY_AUDIENCE, IDENTITY_HEADER, Identity};
use serde::de::DeserializeOwned;
use spin_sdk::http::Request;
use spin_sdk::http::body::IncomingBodyExt;

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

/// A SQLite failure: logged with its cause, answered as 503.
pub fn storage_error(service: &str) -> impl Fn(spin_sdk::sqlite::Error) -> Problem + '_ {
    move |e| {
        eprintln!("{service} database error: {e:?}");
        Problem::new(
            bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
            format!("the {service} database is unavailable"),
        )
    }
}
