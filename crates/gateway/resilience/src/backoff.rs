/// The pause before retry number `attempt` (1 for the first retry):
/// exponential from `base_ms`, capped at `cap_ms`, with "equal jitter" —
/// half of the step is fixed, half drawn from `random` — so that clients
/// that failed together do not retry together, yet none retries at once.
pub fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64, random: u64) -> u64 {
    let step = base_ms
        .saturating_mul(
            1u64.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u64::MAX),
        )
        .min(cap_ms);
    let half = step / 2;
    half + random % (step - half + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_its_jitter_and_stops_at_the_cap() {
        for random in [0, 1, 7, 1_000_003, u64::MAX] {
            let first = backoff_ms(1, 50, 1_000, random);
            assert!((25..=50).contains(&first), "{first}");
            let third = backoff_ms(3, 50, 1_000, random);
            assert!((100..=200).contains(&third), "{third}");
            let late = backoff_ms(40, 50, 1_000, random);
            assert!((500..=1_000).contains(&late), "{late}");
            assert!(backoff_ms(200, 50, 1_000, random) <= 1_000);
        }
        assert_ne!(backoff_ms(2, 50, 1_000, 3), backoff_ms(2, 50, 1_000, 4));
    }
}
