//! What every Bazaar service component does the same way, on top of
//! `spin-sdk`: reading JSON bodies, reading its settings (Spin variables),
//! knowing who is calling, honouring its caller's deadline, and telling
//! the time in the form its database stores. Its own database, and the
//! messages that leave it, are `bazaar-database`'s. Rules that need no Spin
//! live in `bazaar-api` and `bazaar-auth`, where they are tested natively.

use bazaar_api::{Problem, parse_json};
use serde::de::DeserializeOwned;
use spin_sdk::http::Request;
use spin_sdk::http::body::IncomingBodyExt;

mod deadline;
mod identity;
pub use deadline::{Deadline, TIMEOUT_HEADER, within};
pub use identity::{
    admin, caller, calling_service, identity_token, sign_identity, signing_keys, through_gateway,
    verifying_keys,
};

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
    if let Some(Some(value)) = SETTINGS.with_borrow(|known| known.get(name).cloned()) {
        return Ok(value);
    }
    let value = spin_sdk::variables::get(name).await.map_err(|e| {
        eprintln!("variable {name}: {e:?}");
        Problem::internal("the service is misconfigured")
    })?;
    SETTINGS.with_borrow_mut(|known| known.insert(name.to_string(), Some(value.clone())));
    Ok(value)
}

/// A component variable that only some components declare (`None` where
/// it is not, or cannot be read): kept for the instance's life like
/// [`setting`], absence included.
pub async fn optional_setting(name: &str) -> Option<String> {
    if let Some(known) = SETTINGS.with_borrow(|known| known.get(name).cloned()) {
        return known;
    }
    let value = spin_sdk::variables::get(name).await.ok();
    SETTINGS.with_borrow_mut(|known| known.insert(name.to_string(), value.clone()));
    value
}

/// A component variable that must parse as a `T` (a number, usually); a
/// value that does not is logged with its name and answered as a 500.
pub async fn setting_as<T: std::str::FromStr>(name: &str) -> Result<T, Problem> {
    let value = setting(name).await?;
    value.trim().parse().map_err(|_| {
        eprintln!(
            "variable {name}: expected a {}, got {value:?}",
            std::any::type_name::<T>()
        );
        Problem::internal("the service is misconfigured")
    })
}

thread_local! {
    /// The variables this instance has read (see [`setting`]); `None` for
    /// an optional one it found absent.
    static SETTINGS: std::cell::RefCell<std::collections::BTreeMap<String, Option<String>>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
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
    seconds_from_now_rfc3339(-seconds)
}

/// `seconds` from now, kept within the years a timestamp can name: a
/// setting or parameter of a billion seconds means "never", not a trap.
pub fn seconds_from_now_rfc3339(seconds: f64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let at = time::Duration::checked_seconds_f64(seconds)
        .and_then(|offset| now.checked_add(offset))
        .unwrap_or(if seconds > 0.0 {
            time::macros::datetime!(9999-12-31 23:59:59.999999 UTC)
        } else {
            time::macros::datetime!(0000-01-01 0:00 UTC)
        });
    rfc3339(at)
}

/// A uniformly random number in 0..1, for jitter.
pub fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    // The host's random source cannot fail; no jitter is a safe fallback.
    getrandom::fill(&mut bytes).map_or(0.5, |()| {
        f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
    })
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(TIMESTAMP).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leases and deadlines are compared as text in SQL (`claimed_until <
    /// ?`): the format must have a fixed width, so that text order is time
    /// order, whole seconds included.
    #[test]
    fn timestamps_sort_as_text_in_time_order() {
        let base = time::OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        let instants = [
            base,
            base + time::Duration::microseconds(1),
            base + time::Duration::milliseconds(999),
            base + time::Duration::seconds(1),
            base + time::Duration::seconds(10),
            base + time::Duration::days(400),
        ];
        let texts: Vec<String> = instants.iter().map(|at| rfc3339(*at)).collect();
        assert_eq!(texts[0], "2026-11-18T11:06:40.000000Z");
        assert!(texts.iter().all(|t| t.len() == texts[0].len()), "{texts:?}");
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
    }

    #[test]
    fn now_and_offsets_agree() {
        let parse = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let elapsed =
            (time::OffsetDateTime::now_utc() - parse(&seconds_ago_rfc3339(30.0))).as_seconds_f64();
        assert!((29.0..31.0).contains(&elapsed), "{elapsed}");
        assert!(seconds_from_now_rfc3339(5.0) > now_rfc3339());
        // Offsets past what a timestamp can name saturate, in text order too.
        assert_eq!(
            seconds_from_now_rfc3339(1e12),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(seconds_ago_rfc3339(1e12), "0000-01-01T00:00:00.000000Z");
        assert_eq!(
            seconds_ago_rfc3339(f64::INFINITY),
            "0000-01-01T00:00:00.000000Z"
        );
        let r = random_fraction();
        assert!((0.0..1.0).contains(&r), "{r}");
    }
}
