use serde::{Deserialize, Serialize};

/// When a service's circuit opens, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// How long a window of counted calls lasts from its first failure.
    pub window_ms: u64,
    /// Calls a window must count before its failure ratio can open the
    /// circuit: one failure among two calls is not an outage.
    pub min_calls: u32,
    /// The share of failed calls (0–1) that opens the circuit.
    pub failure_ratio: f64,
    /// How long an open circuit refuses calls before one probe may go.
    pub open_ms: u64,
    /// How long other callers wait for a probe before another may go (a
    /// probe whose instance died must not keep the circuit half-open).
    pub probe_ms: u64,
    /// Retries a window always allows, and the share of its calls it
    /// allows beyond those: retries then add at most that share to the
    /// service's load, however many calls fail.
    pub retry_floor: u32,
    pub retry_ratio: f64,
}

/// One service's circuit, as stored.
///
/// A window starts at the first failure, not at the first call: while a
/// service is healthy the gateway neither reads more than this state nor
/// writes anything. The price is that the successes before the first
/// failure are not counted, which only makes the breaker quicker to open
/// when failures are frequent enough to matter; `min_calls` keeps a lone
/// failure from opening it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    /// Calls go through and nothing has failed lately.
    #[default]
    Closed,
    /// Calls go through; some failed in the window that began at `since_ms`.
    Counting {
        since_ms: u64,
        calls: u32,
        failures: u32,
        retries: u32,
    },
    /// Calls are refused until `until_ms`.
    Open { until_ms: u64 },
    /// One probe call is in flight; the others are refused until it ends
    /// or `until_ms` passes.
    HalfOpen { until_ms: u64 },
}

/// What the gateway may do with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the service.
    Call,
    /// Call the service as the probe of a half-open circuit: its outcome
    /// closes or reopens the circuit. Store [`Breaker::probing`] first.
    Probe,
    /// Refuse without calling; the circuit may admit a call after this long.
    Refuse { retry_after_ms: u64 },
}

impl Breaker {
    pub fn admit(&self, now_ms: u64) -> Admission {
        match *self {
            Breaker::Closed | Breaker::Counting { .. } => Admission::Call,
            Breaker::Open { until_ms } | Breaker::HalfOpen { until_ms } if now_ms < until_ms => {
                Admission::Refuse {
                    retry_after_ms: until_ms - now_ms,
                }
            }
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => Admission::Probe,
        }
    }

    /// The state to store before sending a probe.
    pub fn probing(policy: &BreakerPolicy, now_ms: u64) -> Breaker {
        Breaker::HalfOpen {
            until_ms: now_ms + policy.probe_ms,
        }
    }

    /// Whether recording a success on this state would change it: on the
    /// healthy path the gateway then skips reading the state again.
    pub fn quiet(&self) -> bool {
        matches!(self, Breaker::Closed)
    }

    /// The state after a call (`probe`: admitted as [`Admission::Probe`])
    /// that `failed`, or `None` if it stays as it is.
    pub fn record(
        &self,
        policy: &BreakerPolicy,
        now_ms: u64,
        probe: bool,
        failed: bool,
    ) -> Option<Breaker> {
        if probe {
            return Some(if failed {
                Breaker::Open {
                    until_ms: now_ms + policy.open_ms,
                }
            } else {
                Breaker::Closed
            });
        }
        let (since_ms, calls, failures, retries) = match *self {
            // A call admitted before the circuit opened, ending after:
            // the probe decides, not it.
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => return None,
            Breaker::Counting {
                since_ms,
                calls,
                failures,
                retries,
            } if now_ms.saturating_sub(since_ms) < policy.window_ms => {
                (since_ms, calls, failures, retries)
            }
            Breaker::Closed if !failed => return None,
            // No window, or an expired one: a failure starts a new window,
            // a success ends the old one.
            _ if !failed => return Some(Breaker::Closed),
            _ => (now_ms, 0, 0, 0),
        };
        let calls = calls + 1;
        let failures = failures + u32::from(failed);
        if calls >= policy.min_calls
            && f64::from(failures) >= policy.failure_ratio * f64::from(calls)
        {
            return Some(Breaker::Open {
                until_ms: now_ms + policy.open_ms,
            });
        }
        Some(Breaker::Counting {
            since_ms,
            calls,
            failures,
            retries,
        })
    }

    /// Takes one retry from the window's budget: the state to store, or
    /// `None` if the budget is spent (or the circuit has opened).
    pub fn take_retry(&self, policy: &BreakerPolicy) -> Option<Breaker> {
        match *self {
            Breaker::Counting {
                since_ms,
                calls,
                failures,
                retries,
            } if f64::from(retries)
                < f64::from(policy.retry_floor) + policy.retry_ratio * f64::from(calls) =>
            {
                Some(Breaker::Counting {
                    since_ms,
                    calls,
                    failures,
                    retries: retries + 1,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        window_ms: 10_000,
        min_calls: 4,
        failure_ratio: 0.5,
        open_ms: 5_000,
        probe_ms: 2_000,
        retry_floor: 1,
        retry_ratio: 0.1,
    };

    fn run(mut state: Breaker, outcomes: &[bool], now_ms: u64) -> Breaker {
        for &failed in outcomes {
            assert_eq!(state.admit(now_ms), Admission::Call);
            if let Some(next) = state.record(&POLICY, now_ms, false, failed) {
                state = next;
            }
        }
        state
    }

    #[test]
    fn a_healthy_service_changes_nothing() {
        assert!(Breaker::Closed.quiet());
        assert_eq!(Breaker::Closed.record(&POLICY, 1, false, false), None);
    }

    #[test]
    fn opens_once_enough_calls_in_a_window_failed() {
        let state = run(Breaker::Closed, &[true, false, false], 100);
        assert!(matches!(
            state,
            Breaker::Counting {
                calls: 3,
                failures: 1,
                ..
            }
        ));
        let state = run(state, &[true], 200);
        assert_eq!(state, Breaker::Open { until_ms: 5_200 });
        assert_eq!(
            state.admit(1_200),
            Admission::Refuse {
                retry_after_ms: 4_000
            }
        );
    }

    #[test]
    fn a_window_expires_and_a_late_success_clears_it() {
        let state = run(Breaker::Closed, &[true, true, false], 0);
        assert_eq!(
            state.record(&POLICY, 10_000, false, false),
            Some(Breaker::Closed)
        );
        let fresh = state.record(&POLICY, 10_000, false, true).unwrap();
        assert!(matches!(
            fresh,
            Breaker::Counting {
                since_ms: 10_000,
                calls: 1,
                failures: 1,
                ..
            }
        ));
    }

    #[test]
    fn one_probe_after_the_open_period_closes_or_reopens() {
        let open = Breaker::Open { until_ms: 5_000 };
        assert_eq!(open.admit(5_000), Admission::Probe);
        let probing = Breaker::probing(&POLICY, 5_000);
        assert_eq!(
            probing.admit(6_000),
            Admission::Refuse {
                retry_after_ms: 1_000
            }
        );
        assert_eq!(
            probing.admit(7_000),
            Admission::Probe,
            "a lost probe is replaced"
        );
        assert_eq!(
            probing.record(&POLICY, 6_000, true, false),
            Some(Breaker::Closed)
        );
        assert_eq!(
            probing.record(&POLICY, 6_000, true, true),
            Some(Breaker::Open { until_ms: 11_000 })
        );
        assert_eq!(
            probing.record(&POLICY, 6_000, false, false),
            None,
            "only the probe decides"
        );
    }

    #[test]
    fn retries_are_bounded_by_the_window_budget() {
        assert_eq!(Breaker::Closed.take_retry(&POLICY), None);
        let state = Breaker::Counting {
            since_ms: 0,
            calls: 10,
            failures: 1,
            retries: 0,
        };
        let state = state.take_retry(&POLICY).unwrap();
        let state = state.take_retry(&POLICY).unwrap();
        assert_eq!(state.take_retry(&POLICY), None, "1 + 10% of 10 calls");
        assert_eq!(Breaker::Open { until_ms: 9 }.take_retry(&POLICY), None);
    }

    #[test]
    fn the_stored_form_is_tagged_json() {
        let json = serde_json::to_string(&Breaker::Open { until_ms: 3 }).unwrap();
        assert_eq!(json, r#"{"state":"open","until_ms":3}"#);
        let back: Breaker = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Breaker::Open { until_ms: 3 });
    }
}
