//! Fault injection for the chaos tests: with the probability in a
//! component's `fault_percent` variable (0, the default, never; absent in
//! components that do not declare it), a message handler fails at one of
//! the points where a crash is hardest to recover from. Recovery (redrive,
//! the outbox sweep, consumers dropping duplicates) must make up for each.

use bazaar_api::Problem;
use bazaar_service::{optional_setting, random_fraction};

/// Where a fault strikes.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// A saga step fails before doing anything.
    BeforeWork,
    /// A writer has committed its messages to the outbox and fails before
    /// publishing them: they stay claimed until their lease ends.
    AfterCommit,
    /// A sweep has claimed an outbox row and fails before publishing it.
    AfterClaim,
}

/// Fails with an "injected fault" problem with the `fault_percent`
/// probability.
pub async fn inject(at: Fault) -> Result<(), Problem> {
    let percent = optional_setting("fault_percent")
        .await
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    if percent > 0.0 && random_fraction() * 100.0 < percent {
        return Err(Problem::internal(format!(
            "injected fault ({at:?}, fault_percent)"
        )));
    }
    Ok(())
}
