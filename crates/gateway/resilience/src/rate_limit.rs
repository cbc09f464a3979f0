//! Rate limits as a sliding-window counter: each caller and rule has one
//! atomic counter per fixed window (Redis `INCR`, so that concurrent
//! requests on any instance or replica each see a count of their own), and
//! a request is weighed against the current window's count plus the share
//! of the previous window's that still falls within the last period.
//!
//! Counting is atomic and the check follows from the number the counter
//! returns, so no two requests can both be the `limit`-th: under any
//! concurrency at most `limit` requests pass per period (fewer near a
//! window's start, while the previous window still weighs). A refused
//! request counts too, so a caller that keeps trying keeps waiting.

/// Which fixed window `now_ms` falls in, and how far into it.
pub fn window(now_ms: u64, period_ms: u64) -> (u64, u64) {
    let period_ms = period_ms.max(1);
    (now_ms / period_ms, now_ms % period_ms)
}

/// Whether the request that made the current window's counter `count` (its
/// own included) is admitted under `limit` per `period_ms`, with `previous`
/// counted in the window before and `elapsed_ms` into this one. `Err`
/// carries the milliseconds until a request may pass (at least 1).
pub fn admit(
    previous: u64,
    count: u64,
    limit: u32,
    elapsed_ms: u64,
    period_ms: u64,
) -> Result<(), u64> {
    let period = period_ms.max(1) as f64;
    let remaining = period_ms.saturating_sub(elapsed_ms) as f64;
    let limit = f64::from(limit);
    let estimate = previous as f64 * remaining / period + count as f64;
    if estimate <= limit {
        return Ok(());
    }
    // The previous window's share shrinks as this one goes on; if that is
    // not enough, the next window is the earliest.
    let room = limit - count as f64;
    let wait = if previous > 0 && room >= 0.0 {
        remaining - room * period / previous as f64
    } else {
        remaining
    };
    Err((wait.ceil() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_passes_per_window_then_the_wait_is_to_the_next() {
        let (index, elapsed) = window(61_000, 60_000);
        assert_eq!((index, elapsed), (1, 1_000));
        for count in 1..=3 {
            assert_eq!(admit(0, count, 3, elapsed, 60_000), Ok(()));
        }
        assert_eq!(admit(0, 4, 3, elapsed, 60_000), Err(59_000));
    }

    #[test]
    fn the_previous_window_weighs_by_what_is_left_of_it() {
        // Early in a window after a full one, nothing passes; the previous
        // window's weight falls as time goes on.
        assert_eq!(admit(10, 1, 10, 0, 60_000), Err(6_000));
        assert_eq!(admit(10, 1, 10, 6_000, 60_000), Ok(()));
        assert!(admit(10, 6, 10, 30_000, 60_000).is_err());
        assert_eq!(admit(10, 5, 10, 30_000, 60_000), Ok(()));
    }

    /// Whatever order concurrent requests reach the counter in, each sees a
    /// count of its own: at most `limit` pass in a window.
    #[test]
    fn no_more_than_the_limit_pass_however_many_come_at_once() {
        for previous in [0, 3, 10, 40] {
            for elapsed in [0, 1, 30_000, 59_999] {
                let passed = (1..=40)
                    .filter(|count| admit(previous, *count, 10, elapsed, 60_000).is_ok())
                    .count();
                assert!(passed <= 10, "{previous} {elapsed}: {passed}");
            }
        }
        assert_eq!(admit(0, 1, 0, 0, 1_000), Err(1_000));
    }
}
