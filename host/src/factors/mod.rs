//! The state of one guest instance (`Store<InstanceState>`), and the linker
//! that gives guests their imports.
//!
//! Each capability keeps its grants in a shared, read-only [`Capabilities`]
//! and borrows the instance's resource table through a small view type, the
//! same shape `wasmtime-wasi` and `wasmtime-wasi-http` use.

pub mod key_value;
pub mod outbound_http;
pub mod outbound_redis;
pub mod sqlite;
pub mod variables;
pub mod wasi;

use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::Engine;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings;
use crate::component::memory_limit::MemoryLimit;
use crate::factors::key_value::{KeyValue, KvGrants, KvView};
use crate::factors::outbound_http::{HttpGrants, OutboundHttp};
use crate::factors::outbound_redis::{Redis, RedisGrants, RedisView};
use crate::factors::sqlite::{Sqlite, SqliteGrants, SqliteView};
use crate::factors::variables::{ComponentVariables, Variables};

/// What one component was granted in the manifest, shared by its instances.
pub struct Capabilities {
    pub http: HttpGrants,
    pub key_value: KvGrants,
    pub sqlite: SqliteGrants,
    pub redis: RedisGrants,
    pub variables: Arc<ComponentVariables>,
}

pub struct InstanceState {
    /// The span of the request or message the instance is serving, when
    /// traced (one at a time then), for the spans of its host calls.
    pub trace: Option<opentelemetry::Context>,
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub outbound: OutboundHttp,
    pub capabilities: Arc<Capabilities>,
    pub limits: MemoryLimit,
    pub deadlines: Deadlines,
    /// Key-value stores and SQLite connections the guest holds open.
    pub open: OpenHandles,
}

/// How many store handles an instance holds, each kind capped at
/// [`MAX_OPEN_HANDLES`] as Spin caps them: a guest that opens in a loop
/// without closing gets an error, not a host that grows without bound.
#[derive(Default)]
pub struct OpenHandles {
    pub key_value: usize,
    pub sqlite: usize,
}

/// Spin's capacity of each instance's store and connection tables.
pub const MAX_OPEN_HANDLES: usize = 256;

/// The deadlines of the requests (or messages) an instance is serving. Its
/// host calls read the earliest: once that has passed, the instance is
/// about to be discarded and the call serves no one, so a statement then
/// stops at once instead of holding a database's writer (a guest blocked
/// in a host call cannot be discarded until the call returns).
#[derive(Clone, Default)]
pub struct Deadlines(Arc<Mutex<Vec<(u64, Instant)>>>);

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts request `id`, due within `timeout`, as served until the
    /// returned guard is dropped.
    pub fn start(&self, id: u64, timeout: std::time::Duration) -> Serving {
        let deadline = crate::component::deadline_after(timeout);
        self.lock().push((id, deadline));
        Serving {
            deadlines: self.clone(),
            id,
            deadline,
        }
    }

    /// The earliest deadline of the requests being served.
    pub fn earliest(&self) -> Option<Instant> {
        self.lock().iter().map(|(_, deadline)| *deadline).min()
    }
}

/// A request an instance is serving ([`Deadlines::start`]).
pub struct Serving {
    deadlines: Deadlines,
    id: u64,
    deadline: Instant,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // A request that ran past its deadline stays counted: its instance
        // is being discarded, and its host calls must know.
        if Instant::now() < self.deadline {
            self.deadlines.lock().retain(|(id, _)| *id != self.id);
        }
    }
}

impl InstanceState {
    /// Starts serving a request or message traced by `span` (or untraced).
    pub fn enter(&mut self, span: Option<opentelemetry::Context>) {
        self.outbound.trace.clone_from(&span);
        self.trace = span;
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

fn kv_view(state: &mut InstanceState) -> KvView<'_> {
    KvView {
        grants: &state.capabilities.key_value,
        table: &mut state.table,
        trace: state.trace.as_ref(),
        open: &mut state.open.key_value,
    }
}

fn sqlite_view(state: &mut InstanceState) -> SqliteView<'_> {
    SqliteView {
        grants: &state.capabilities.sqlite,
        table: &mut state.table,
        trace: state.trace.as_ref(),
        deadline: state.deadlines.earliest(),
        open: &mut state.open.sqlite,
    }
}

fn redis_view(state: &mut InstanceState) -> RedisView<'_> {
    RedisView {
        grants: &state.capabilities.redis,
        table: &mut state.table,
        trace: state.trace.as_ref(),
    }
}

fn variables_view(state: &mut InstanceState) -> &ComponentVariables {
    &state.capabilities.variables
}

/// Every import a Spin component may use. Rust's std in a `wasm32-wasip2`
/// guest imports the WASI 0.2 command interfaces, and `spin-sdk` 7 the WASI
/// 0.3 ones, so both generations are linked.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    bindings::key_value::add_to_linker::<_, KeyValue>(&mut linker, kv_view)?;
    bindings::sqlite::add_to_linker::<_, Sqlite>(&mut linker, sqlite_view)?;
    bindings::variables::add_to_linker::<_, Variables>(&mut linker, variables_view)?;
    bindings::redis::add_to_linker::<_, Redis>(&mut linker, redis_view)?;
    Ok(linker)
}
