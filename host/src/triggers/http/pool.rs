//! The instance pool behind each HTTP component.
//!
//! Instances are reused as Spin 4 reuses WASI 0.3 instances (by default up to
//! 128 requests per instance, 16 at once, dropped after 1 s idle), through
//! `wasmtime-wasi-http`'s `ProxyHandler`; this module only says how to make
//! an instance and how long it may live. A trap or a missed deadline retires
//! only the instance it happened in.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::StoreContextMut;
use wasmtime::component::GuestTaskId;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, Proxy, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::component::{ComponentRuntime, Limits};
use crate::factors::InstanceState;
use crate::telemetry::metrics::{self, InstanceEnd};

/// Plugs a component into `ProxyHandler`: how to make a new instance.
pub struct ComponentPool {
    pub runtime: Arc<ComponentRuntime>,
    pub pre: ServicePre<InstanceState>,
}

impl HandlerState for ComponentPool {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let runtime = &self.runtime;
        let mut store = runtime.new_store(self.pre.engine(), true);
        let service = self.pre.instantiate_async(&mut store).await?;
        let instance = runtime.next_instance();
        tracing::debug!(component = %runtime.id, instance, "instantiated");
        metrics::instance_created(&runtime.id, "http");
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
                served: AtomicU64::new(0),
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

/// One request handed to an instance: a number for logs, and its span.
pub struct Call {
    pub id: u64,
    pub trace: Option<opentelemetry::Context>,
}

pub struct Worker {
    runtime: Arc<ComponentRuntime>,
    instance: u64,
    /// Requests started on this instance, to tell reuse from first use.
    served: AtomicU64,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = Call;

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
        mut store: StoreContextMut<'_, InstanceState>,
        request: Call,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        tracing::trace!(component = %self.runtime.id, instance = self.instance, request = request.id, "request start");
        // Traced instances serve one request at a time (see `--otlp-endpoint`).
        store.data_mut().enter(request.trace);
        if self.served.fetch_add(1, Ordering::Relaxed) > 0 {
            metrics::instance_reused(&self.runtime.id, "http");
        }
        let timeout = self.runtime.limits.request_timeout;
        let serving = store.data().deadlines.start(request.id, timeout);
        Box::pin(async move {
            // Dropped when the request ends, or once this fires.
            let _serving = serving;
            tokio::time::sleep(timeout).await;
        })
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        // `ProxyHandler` reports a worker future dropped before it finished
        // as "worker panicked", panic or not. Without a panic under way it
        // was cancelled: the runtime is shutting down (or the connection's
        // task went away), and the instance simply ends.
        if result
            .as_ref()
            .is_err_and(|e| e.to_string() == "worker panicked" && !std::thread::panicking())
        {
            tracing::debug!(component = %self.runtime.id, instance = self.instance, "instance dropped unfinished (shutdown)");
            metrics::instance_ended(&self.runtime.id, "http", InstanceEnd::Retired);
            drop(store);
            return;
        }
        let end = match &result {
            Ok(()) => InstanceEnd::Retired,
            Err(error) if error.downcast_ref::<ExpirationError>().is_some() => {
                InstanceEnd::Deadline
            }
            Err(_) => InstanceEnd::Trap,
        };
        if let Err(error) = result {
            tracing::error!(
                component = %self.runtime.id,
                instance = self.instance,
                "instance discarded after a failure: {error:?}"
            );
        }
        metrics::instance_ended(&self.runtime.id, "http", end);
        drop(store);
    }
}
