//! Rate limits: sign-ups and logins per client address (sign-up abuse and
//! password guessing), writes per user; a limit of 0 turns its rule off.
//!
//! Counted on the application's Redis server (`redis_url`) with `INCR`,
//! one counter per caller, rule and minute that expires two minutes after
//! it was made, so every instance and replica counts together, no two
//! requests can take the same count, and counters do not outlive their use
//! (`bazaar_gateway_resilience::admit` has the rule). Spin's key-value
//! interface has no atomic counter with a time to live; Redis, which the
//! saga already needs, has both.

use bazaar_api::Problem;
use bazaar_gateway_resilience::{admit, window};
use bazaar_service::{header, setting, setting_as};
use spin_sdk::http::Request;
use spin_sdk::redis::{Connection, RedisParameter};

use crate::upstream::now_ms;

const MINUTE_MS: u64 = 60_000;

/// How long a window's counter is kept: through the window after it, in
/// which it still weighs.
const COUNTER_TTL_SECONDS: i64 = 120;

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
/// once the limit is reached. A Redis server that fails lets the request
/// through (logged): the limits protect the services, they must not stop
/// them.
pub async fn check(rule: Rule, who: &str) -> Result<(), Problem> {
    let limit: u32 = setting_as(rule.variable()).await?;
    if limit == 0 {
        return Ok(());
    }
    let (index, elapsed) = window(now_ms(), MINUTE_MS);
    let key = |index: u64| format!("bazaar:rate:{}:{who}:{index}", rule.name());
    let counted = async {
        let redis = Connection::open(setting("redis_url").await.map_err(|p| p.detail)?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let current = key(index);
        let count = redis.incr(&current).await.map_err(|e| format!("{e:?}"))?;
        if count == 1 {
            let ttl = RedisParameter::Int64(COUNTER_TTL_SECONDS);
            redis
                .execute(
                    "EXPIRE",
                    [RedisParameter::Binary(current.into_bytes()), ttl],
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
        }
        let previous = match index.checked_sub(1) {
            Some(before) => redis
                .get(key(before))
                .await
                .map_err(|e| format!("{e:?}"))?
                .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
                .unwrap_or(0),
            None => 0,
        };
        Ok::<_, String>((previous, count.max(0) as u64))
    };
    let (previous, count) = match counted.await {
        Ok(counted) => counted,
        Err(error) => {
            let line = serde_json::json!({
                "level": "error",
                "msg": "cannot count a rate limit: the request goes through",
                "rule": rule.name(),
                "error": error,
            });
            eprintln!("{line}");
            return Ok(());
        }
    };
    admit(previous, count, limit, elapsed, MINUTE_MS).map_err(|wait_ms| {
        let seconds = wait_ms.div_ceil(1000).max(1);
        Problem::too_many_requests(
            format!(
                "too many requests: at most {limit} per minute ({}); retry after {seconds} s",
                rule.name()
            ),
            seconds,
        )
    })
}

/// The client's address: the host's `spin-client-addr` (which a client
/// cannot set), or, behind proxies, from the header the
/// `client_address_header` variable names: the address
/// `client_address_trusted_hops` entries from its end, the one the
/// outermost trusted proxy appended. Entries before it are the client's
/// own word and are never taken; a header with fewer entries than trusted
/// hops did not pass through them all, and its first entry is taken.
pub async fn client_address(req: &Request) -> Result<String, Problem> {
    let via = setting("client_address_header").await?;
    if !via.trim().is_empty()
        && let Some(value) = header(req, via.trim())
    {
        let hops: usize = setting_as("client_address_trusted_hops").await?;
        if let Some(address) = from_trusted_hop(&value, hops) {
            return Ok(address.to_string());
        }
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

/// The entry `hops` from the end of a forwarding header's list (1: the
/// last); the first if there are fewer.
fn from_trusted_hop(value: &str, hops: usize) -> Option<&str> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if entries.is_empty() {
        return None;
    }
    let from_end = hops.max(1).min(entries.len());
    Some(entries[entries.len() - from_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_trusted_hops() {
        let header = "6.6.6.6, 1.2.3.4, 10.0.0.1";
        assert_eq!(from_trusted_hop(header, 1), Some("10.0.0.1"));
        assert_eq!(from_trusted_hop(header, 2), Some("1.2.3.4"));
        assert_eq!(from_trusted_hop(header, 3), Some("6.6.6.6"));
        assert_eq!(from_trusted_hop(header, 9), Some("6.6.6.6"));
        assert_eq!(from_trusted_hop(header, 0), Some("10.0.0.1"));
        assert_eq!(from_trusted_hop(" , ", 1), None);
    }
}
