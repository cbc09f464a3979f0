//! One component at run time: its grants, environment and logs, and how to
//! make a fresh `Store` for one of its instances. Each trigger adds its own
//! pre-linked code and its own instance policy (`triggers::http::pool`,
//! `triggers::redis`).

pub mod memory_limit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::component::memory_limit::MemoryLimit;
use crate::factors::outbound_http::OutboundHttp;
use crate::factors::wasi::{self, ComponentLogs};
use crate::factors::{Capabilities, InstanceState};

/// Instance reuse and resource limits, the same for every component.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_requests_per_instance: usize,
    pub max_concurrent_per_instance: usize,
    pub idle_instance_timeout: Duration,
    pub request_timeout: Duration,
    pub memory_bytes: usize,
}

pub struct ComponentRuntime {
    pub id: Arc<str>,
    pub capabilities: Arc<Capabilities>,
    pub environment: Vec<(String, String)>,
    pub logs: ComponentLogs,
    pub limits: Limits,
    next_instance: AtomicU64,
}

impl ComponentRuntime {
    pub fn new(
        id: &str,
        capabilities: Arc<Capabilities>,
        environment: Vec<(String, String)>,
        logs: ComponentLogs,
        limits: Limits,
    ) -> Self {
        ComponentRuntime {
            id: id.into(),
            capabilities,
            environment,
            logs,
            limits,
            next_instance: AtomicU64::new(0),
        }
    }

    /// A number for the next instance, for logs.
    pub fn next_instance(&self) -> u64 {
        self.next_instance.fetch_add(1, Ordering::Relaxed)
    }

    /// A store for one instance; `serves_http` when the HTTP trigger makes
    /// it (chaining and self requests are for those alone, as in Spin).
    pub fn new_store(&self, engine: &Engine, serves_http: bool) -> Store<InstanceState> {
        let state = InstanceState {
            trace: None,
            table: ResourceTable::new(),
            wasi: wasi::wasi_ctx(&self.logs, &self.environment),
            http: WasiHttpCtx::new(),
            outbound: OutboundHttp {
                component: Arc::clone(&self.id),
                capabilities: Arc::clone(&self.capabilities),
                serves_http,
                trace: None,
            },
            capabilities: Arc::clone(&self.capabilities),
            limits: MemoryLimit::new(Arc::clone(&self.id), self.limits.memory_bytes),
            deadlines: Default::default(),
            open: Default::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to the host at every epoch tick, so a guest stuck in a loop
        // still lets its request deadline fire.
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// `timeout` from now; a timeout too large to add to now is a deadline
/// that never comes.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
