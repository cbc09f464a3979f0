//! Rate limits: sign-ups and logins per client address (sign-up abuse and
//! password guessing), writes per user. Counted in the gateway's key-value
//! store, so every instance and replica counts together; a limit of 0
//! turns its rule off.

use bazaar_api::Problem;
use bazaar_gateway_resilience::{RateWindow, take};
use bazaar_service::{header, setting, setting_as};
use spin_sdk::http::Request;
use spin_sdk::key_value::Store;

use crate::upstream::now_ms;

const MINUTE_MS: u64 = 60_000;

#[derive(Clone, Copy)]
pub enum Rule {
    /// `POST /api/v1/auth/token`, per client address.
    Login,
    /// `POST /api/v1/users`, per client address.
    SignUp,
    /// Any write, per user.
    Writes,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Login => "login",
            Rule::SignUp => "signup",
            Rule::Writes => "writes",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Rule::Login => "rate_limit_login_per_minute",
            Rule::SignUp => "rate_limit_signup_per_minute",
            Rule::Writes => "rate_limit_writes_per_minute",
        }
    }
}

/// Counts one request by `who` against `rule`; 429 with `Retry-After`
/// once the limit is reached. A store that fails lets the request through
/// (logged): the limits protect the services, they must not stop them.
pub async fn check(rule: Rule, who: &str) -> Result<(), Problem> {
    let limit: u32 = setting_as(rule.variable()).await?;
    if limit == 0 {
        return Ok(());
    }
    let key = format!("rate/{}/{who}", rule.name());
    let outcome = async {
        let store = Store::open_default().await?;
        let current = store
            .get(&key)
            .await?
            .and_then(|bytes| serde_json::from_slice::<RateWindow>(&bytes).ok());
        match take(current, limit, MINUTE_MS, now_ms()) {
            Ok(window) => {
                store
                    .set(&key, serde_json::to_vec(&window).unwrap_or_default())
                    .await?;
                Ok(Ok(()))
            }
            Err(wait_ms) => Ok(Err(wait_ms)),
        }
    };
    match outcome.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(wait_ms)) => {
            let seconds = wait_ms.div_ceil(1000).max(1);
            Err(Problem::too_many_requests(
                format!(
                    "too many requests: at most {limit} per minute ({}); retry after {seconds} s",
                    rule.name()
                ),
                seconds,
            ))
        }
        Err(e) => {
            let e: spin_sdk::key_value::Error = e;
            let line = serde_json::json!({
                "level": "error",
                "msg": "cannot count a rate limit: the request goes through",
                "rule": rule.name(),
                "error": format!("{e:?}"),
            });
            eprintln!("{line}");
            Ok(())
        }
    }
}

/// The client's address: the host's `spin-client-addr` (which a client
/// cannot set), or, behind a proxy that the `client_address_header`
/// variable names, the last address that proxy appended to that header.
pub async fn client_address(req: &Request) -> Result<String, Problem> {
    let via = setting("client_address_header").await?;
    if !via.trim().is_empty()
        && let Some(value) = header(req, via.trim())
        && let Some(last) = value.rsplit(',').map(str::trim).find(|a| !a.is_empty())
    {
        return Ok(last.to_string());
    }
    Ok(header(req, "spin-client-addr")
        .map(|addr| without_port(&addr).to_string())
        .unwrap_or_default())
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`.
pub fn without_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => addr,
    }
}
