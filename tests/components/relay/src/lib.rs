//! A Redis-triggered test guest. For each message it counts it under
//! `count:<name>`, stores it under `last:<name>`, and forwards it unchanged to
//! `next_channel` when that variable is set. A payload containing `fail`
//! makes it return an error instead, so tests can check that failures are
//! isolated. It also stores, under `served:<name>`, how many messages the
//! instance that handled this one has handled, so tests can see reuse. A
//! payload `fetch <url>` makes it send a GET there and store what came of it
//! under `fetched:<name>`: `<url> status <code>` or `<url> error <error>`.

use spin_sdk::redis::Connection;
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages this instance has handled.
static SERVED: AtomicU64 = AtomicU64::new(0);
use spin_sdk::{redis_subscriber, variables};

#[redis_subscriber]
async fn on_message(message: Vec<u8>) -> Result<(), String> {
    if message.windows(4).any(|w| w == b"fail") {
        return Err("relay asked to fail".into());
    }
    let name = variable("name").await?;
    let conn = Connection::open(variable("redis_url").await?)
        .await
        .map_err(|e| format!("open: {e:?}"))?;
    conn.incr(format!("count:{name}"))
        .await
        .map_err(|e| format!("incr: {e:?}"))?;
    conn.set(format!("last:{name}"), &message)
        .await
        .map_err(|e| format!("set: {e:?}"))?;
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    conn.set(format!("served:{name}"), served.to_string().as_bytes())
        .await
        .map_err(|e| format!("set: {e:?}"))?;
    if let Some(url) = message.strip_prefix(b"fetch ") {
        let url = String::from_utf8_lossy(url);
        let outcome = format!("{url} {}", fetch(&url).await);
        conn.set(format!("fetched:{name}"), outcome.as_bytes())
            .await
            .map_err(|e| format!("set: {e:?}"))?;
    }
    let next = variable("next_channel").await?;
    if !next.is_empty() {
        conn.publish(next, &message)
            .await
            .map_err(|e| format!("publish: {e:?}"))?;
    }
    Ok(())
}

async fn variable(name: &str) -> Result<String, String> {
    variables::get(name)
        .await
        .map_err(|e| format!("variable {name}: {e:?}"))
}

async fn fetch(url: &str) -> String {
    let request = match spin_sdk::http::Request::get(url).body(spin_sdk::http::EmptyBody::new()) {
        Ok(request) => request,
        Err(e) => return format!("error {e}"),
    };
    match spin_sdk::http::send(request).await {
        Ok(response) => format!("status {}", response.status().as_u16()),
        Err(e) => format!("error {e:?}"),
    }
}
