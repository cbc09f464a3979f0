//! Each service's circuit breaker, kept in the gateway's key-value store so
//! that every instance and every replica of the gateway sees one state.
//!
//! The store is written only when the state changes (a failure, a window's
//! count, opening, probing, closing), and read once per call — except that
//! an instance that has just read "closed" trusts it for [`CLOSED_FRESH`]:
//! a healthy service then costs no store access at all on an instance that
//! serves many requests (bazaar's and Spin's instance reuse), and a circuit
//! opened elsewhere is seen at most that much later. Any failure reads the
//! store again before recording. Two gateways updating one window at the
//! same moment can lose a count: a breaker needs a trend, not an exact sum.
//! If the store itself fails, calls go through (fail open) and the failure
//! is logged: a broken breaker must not take the API down with it.

use bazaar_api::Problem;
use bazaar_gateway_resilience::{Breaker, BreakerPolicy};
use bazaar_service::setting_as;
use spin_sdk::key_value::Store;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::routes::Service;

/// How long an instance trusts a "closed" it read.
const CLOSED_FRESH: Duration = Duration::from_millis(250);

thread_local! {
    /// When this instance last read each service's circuit as closed.
    static SEEN_CLOSED: RefCell<BTreeMap<&'static str, Instant>> =
        const { RefCell::new(BTreeMap::new()) };
    /// Each service's policy, read from the variables once per instance
    /// (variables do not change while an application runs).
    static POLICIES: RefCell<BTreeMap<&'static str, BreakerPolicy>> =
        const { RefCell::new(BTreeMap::new()) };
}

pub struct Circuit {
    service: Service,
    /// Opened on first use; `Some(None)` if opening failed.
    store: Option<Option<Store>>,
    pub policy: BreakerPolicy,
    pub state: Breaker,
}

impl Circuit {
    pub async fn load(service: Service) -> Result<Circuit, Problem> {
        let policy = match POLICIES.with_borrow(|known| known.get(service.name()).copied()) {
            Some(policy) => policy,
            None => {
                let policy = BreakerPolicy {
                    window_ms: setting_as::<u64>("breaker_window_seconds").await? * 1000,
                    min_calls: setting_as("breaker_min_calls").await?,
                    failure_ratio: setting_as("breaker_failure_ratio").await?,
                    open_ms: setting_as::<u64>("breaker_open_seconds").await? * 1000,
                    probe_ms: setting_as(service.timeout_variable()).await?,
                    retry_floor: setting_as("retry_budget_floor").await?,
                    retry_ratio: setting_as("retry_budget_ratio").await?,
                };
                POLICIES.with_borrow_mut(|known| known.insert(service.name(), policy));
                policy
            }
        };
        let mut circuit = Circuit {
            service,
            store: None,
            policy,
            state: Breaker::Closed,
        };
        let fresh = SEEN_CLOSED.with_borrow(|seen| {
            seen.get(service.name())
                .is_some_and(|at| at.elapsed() < CLOSED_FRESH)
        });
        if !fresh {
            circuit.reload().await;
        }
        Ok(circuit)
    }

    async fn store(&mut self) -> Option<&Store> {
        if self.store.is_none() {
            self.store = Some(match Store::open_default().await {
                Ok(store) => Some(store),
                Err(e) => {
                    log_store_error(self.service, "open", &e);
                    None
                }
            });
        }
        self.store.as_ref().and_then(Option::as_ref)
    }

    /// Reads the state again: before recording an outcome, so a call that
    /// took seconds does not write over what others recorded meanwhile.
    pub async fn reload(&mut self) {
        let (service, key) = (self.service, self.key());
        let Some(store) = self.store().await else {
            return;
        };
        let state = match store.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Ok(None) => Breaker::Closed,
            Err(e) => {
                log_store_error(service, "read", &e);
                Breaker::Closed
            }
        };
        self.state = state;
        remember(service, &state);
    }

    pub async fn save(&mut self, next: Breaker) {
        let previous = std::mem::replace(&mut self.state, next);
        let (service, key) = (self.service, self.key());
        log_transition(service, &previous, &next);
        remember(service, &next);
        let Some(store) = self.store().await else {
            return;
        };
        let bytes = serde_json::to_vec(&next).unwrap_or_default();
        if let Err(e) = store.set(key, bytes).await {
            log_store_error(service, "write", &e);
        }
    }

    fn key(&self) -> String {
        format!("breaker/{}", self.service.name())
    }
}

/// Notes when `service` was last seen closed; any other state is never
/// trusted without reading.
fn remember(service: Service, state: &Breaker) {
    SEEN_CLOSED.with_borrow_mut(|seen| match state {
        Breaker::Closed => {
            seen.insert(service.name(), Instant::now());
        }
        _ => {
            seen.remove(service.name());
        }
    });
}

fn log_transition(service: Service, from: &Breaker, to: &Breaker) {
    let msg = match (from, to) {
        (Breaker::Open { .. } | Breaker::HalfOpen { .. }, Breaker::Open { .. }) => {
            "circuit still open: the probe failed"
        }
        (_, Breaker::Open { .. }) => "circuit opened",
        (_, Breaker::HalfOpen { .. }) => "circuit half-open: probing",
        (Breaker::HalfOpen { .. }, Breaker::Closed) => "circuit closed: the probe succeeded",
        _ => return,
    };
    let line = serde_json::json!({
        "level": "warn",
        "msg": msg,
        "service": service.name(),
    });
    println!("{line}");
}

fn log_store_error(service: Service, action: &str, e: &spin_sdk::key_value::Error) {
    let line = serde_json::json!({
        "level": "error",
        "msg": format!("cannot {action} the circuit state: calls go through unguarded"),
        "service": service.name(),
        "error": format!("{e:?}"),
    });
    eprintln!("{line}");
}
