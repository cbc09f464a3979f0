//! The order saga's state machine: given an order (folded from its events)
//! and what just happened, which events to append and which commands to
//! send. The orchestrator (`functions/order-saga`) does the I/O; this is the
//! whole of the logic, free of it.
//!
//! ```text
//! placed ─reserve─▶ stock_reserved ─charge─▶ payment_charged ─▶ confirmed
//!   │                    │                     │
//!   └ rejected ─▶ cancelled(out_of_stock)      └ (cancellation requested) ─refund─▶ payment_refunded
//!                        │                                                          │
//!                        ├ declined ─▶ payment_declined ─release─▶ stock_released ─▶ cancelled(payment_declined)
//!                        └ failed ─▶ payment_failed (retried by redrive, then declined)
//!                     payment_refunded ─release─▶ stock_released ─▶ cancelled(cancelled_by_user)
//! ```
//!
//! Every decision looks at the state, not at the message alone, so a
//! duplicate, late or unexpected reply decides nothing.

use crate::{
    CancelReason, Event, Order, OrderCancelled, Payment, PaymentCharged, PaymentFailed, Status,
    Stock,
};

/// Transient payment failures tolerated before the payment counts as declined.
pub const MAX_PAYMENT_ATTEMPTS: u32 = 3;

/// What the saga reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `order.placed`: start.
    Placed,
    /// `order.cancellation_requested`: the customer wants out.
    CancellationRequested,
    StockReserved,
    StockRejected,
    StockReleased,
    PaymentCharged {
        payment_id: String,
    },
    PaymentDeclined,
    /// A transient failure; the charge will be retried.
    PaymentFailed,
    PaymentRefunded,
}

/// A command to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    ReserveStock,
    ReleaseStock,
    Charge,
    Refund,
}

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
}

/// The saga's reaction to `input` for `order`.
pub fn decide(order: &Order, input: &Input) -> Decision {
    let s = &order.saga;
    let open = order.status != Status::Cancelled;
    let mut d = Decision::default();
    match input {
        Input::Placed if open && s.stock == Stock::NotReserved => {
            d.commands.push(Command::ReserveStock)
        }
        Input::CancellationRequested
            if order.status == Status::Confirmed && s.payment == Payment::Charged =>
        {
            d.commands.push(Command::Refund)
        }
        Input::StockReserved if open && s.stock == Stock::NotReserved => {
            d.events.push(Event::StockReserved);
            d.commands.push(if s.cancellation_requested {
                Command::ReleaseStock
            } else {
                Command::Charge
            });
        }
        Input::StockRejected if open && s.stock == Stock::NotReserved => {
            d.events.push(cancelled(CancelReason::OutOfStock));
        }
        Input::PaymentCharged { payment_id } if open && s.payment == Payment::NotCharged => {
            d.events.push(Event::PaymentCharged(PaymentCharged {
                payment_id: payment_id.clone(),
            }));
            if s.cancellation_requested {
                d.commands.push(Command::Refund);
            } else {
                d.events.push(Event::Confirmed);
            }
        }
        Input::PaymentDeclined if open && s.payment == Payment::NotCharged => {
            d.events.push(Event::PaymentDeclined);
            d.commands.push(Command::ReleaseStock);
        }
        Input::PaymentFailed if open && s.payment == Payment::NotCharged => {
            let attempt = s.payment_failures + 1;
            d.events
                .push(Event::PaymentFailed(PaymentFailed { attempt }));
            if attempt >= MAX_PAYMENT_ATTEMPTS {
                d.events.push(Event::PaymentDeclined);
                d.commands.push(Command::ReleaseStock);
            }
        }
        Input::PaymentRefunded if s.payment == Payment::Charged => {
            d.events.push(Event::PaymentRefunded);
            d.commands.push(Command::ReleaseStock);
        }
        Input::StockReleased if s.stock == Stock::Reserved => d.events.push(Event::StockReleased),
        _ => {}
    }
    if let Some(last) = finish(order, &d.events) {
        d.events.push(last);
    }
    d
}

/// Once the stock is back and no money is held, the order ends cancelled.
fn finish(order: &Order, new_events: &[Event]) -> Option<Event> {
    let mut after = order.clone();
    new_events.iter().for_each(|e| after.apply(e));
    let s = &after.saga;
    let done_with_stock = s.stock == Stock::Released;
    if after.status == Status::Cancelled || !done_with_stock || s.payment == Payment::Charged {
        return None;
    }
    match s.payment {
        Payment::Declined => Some(cancelled(CancelReason::PaymentDeclined)),
        _ if s.cancellation_requested => Some(cancelled(CancelReason::CancelledByUser)),
        _ => None,
    }
}

fn cancelled(reason: CancelReason) -> Event {
    Event::Cancelled(OrderCancelled { reason })
}

/// Whether the saga has nothing more to do for this order.
pub fn settled(order: &Order) -> bool {
    match order.status {
        Status::Cancelled => true,
        Status::Confirmed => !order.saga.cancellation_requested,
        Status::Pending => false,
    }
}

/// The command the saga is waiting on the answer to, to send again when an
/// order has made no progress for a while (redrive). Steps are idempotent
/// per order, so a command sent twice is answered twice, applied once.
pub fn pending(order: &Order) -> Option<Command> {
    if settled(order) {
        return None;
    }
    let s = &order.saga;
    match (s.stock, s.payment) {
        (Stock::NotReserved, _) => Some(Command::ReserveStock),
        (Stock::Reserved, Payment::NotCharged) => Some(Command::Charge),
        (Stock::Reserved, Payment::Charged) if s.cancellation_requested => Some(Command::Refund),
        (Stock::Reserved, Payment::Declined | Payment::Refunded) => Some(Command::ReleaseStock),
        _ => None,
    }
}

/// How long to wait after the `failures`-th transient payment failure
/// before charging again: 1 s, 2 s, 4 s, … capped at 30 s.
pub fn retry_delay_seconds(failures: u32) -> u64 {
    if failures == 0 {
        0
    } else {
        (1u64 << (failures - 1).min(5)).min(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LineItem, OrderPlaced, StoredEvent};

    fn order_after(events: &[Event]) -> Order {
        let placed = Event::Placed(OrderPlaced {
            user_id: "u".into(),
            items: vec![LineItem {
                product_id: "p".into(),
                quantity: 1,
                unit_price_cents: 100,
            }],
            total_cents: 100,
            currency: "EUR".into(),
            card_token: "tok_ok".into(),
        });
        let stored: Vec<StoredEvent> = std::iter::once(&placed)
            .chain(events)
            .enumerate()
            .map(|(i, e)| StoredEvent::new(i as i64 + 1, e, "2026-11-26T00:00:00Z"))
            .collect();
        Order::fold("o", &stored).unwrap().unwrap()
    }

    /// Runs the saga from `placed` through `inputs`, returning the events.
    fn run(inputs: &[Input]) -> (Vec<Event>, Vec<Command>) {
        let mut events = Vec::new();
        let mut commands = Vec::new();
        for input in std::iter::once(&Input::Placed).chain(inputs) {
            let d = decide(&order_after(&events), input);
            events.extend(d.events);
            commands.extend(d.commands);
        }
        (events, commands)
    }

    fn charged() -> Input {
        Input::PaymentCharged {
            payment_id: "pay-1".into(),
        }
    }

    #[test]
    fn happy_path_confirms() {
        let (events, commands) = run(&[Input::StockReserved, charged()]);
        let order = order_after(&events);
        assert_eq!(order.status, Status::Confirmed);
        assert_eq!(commands, [Command::ReserveStock, Command::Charge]);
        assert!(settled(&order) && pending(&order).is_none());
    }

    #[test]
    fn out_of_stock_cancels() {
        let (events, _) = run(&[Input::StockRejected]);
        assert_eq!(
            order_after(&events).cancel_reason,
            Some(CancelReason::OutOfStock)
        );
    }

    #[test]
    fn a_decline_releases_then_cancels() {
        let (events, commands) = run(&[
            Input::StockReserved,
            Input::PaymentDeclined,
            Input::StockReleased,
        ]);
        let order = order_after(&events);
        assert_eq!(commands.last(), Some(&Command::ReleaseStock));
        assert_eq!(order.cancel_reason, Some(CancelReason::PaymentDeclined));
        assert_eq!(order.saga.stock, Stock::Released);
    }

    #[test]
    fn transient_failures_are_retried_then_declined() {
        let (events, _) = run(&[
            Input::StockReserved,
            Input::PaymentFailed,
            Input::PaymentFailed,
        ]);
        let order = order_after(&events);
        assert_eq!(
            (order.status, pending(&order)),
            (Status::Pending, Some(Command::Charge))
        );
        let (events, commands) = run(&[
            Input::StockReserved,
            Input::PaymentFailed,
            Input::PaymentFailed,
            Input::PaymentFailed,
            Input::StockReleased,
        ]);
        assert_eq!(commands.last(), Some(&Command::ReleaseStock));
        assert_eq!(
            order_after(&events).cancel_reason,
            Some(CancelReason::PaymentDeclined)
        );
        assert_eq!(
            (
                retry_delay_seconds(1),
                retry_delay_seconds(3),
                retry_delay_seconds(20)
            ),
            (1, 4, 30)
        );
    }

    #[test]
    fn cancelling_a_confirmed_order_refunds_and_releases() {
        let (mut events, _) = run(&[Input::StockReserved, charged()]);
        events.push(Event::CancellationRequested);
        let order = order_after(&events);
        assert_eq!(
            decide(&order, &Input::CancellationRequested).commands,
            [Command::Refund]
        );
        assert_eq!(pending(&order), Some(Command::Refund));
        let mut all = events.clone();
        for input in [Input::PaymentRefunded, Input::StockReleased] {
            all.extend(decide(&order_after(&all), &input).events);
        }
        let order = order_after(&all);
        assert_eq!(order.cancel_reason, Some(CancelReason::CancelledByUser));
        assert!(settled(&order));
    }

    #[test]
    fn cancelling_before_the_reservation_answers_releases_it() {
        let events = vec![Event::CancellationRequested];
        let d = decide(&order_after(&events), &Input::StockReserved);
        assert_eq!(d.commands, [Command::ReleaseStock]);
        let mut all = events;
        all.extend(d.events);
        all.extend(decide(&order_after(&all), &Input::StockReleased).events);
        assert_eq!(
            order_after(&all).cancel_reason,
            Some(CancelReason::CancelledByUser)
        );
    }

    #[test]
    fn duplicate_and_late_replies_decide_nothing() {
        let (events, _) = run(&[Input::StockReserved, charged()]);
        let order = order_after(&events);
        for input in [
            Input::StockReserved,
            Input::StockRejected,
            charged(),
            Input::PaymentDeclined,
            Input::PaymentFailed,
            Input::Placed,
        ] {
            assert_eq!(decide(&order, &input), Decision::default(), "{input:?}");
        }
    }
}
