//! `spin:redis/redis@3.0.0`: Redis commands from guests, to a real server or
//! to the embedded broker.
//!
//! A component may open only addresses its `allowed_outbound_hosts` covers
//! (`redis://host:port`). As in Spin, each `open` gets a connection of its
//! own, so what a guest does to it (`SELECT` a database, a blocking `BLPOP`)
//! reaches no other guest. The connections are pooled per component and
//! address: a guest's `open` takes an idle one (no round trip), and one that
//! a command may have changed (`SELECT`, `MULTI`, `CLIENT`...) is closed
//! rather than pooled. Commands that would turn the connection into
//! something else (`SUBSCRIBE`, `MONITOR`, `QUIT`...) are refused.

use ::redis::Value;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use wasmtime::component::{Accessor, HasData, Resource, ResourceTable};

use crate::app::allowed_hosts::AllowList;
use crate::bindings::redis::{self as spin_redis, Error, RedisParameter, RedisResult};
use crate::redis_broker::{CommandError, EmbeddedBroker, is_embedded};
use crate::redis_url::redact;
use crate::telemetry::traces::{self, Span};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Idle connections kept per component and address; more are made when
/// more guests have one open at once, and closed when they come back.
const MAX_IDLE: usize = 16;

/// Idle connections kept in all, whatever the number of addresses (a guest
/// may spell one server many ways: `/0`, `?x=1`...).
const MAX_IDLE_IN_ALL: usize = 256;

/// Which pool a connection belongs to: component and address.
type PoolKey = (Arc<str>, String);

/// The application's Redis connections.
#[derive(Default)]
pub struct RedisClients {
    embedded: Arc<EmbeddedBroker>,
    idle: Mutex<IdleConnections>,
}

/// The idle connections of every pool, and how many there are in all.
#[derive(Default)]
struct IdleConnections {
    pools: HashMap<PoolKey, Vec<ConnectionManager>>,
    count: usize,
}

/// One open connection: to a server, or to the embedded broker.
#[derive(Clone)]
pub enum RedisConnection {
    Server(Arc<Lease>),
    Embedded(Arc<EmbeddedBroker>),
}

/// A server connection one guest `open` holds; back to its pool when the
/// guest drops it, unless a command may have changed it.
pub struct Lease {
    conn: ConnectionManager,
    pool: PoolKey,
    clients: Weak<RedisClients>,
    /// A command may have changed the connection, or failed on it.
    changed: AtomicBool,
    /// Commands sent and not answered yet: one whose guest stopped waiting
    /// (a deadline, a dropped future) never comes back, and the server may
    /// still be busy with it.
    in_flight: AtomicUsize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.changed.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && let Some(clients) = self.clients.upgrade()
        {
            let mut idle = clients.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.count >= MAX_IDLE_IN_ALL {
                return;
            }
            let pool = idle.pools.entry(self.pool.clone()).or_default();
            if pool.len() < MAX_IDLE {
                pool.push(self.conn.clone());
                idle.count += 1;
            }
        }
    }
}

impl RedisClients {
    pub fn embedded(&self) -> &Arc<EmbeddedBroker> {
        &self.embedded
    }

    /// A connection to `address` for one `open` of `component`: an idle one
    /// from its pool, or a new one.
    pub async fn connect(
        self: &Arc<Self>,
        component: &Arc<str>,
        address: &str,
    ) -> anyhow::Result<RedisConnection> {
        if is_embedded(address) {
            return Ok(RedisConnection::Embedded(Arc::clone(&self.embedded)));
        }
        let pool = (Arc::clone(component), address.to_string());
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let conn = idle.pools.get_mut(&pool).and_then(Vec::pop);
            if idle.pools.get(&pool).is_some_and(Vec::is_empty) {
                idle.pools.remove(&pool);
            }
            if conn.is_some() {
                idle.count -= 1;
            }
            conn
        };
        let conn = match idle {
            Some(conn) => conn,
            None => {
                // No client-side reply timeout: a guest's `BLPOP key 30`
                // may rightly wait; the request's deadline bounds it.
                let config = ConnectionManagerConfig::new().set_response_timeout(None);
                ConnectionManager::new_with_config(::redis::Client::open(address)?, config).await?
            }
        };
        Ok(RedisConnection::Server(Arc::new(Lease {
            conn,
            pool,
            clients: Arc::downgrade(self),
            changed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })))
    }
}

/// Commands that would make the connection stop answering commands (a
/// subscriber, a monitor, a closed or reset connection): refused.
const REFUSED: &[&str] = &[
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "MONITOR",
    "QUIT",
    "RESET",
    "HELLO",
    "SYNC",
    "PSYNC",
];

/// Commands that change the connection's state: allowed, but the
/// connection is then closed instead of pooled.
const CHANGES_THE_CONNECTION: &[&str] = &[
    "SELECT",
    "MULTI",
    "WATCH",
    "CLIENT",
    "AUTH",
    "READONLY",
    "READWRITE",
    "ASKING",
];

impl RedisConnection {
    /// Runs one command; both backends answer with Redis's reply types.
    pub async fn query(&self, command: &str, args: Vec<Vec<u8>>) -> Result<Value, Error> {
        match self {
            RedisConnection::Embedded(broker) => broker
                .execute(command, args)
                .map_err(|CommandError(msg)| Error::Other(msg)),
            RedisConnection::Server(lease) => {
                let name = command.to_ascii_uppercase();
                if REFUSED.contains(&name.as_str()) {
                    return Err(Error::Other(format!(
                        "{name} is not available: it would take over the connection"
                    )));
                }
                if CHANGES_THE_CONNECTION.contains(&name.as_str()) {
                    lease.changed.store(true, Ordering::Relaxed);
                }
                lease.in_flight.fetch_add(1, Ordering::Relaxed);
                let mut conn = lease.conn.clone();
                let mut cmd = ::redis::cmd(command);
                for arg in args {
                    cmd.arg(arg);
                }
                // A pooled connection may predate a server restart; the
                // manager reconnects after the first failure, so one retry
                // rides over it. (A command that reached the server just
                // before the drop may thus apply twice: at-least-once.)
                let result = match cmd.query_async::<Value>(&mut conn).await {
                    Err(e) if e.is_connection_dropped() => {
                        cmd.query_async::<Value>(&mut conn).await
                    }
                    other => other,
                };
                if result.is_err() {
                    lease.changed.store(true, Ordering::Relaxed);
                }
                lease.in_flight.fetch_sub(1, Ordering::Relaxed);
                // As in Spin, a server's refusal (`WRONGTYPE` included) is
                // `other`: `type-error` is for replies of the wrong shape.
                result.map_err(|e| Error::Other(e.to_string()))
            }
        }
    }
}

/// What one component may reach.
pub struct RedisGrants {
    /// The component's id: its connections are pooled apart.
    pub component: Arc<str>,
    pub clients: Arc<RedisClients>,
    pub allowed: Arc<AllowList>,
}

pub struct ConnectionHandle(RedisConnection);

pub struct Redis;

impl HasData for Redis {
    type Data<'a> = RedisView<'a>;
}

pub struct RedisView<'a> {
    pub grants: &'a RedisGrants,
    pub table: &'a mut ResourceTable,
    pub trace: Option<&'a opentelemetry::Context>,
}

fn connection<T>(
    accessor: &Accessor<T, Redis>,
    r: &Resource<ConnectionHandle>,
) -> wasmtime::Result<RedisConnection> {
    accessor.with(|mut access| Ok(access.get().table.get(r)?.0.clone()))
}

fn bytes(value: Value) -> Result<Option<Vec<u8>>, Error> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        _ => Err(Error::TypeError),
    }
}

fn int(value: Value) -> Result<i64, Error> {
    match value {
        Value::Int(i) => Ok(i),
        _ => Err(Error::TypeError),
    }
}

fn count(value: Value) -> Result<u32, Error> {
    u32::try_from(int(value)?).map_err(|_| Error::TypeError)
}

fn strings(values: Vec<String>) -> Vec<Vec<u8>> {
    values.into_iter().map(String::into_bytes).collect()
}

/// `key member…` for the set commands.
fn key_and(key: String, members: Vec<String>) -> Vec<Vec<u8>> {
    let mut args = vec![key.into_bytes()];
    args.extend(strings(members));
    args
}

/// Flattens a reply into `execute`'s list, as Spin does.
fn flatten(value: Value, out: &mut Vec<RedisResult>) {
    match value {
        Value::Nil => out.push(RedisResult::Nil),
        Value::Int(i) => out.push(RedisResult::Int64(i)),
        Value::BulkString(b) => out.push(RedisResult::Binary(b)),
        Value::SimpleString(s) => out.push(RedisResult::Status(s)),
        Value::Okay => out.push(RedisResult::Status("OK".into())),
        Value::Array(items) | Value::Set(items) => items.into_iter().for_each(|v| flatten(v, out)),
        Value::Double(d) => out.push(RedisResult::Binary(d.to_string().into_bytes())),
        Value::Boolean(b) => out.push(RedisResult::Int64(i64::from(b))),
        Value::VerbatimString { text, .. } => out.push(RedisResult::Binary(text.into_bytes())),
        Value::BigNumber(n) => out.push(RedisResult::Binary(n)),
        Value::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        Value::Attribute { data, .. } => flatten(*data, out),
        Value::Push { data, .. } => data.into_iter().for_each(|v| flatten(v, out)),
        Value::ServerError(e) => out.push(RedisResult::Status(format!("{e:?}"))),
        _ => out.push(RedisResult::Nil),
    }
}

impl spin_redis::Host for RedisView<'_> {}

impl spin_redis::HostConnection for RedisView<'_> {
    fn drop(&mut self, conn: Resource<ConnectionHandle>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

impl<T> spin_redis::HostConnectionWithStore<T> for Redis {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<ConnectionHandle>, Error>> {
        let Ok(url) = url::Url::parse(&address) else {
            return Ok(Err(Error::InvalidAddress));
        };
        let (clients, allowed, component) = accessor.with(|mut access| {
            let grants = access.get().grants;
            (
                Arc::clone(&grants.clients),
                Arc::clone(&grants.allowed),
                Arc::clone(&grants.component),
            )
        });
        if !allowed.allows(url.scheme(), url.host_str().unwrap_or_default(), url.port()) {
            tracing::warn!(
                address = %redact(&address),
                "outbound Redis denied: add the address to the component's allowed_outbound_hosts"
            );
            return Ok(Err(Error::InvalidAddress));
        }
        let conn = match clients.connect(&component, &address).await {
            Ok(conn) => conn,
            Err(e) => {
                return Ok(Err(Error::Other(format!(
                    "cannot connect to {}: {e}",
                    redact(&address)
                ))));
            }
        };
        accessor.with(|mut access| Ok(Ok(access.get().table.push(ConnectionHandle(conn))?)))
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = connection(accessor, &conn)?;
        let trace = accessor.with(|mut access| access.get().trace.cloned());
        let span = Span::child(trace.as_ref(), SpanKind::Client, || {
            (
                format!("PUBLISH {channel}"),
                vec![
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("messaging.system", "redis"),
                    KeyValue::new("messaging.destination.name", channel.clone()),
                ],
            )
        });
        let result = conn
            .query("PUBLISH", vec![channel.into_bytes(), payload])
            .await
            .map(drop);
        traces::finish(span, &result);
        Ok(result)
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("GET", vec![key.into_bytes()])
            .await
            .and_then(bytes))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("SET", vec![key.into_bytes(), value])
            .await
            .map(drop))
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("INCR", vec![key.into_bytes()])
            .await
            .and_then(int))
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn.query("DEL", strings(keys)).await.and_then(count))
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("SADD", key_and(key, values))
            .await
            .and_then(count))
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("SMEMBERS", vec![key.into_bytes()])
            .await
            .and_then(|v| match v {
                Value::Array(items) | Value::Set(items) => items
                    .into_iter()
                    .map(|item| match bytes(item)? {
                        Some(b) => String::from_utf8(b).map_err(|_| Error::TypeError),
                        None => Err(Error::TypeError),
                    })
                    .collect(),
                _ => Err(Error::TypeError),
            }))
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let conn = connection(accessor, &conn)?;
        Ok(conn
            .query("SREM", key_and(key, values))
            .await
            .and_then(count))
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        conn: Resource<ConnectionHandle>,
        command: String,
        arguments: Vec<RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<RedisResult>, Error>> {
        let conn = connection(accessor, &conn)?;
        let args = arguments
            .into_iter()
            .map(|p| match p {
                RedisParameter::Int64(i) => i.to_string().into_bytes(),
                RedisParameter::Binary(b) => b,
            })
            .collect();
        Ok(conn.query(&command, args).await.map(|value| {
            let mut out = Vec::new();
            flatten(value, &mut out);
            out
        }))
    }
}
