//! Spin's `type = "redis"` key-value provider: each key is stored as it is
//! in the server's database, so every process pointed at the same URL —
//! replicas of this host, `spin up`, SpinKube pods — sees the same data.
//!
//! As in Spin, the label is not part of the key: two labels configured with
//! the same URL share their keys. One multiplexed connection per store
//! (`ConnectionManager`, which reconnects after a drop) serves every
//! instance, so a guest's `open` and each operation cost no connection
//! set-up.

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, FromRedisValue};
use anyhow::Context as _;
use std::collections::BTreeSet;
use std::time::Duration;

use crate::bindings::key_value::Error;
use crate::redis_url::redact;

/// How long start-up waits for the server before naming it unreachable,
/// and how long one operation may wait for its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisKv {
    conn: ConnectionManager,
}

impl RedisKv {
    /// Connects now, so an unreachable or misconfigured server stops the
    /// host at start-up rather than failing the first request.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let shown = redact(url);
        let client = ::redis::Client::open(url).with_context(|| format!("invalid URL {shown}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .with_context(|| format!("cannot reach the Redis server at {shown}"))?;
        ::redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("the Redis server at {shown} does not answer PING"))?;
        Ok(RedisKv { conn })
    }

    /// Runs one command. A connection that dropped (a server restart) is
    /// re-made by the manager after the first failure, so one retry rides
    /// over it; every command here is idempotent, so the retry is safe.
    async fn query<R: FromRedisValue>(&self, cmd: Cmd) -> Result<R, Error> {
        let mut conn = self.conn.clone();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                cmd.query_async(&mut conn).await.map_err(other)
            }
            result => result.map_err(other),
        }
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.query(::redis::cmd("GET").arg(key).clone()).await
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.query(::redis::cmd("SET").arg(key).arg(value).clone())
            .await
    }

    pub async fn delete(&self, key: String) -> Result<(), Error> {
        self.query::<i64>(::redis::cmd("DEL").arg(key).clone())
            .await
            .map(drop)
    }

    pub async fn exists(&self, key: String) -> Result<bool, Error> {
        self.query(::redis::cmd("EXISTS").arg(key).clone()).await
    }

    /// Every key, by `SCAN` rather than `KEYS` so a large database is not
    /// blocked while it is listed; sorted, as the SQLite provider lists them.
    pub async fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .clone(),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys.into_iter().collect());
            }
            cursor = next;
        }
    }
}

fn other(e: ::redis::RedisError) -> Error {
    Error::Other(e.to_string())
}
