//! The gateway's resilience rules, without I/O: each rule takes the state
//! the gateway read from its key-value store and the current time, and
//! answers with a decision and the state to write back (if it changed).
//!
//! The state lives in the store, not in the component, because a Spin
//! instance lives for one request (or a few): a breaker in a global would
//! trip for nobody. Keeping the rules pure makes them testable natively and
//! lets the gateway skip the write whenever nothing changed, which is the
//! healthy path.

mod backoff;
mod breaker;
mod rate_limit;

pub use backoff::backoff_ms;
pub use breaker::{Admission, Breaker, BreakerPolicy};
pub use rate_limit::{admit, window};
