use serde::{Deserialize, Serialize};

/// One caller's use of one limit: a fixed window and the requests counted in
/// it. One key per caller and rule, overwritten each window, so the store
/// holds one small entry per caller that ever came, not one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindow {
    pub start_ms: u64,
    pub count: u32,
}

/// Counts one request against `limit` per `period_ms`. `Ok` carries the
/// window to store; `Err` the milliseconds until the caller may try again
/// (nothing to store: a refused request does not count).
pub fn take(
    current: Option<RateWindow>,
    limit: u32,
    period_ms: u64,
    now_ms: u64,
) -> Result<RateWindow, u64> {
    let window = match current {
        Some(w) if now_ms >= w.start_ms && now_ms - w.start_ms < period_ms => w,
        _ => RateWindow {
            start_ms: now_ms,
            count: 0,
        },
    };
    if window.count >= limit {
        return Err(window.start_ms + period_ms - now_ms);
    }
    Ok(RateWindow {
        count: window.count + 1,
        ..window
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_per_window_then_says_how_long_to_wait() {
        let mut window = None;
        for i in 0..3 {
            window = Some(take(window, 3, 60_000, 1_000 + i).unwrap());
        }
        assert_eq!(take(window, 3, 60_000, 11_000), Err(50_000));
        let next = take(window, 3, 60_000, 61_000).unwrap();
        assert_eq!(
            next,
            RateWindow {
                start_ms: 61_000,
                count: 1
            }
        );
    }

    #[test]
    fn a_zero_limit_refuses_and_a_clock_gone_back_starts_afresh() {
        assert_eq!(take(None, 0, 1_000, 5), Err(1_000));
        let future = RateWindow {
            start_ms: 9_000,
            count: 3,
        };
        assert_eq!(take(Some(future), 3, 1_000, 5).unwrap().count, 1);
    }
}
