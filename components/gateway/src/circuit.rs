//! Each service's circuit breaker, kept in the gateway's key-value store so
//! that every instance and every replica of the gateway sees one state.
//!
//! The store is read once per call; it is written only when the state
//! changes (a failure, a window's count, opening, probing, closing), so a
//! healthy service costs one read. Two gateways updating one window at the
//! same moment can lose a count: a breaker needs a trend, not an exact sum.
//! If the store itself fails, calls go through (fail open) and the failure
//! is logged: a broken breaker must not take the API down with it.

use bazaar_api::Problem;
use bazaar_gateway_resilience::{Breaker, BreakerPolicy};
use bazaar_service::setting_as;
use spin_sdk::key_value::Store;

use crate::routes::Service;

pub struct Circuit {
    service: Service,
    store: Option<Store>,
    pub policy: BreakerPolicy,
    pub state: Breaker,
}

impl Circuit {
    pub async fn load(service: Service) -> Result<Circuit, Problem> {
        let policy = BreakerPolicy {
            window_ms: setting_as::<u64>("breaker_window_seconds").await? * 1000,
            min_calls: setting_as("breaker_min_calls").await?,
            failure_ratio: setting_as("breaker_failure_ratio").await?,
            open_ms: setting_as::<u64>("breaker_open_seconds").await? * 1000,
            probe_ms: setting_as(service.timeout_variable()).await?,
            retry_floor: setting_as("retry_budget_floor").await?,
            retry_ratio: setting_as("retry_budget_ratio").await?,
        };
        let store = match Store::open_default().await {
            Ok(store) => Some(store),
            Err(e) => {
                log_store_error(service, "open", &e);
                None
            }
        };
        let mut circuit = Circuit {
            service,
            store,
            policy,
            state: Breaker::Closed,
        };
        circuit.reload().await;
        Ok(circuit)
    }

    /// Reads the state again: before recording an outcome, so a call that
    /// took seconds does not write over what others recorded meanwhile.
    pub async fn reload(&mut self) {
        let Some(store) = &self.store else { return };
        self.state = match store.get(self.key()).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Ok(None) => Breaker::Closed,
            Err(e) => {
                log_store_error(self.service, "read", &e);
                Breaker::Closed
            }
        };
    }

    pub async fn save(&mut self, next: Breaker) {
        let previous = std::mem::replace(&mut self.state, next);
        log_transition(self.service, &previous, &next);
        let Some(store) = &self.store else { return };
        let bytes = serde_json::to_vec(&next).unwrap_or_default();
        if let Err(e) = store.set(self.key(), bytes).await {
            log_store_error(self.service, "write", &e);
        }
    }

    fn key(&self) -> String {
        format!("breaker/{}", self.service.name())
    }
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
