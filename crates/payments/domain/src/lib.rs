//! The payments service's rules, free of I/O: how a charge is put to the
//! card processor and what its answers mean.
//!
//! The processor is a stand-in that answers by test card token, as a real
//! processor's sandbox does. What it is asked is what a real one needs: an
//! idempotency key that is stable per order (the order id), so that a
//! charge retried after a timeout or a redrive is made at most once.

/// Approves.
pub const TOKEN_APPROVED: &str = "tok_ok";
/// Declines.
pub const TOKEN_DECLINED: &str = "tok_decline";
/// Fails transiently, every time: the saga retries, then gives up.
pub const TOKEN_UNAVAILABLE: &str = "tok_error";

/// One charge, as the processor is asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest<'a> {
    /// The same for every attempt at one order's charge: the order id.
    pub idempotency_key: &'a str,
    pub amount_cents: i64,
    pub currency: &'a str,
    pub card_token: &'a str,
}

/// The processor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Charged; the processor's id for the charge, the same for every
    /// request with the same idempotency key.
    Approved {
        charge_id: String,
    },
    Declined,
    /// Try again later: nothing was charged.
    Unavailable,
}

/// Puts a charge to the (stand-in) processor.
pub fn charge(request: &ChargeRequest) -> Answer {
    match request.card_token {
        TOKEN_APPROVED => Answer::Approved {
            charge_id: format!("ch_{}", request.idempotency_key),
        },
        TOKEN_UNAVAILABLE => Answer::Unavailable,
        _ => Answer::Declined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> ChargeRequest<'_> {
        ChargeRequest {
            idempotency_key: "order-1",
            amount_cents: 500,
            currency: "EUR",
            card_token: token,
        }
    }

    #[test]
    fn answers_by_token() {
        assert_eq!(charge(&request(TOKEN_DECLINED)), Answer::Declined);
        assert_eq!(charge(&request("tok_unknown")), Answer::Declined);
        assert_eq!(charge(&request(TOKEN_UNAVAILABLE)), Answer::Unavailable);
    }

    #[test]
    fn the_same_key_names_the_same_charge() {
        assert_eq!(
            charge(&request(TOKEN_APPROVED)),
            Answer::Approved {
                charge_id: "ch_order-1".into()
            }
        );
    }
}
