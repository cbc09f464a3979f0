//! One HTTP component at run time: its compiled, pre-linked code, its grants,
//! and the instance pool that serves its requests.
//!
//! Instances are reused as Spin 4 reuses WASI 0.3 instances (by default up to
//! 128 requests per instance, 16 at once, dropped after 1 s idle), through
//! `wasmtime-wasi-http`'s `ProxyHandler`. A trap or a missed deadline retires
//! only the instance it happened in.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::{GuestTaskId, ResourceTable};
use wasmtime::{Store, StoreContextMut, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::allowed_hosts::AllowList;
use crate::instance::{Capabilities, InstanceState};
use crate::logs::ComponentLogs;
use crate::outbound_http::{AppLink, OutboundHttp};

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
    pub pre: ServicePre<InstanceState>,
    pub capabilities: Arc<Capabilities>,
    pub allowed: Arc<AllowList>,
    pub environment: Vec<(String, String)>,
    pub logs: ComponentLogs,
    pub limits: Limits,
    pub app: AppLink,
    next_instance: AtomicU64,
}

impl ComponentRuntime {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        pre: ServicePre<InstanceState>,
        capabilities: Arc<Capabilities>,
        allowed: Arc<AllowList>,
        environment: Vec<(String, String)>,
        logs: ComponentLogs,
        limits: Limits,
        app: AppLink,
    ) -> Self {
        ComponentRuntime {
            id: id.into(),
            pre,
            capabilities,
            allowed,
            environment,
            logs,
            limits,
            app,
            next_instance: AtomicU64::new(0),
        }
    }

    fn new_store(&self) -> Store<InstanceState> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(self.logs.stdout()).stderr(self.logs.stderr());
        for (key, value) in &self.environment {
            wasi.env(key, value);
        }
        let state = InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            outbound: OutboundHttp {
                component: Arc::clone(&self.id),
                allowed: Arc::clone(&self.allowed),
                app: Arc::clone(&self.app),
            },
            capabilities: Arc::clone(&self.capabilities),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .build(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        // Yield to the host at every epoch tick, so a guest stuck in a loop
        // still lets its request deadline fire.
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// Plugs a component into `ProxyHandler`: how to make a new instance.
pub struct ComponentPool(pub Arc<ComponentRuntime>);

impl HandlerState for ComponentPool {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let runtime = &self.0;
        let mut store = runtime.new_store();
        let service = runtime.pre.instantiate_async(&mut store).await?;
        let instance = runtime.next_instance.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(component = %runtime.id, instance, "instantiated");
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: wasmtime_wasi_http::WasiHttpView::http,
            expiration: Expiration {
                limits: runtime.limits.clone(),
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: Worker {
                runtime: Arc::clone(runtime),
                instance,
            },
        })
    }
}

const EXPIRY_GRACE: Duration = Duration::from_millis(500);

/// When an instance is retired: idle too long, or its requests overran.
pub struct Expiration {
    limits: Limits,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        // A busy instance outlives its requests' deadline by a grace period,
        // so each request's own deadline (`on_request_start`) reports first.
        let timeout = match status {
            WorkerStatus::Idle => self.limits.idle_instance_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => {
                self.limits.request_timeout.saturating_add(EXPIRY_GRACE)
            }
        };
        let Some(deadline) = start.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

pub struct Worker {
    runtime: Arc<ComponentRuntime>,
    instance: u64,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = u64;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        let limits = &self.runtime.limits;
        if total >= limits.max_requests_per_instance {
            ShouldAccept::Never
        } else if concurrent >= limits.max_concurrent_per_instance {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, InstanceState>,
        request: u64,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        tracing::trace!(component = %self.runtime.id, instance = self.instance, request, "request start");
        Box::pin(tokio::time::sleep(self.runtime.limits.request_timeout))
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        if let Err(error) = result {
            tracing::error!(
                component = %self.runtime.id,
                instance = self.instance,
                "instance discarded after a failure: {error:?}"
            );
        }
        drop(store);
    }
}
