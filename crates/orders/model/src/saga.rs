//! The order saga's state machine: given an order (folded from its events)
//! and what just happened, which events to append and which commands to
//! send. The callers (the orders API and the `order-saga` reply handler)
//! run it inside the transaction that appends the events; this is the
//! whole of the logic, free of I/O.
//!
//! The saga is described by what is *outstanding* for an order, a pure
//! function of its state ([`outstanding`]): reserve stock, then charge;
//! once it unwinds (declined, cancelled), refund whatever may be charged and
//! release whatever may be reserved. A decision sends the commands that
//! became outstanding; redrive re-sends what is still outstanding when a
//! saga's deadline passes. Because the answer is always computed from the
//! state, a duplicate, late or reordered reply decides nothing new, and a
//! success that arrives after the order was cancelled (a reservation or a
//! charge still in flight) is recorded and compensated, never dropped.
//!
//! ```text
//! placed ─reserve─▶ stock_reserved ─charge─▶ payment_charged ─▶ confirmed
//!   │                 │    └ failed ─▶ payment_failed (charged again after a backoff, then declined)
//!   └ rejected ─▶ cancelled(out_of_stock)
//!                     └ declined ─▶ payment_declined ─release─▶ stock_released ─▶ cancelled(payment_declined)
//! cancellation_requested ─(refund if a charge may exist, release if stock may be held)─▶ cancelled(cancelled_by_user)
//! ```

use crate::{
    CancelReason, Event, Order, OrderCancelled, Payment, PaymentCharged, PaymentFailed, Status,
    Stock,
};

/// Transient payment failures tolerated before the payment counts as declined.
pub const MAX_PAYMENT_ATTEMPTS: u32 = 3;

/// What the saga reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The customer wants out (the orders API).
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

/// When the saga should next act on its own if no reply comes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wake {
    /// Nothing changed: the deadline stays as it was.
    Keep,
    /// New commands went out: wait one reply timeout.
    AfterReplyTimeout,
    /// A transient payment failure: charge again after this many seconds.
    AfterSeconds(u64),
    /// Settled: nothing more to do.
    Never,
}

#[derive(Debug, PartialEq)]
pub struct Decision {
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
    pub wake: Wake,
}

/// The commands a newly placed order starts with.
pub fn start(order: &Order) -> Decision {
    Decision {
        events: Vec::new(),
        commands: outstanding(order),
        wake: Wake::AfterReplyTimeout,
    }
}

/// The saga's reaction to `input` for `order`.
pub fn decide(order: &Order, input: &Input) -> Decision {
    let mut events = react(order, input);
    let mut after = order.clone();
    events.iter().for_each(|e| after.apply(e));
    if let Some(last) = finish(&after) {
        after.apply(&last);
        events.push(last);
    }
    let before = outstanding(order);
    let commands: Vec<Command> = outstanding(&after)
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    let wake = if events.is_empty() {
        Wake::Keep
    } else if settled(&after) {
        Wake::Never
    } else if !commands.is_empty() {
        Wake::AfterReplyTimeout
    } else if events.iter().any(|e| matches!(e, Event::PaymentFailed(_))) {
        Wake::AfterSeconds(retry_delay_seconds(after.saga.payment_failures))
    } else {
        Wake::Keep
    };
    Decision {
        events,
        commands,
        wake,
    }
}

/// Whether the saga is undoing the order: declined or cancelled.
fn unwinding(order: &Order) -> bool {
    order.status == Status::Cancelled
        || order.saga.cancellation_requested
        || order.saga.payment == Payment::Declined
}

/// The events that record `input`: every step's success is recorded, even
/// a late one, so that [`outstanding`] can undo it.
fn react(order: &Order, input: &Input) -> Vec<Event> {
    let s = &order.saga;
    let pending = order.status == Status::Pending;
    match input {
        Input::CancellationRequested
            if order.status != Status::Cancelled && !s.cancellation_requested =>
        {
            vec![Event::CancellationRequested]
        }
        Input::StockReserved if s.stock == Stock::NotReserved => vec![Event::StockReserved],
        Input::StockRejected if s.stock == Stock::NotReserved && pending => {
            vec![cancelled(CancelReason::OutOfStock)]
        }
        // A release answers a reservation, or stands in for one that was
        // never made (the inventory step keeps a tombstone).
        Input::StockReleased
            if unwinding(order)
                && (s.stock == Stock::Reserved
                    || (s.stock == Stock::NotReserved && pending && s.cancellation_requested)) =>
        {
            vec![Event::StockReleased]
        }
        Input::PaymentCharged { payment_id } if s.payment == Payment::NotCharged => {
            let charged = Event::PaymentCharged(PaymentCharged {
                payment_id: payment_id.clone(),
            });
            if pending && !unwinding(order) {
                vec![charged, Event::Confirmed]
            } else {
                vec![charged]
            }
        }
        Input::PaymentDeclined if s.payment == Payment::NotCharged && pending => {
            vec![Event::PaymentDeclined]
        }
        Input::PaymentFailed
            if s.payment == Payment::NotCharged && pending && !unwinding(order) =>
        {
            let attempt = s.payment_failures + 1;
            let mut events = vec![Event::PaymentFailed(PaymentFailed { attempt })];
            if attempt >= MAX_PAYMENT_ATTEMPTS {
                events.push(Event::PaymentDeclined);
            }
            events
        }
        // A refund answers a charge, or voids one that was never made (the
        // payment step keeps a tombstone, so a late charge is refused).
        Input::PaymentRefunded
            if unwinding(order)
                && (s.payment == Payment::Charged
                    || (s.payment == Payment::NotCharged && s.charge_requested)) =>
        {
            vec![Event::PaymentRefunded]
        }
        _ => Vec::new(),
    }
}

/// Once the stock is back and no money can be held, an unwinding order ends
/// cancelled.
fn finish(after: &Order) -> Option<Event> {
    let s = &after.saga;
    if after.status == Status::Cancelled || s.stock != Stock::Released || !money_settled(after) {
        return None;
    }
    match s.payment {
        Payment::Declined => Some(cancelled(CancelReason::PaymentDeclined)),
        _ if s.cancellation_requested => Some(cancelled(CancelReason::CancelledByUser)),
        _ => None,
    }
}

/// No charge exists and none can still happen.
fn money_settled(order: &Order) -> bool {
    match order.saga.payment {
        Payment::Declined | Payment::Refunded => true,
        Payment::Charged => false,
        Payment::NotCharged => !order.saga.charge_requested,
    }
}

fn cancelled(reason: CancelReason) -> Event {
    Event::Cancelled(OrderCancelled { reason })
}

/// Whether the saga has nothing more to do for this order.
pub fn settled(order: &Order) -> bool {
    match order.status {
        Status::Cancelled => {
            order.saga.stock != Stock::Reserved && order.saga.payment != Payment::Charged
        }
        Status::Confirmed => !order.saga.cancellation_requested,
        Status::Pending => false,
    }
}

/// The commands whose answers the saga waits for: sent when they become
/// outstanding, and again by redrive when a saga's deadline passes. Steps
/// are idempotent per order, so a command sent twice is applied once and
/// answered with what was recorded.
pub fn outstanding(order: &Order) -> Vec<Command> {
    if settled(order) {
        return Vec::new();
    }
    let s = &order.saga;
    if !unwinding(order) {
        return match (s.stock, s.payment) {
            (Stock::NotReserved, _) => vec![Command::ReserveStock],
            (Stock::Reserved, Payment::NotCharged) => vec![Command::Charge],
            _ => Vec::new(),
        };
    }
    let mut commands = Vec::new();
    if s.payment == Payment::Charged || (s.payment == Payment::NotCharged && s.charge_requested) {
        commands.push(Command::Refund);
    }
    let reservation_in_flight = s.stock == Stock::NotReserved
        && s.cancellation_requested
        && order.status == Status::Pending;
    if s.stock == Stock::Reserved || reservation_in_flight {
        commands.push(Command::ReleaseStock);
    }
    commands
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

/// The cap on a saga's redrive backoff, in seconds.
pub const MAX_REDRIVE_DELAY_SECONDS: f64 = 300.0;

/// How long to wait for an answer after the `attempt`-th re-send (1 for
/// the first): the reply timeout doubled per attempt, capped, spread by
/// ±20% (`jitter` in 0..1) so that sagas redriven together do not come
/// due together again.
pub fn redrive_delay_seconds(reply_timeout: f64, attempt: u32, jitter: f64) -> f64 {
    let doubled = reply_timeout * f64::from(1u32 << attempt.min(16));
    doubled.min(MAX_REDRIVE_DELAY_SECONDS) * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))
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
        });
        let stored: Vec<StoredEvent> = std::iter::once(&placed)
            .chain(events)
            .enumerate()
            .map(|(i, e)| StoredEvent::new(i as i64 + 1, e, "2026-11-26T00:00:00Z"))
            .collect();
        Order::fold("o", &stored).unwrap().unwrap()
    }

    /// Runs the saga from `placed` through `inputs`: the events and every
    /// command sent.
    fn run(inputs: &[Input]) -> (Vec<Event>, Vec<Command>) {
        let mut events = Vec::new();
        let mut commands = start(&order_after(&[])).commands;
        for input in inputs {
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
        assert!(settled(&order) && outstanding(&order).is_empty());
    }

    #[test]
    fn out_of_stock_cancels() {
        let (events, _) = run(&[Input::StockRejected]);
        let order = order_after(&events);
        assert_eq!(order.cancel_reason, Some(CancelReason::OutOfStock));
        assert!(settled(&order));
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
        assert!(settled(&order));
    }

    #[test]
    fn transient_failures_are_retried_then_declined() {
        let mut events = run(&[Input::StockReserved]).0;
        let d = decide(&order_after(&events), &Input::PaymentFailed);
        assert_eq!((d.commands.len(), d.wake), (0, Wake::AfterSeconds(1)));
        events.extend(d.events);
        let order = order_after(&events);
        assert_eq!(
            (order.status, outstanding(&order)),
            (Status::Pending, vec![Command::Charge])
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
    fn cancelling_a_confirmed_order_refunds_and_releases_at_once() {
        let (events, _) = run(&[Input::StockReserved, charged()]);
        let d = decide(&order_after(&events), &Input::CancellationRequested);
        assert_eq!(d.events, [Event::CancellationRequested]);
        assert_eq!(d.commands, [Command::Refund, Command::ReleaseStock]);
        let mut all = events;
        all.extend(d.events);
        for input in [Input::StockReleased, Input::PaymentRefunded] {
            let d = decide(&order_after(&all), &input);
            assert!(d.commands.is_empty(), "{input:?}: {d:?}");
            all.extend(d.events);
        }
        let order = order_after(&all);
        assert_eq!(order.cancel_reason, Some(CancelReason::CancelledByUser));
        assert!(settled(&order));
    }

    #[test]
    fn cancelling_before_the_reservation_answers_leaves_a_tombstone() {
        let d = decide(&order_after(&[]), &Input::CancellationRequested);
        assert_eq!(d.commands, [Command::ReleaseStock]);
        let mut all = d.events;
        // The reservation happened before the release reached the step.
        let d = decide(&order_after(&all), &Input::StockReserved);
        assert!(d.commands.is_empty(), "the release is already on its way");
        assert!(!settled(&order_after(
            &[all.clone(), d.events.clone()].concat()
        )));
        all.extend(d.events);
        all.extend(decide(&order_after(&all), &Input::StockReleased).events);
        let order = order_after(&all);
        assert_eq!(order.cancel_reason, Some(CancelReason::CancelledByUser));
        assert!(!order.saga.charge_requested && settled(&order));
    }

    /// The review finding: cancelled while the charge was in flight, the
    /// release answered first; the charge that then succeeds is refunded.
    #[test]
    fn a_charge_that_succeeds_after_the_cancellation_is_refunded() {
        let mut all = run(&[Input::StockReserved]).0;
        let d = decide(&order_after(&all), &Input::CancellationRequested);
        assert_eq!(d.commands, [Command::Refund, Command::ReleaseStock]);
        all.extend(d.events);
        all.extend(decide(&order_after(&all), &Input::StockReleased).events);
        let order = order_after(&all);
        assert_eq!(order.status, Status::Pending, "a charge may still happen");
        assert_eq!(outstanding(&order), [Command::Refund], "never a charge");
        let d = decide(&order, &charged());
        assert!(!d.events.contains(&Event::Confirmed));
        all.extend(d.events);
        assert_eq!(outstanding(&order_after(&all)), [Command::Refund]);
        all.extend(decide(&order_after(&all), &Input::PaymentRefunded).events);
        let order = order_after(&all);
        assert_eq!(
            (order.cancel_reason, order.saga.payment),
            (Some(CancelReason::CancelledByUser), Payment::Refunded)
        );
        assert!(settled(&order));
    }

    #[test]
    fn a_late_success_after_the_end_is_undone() {
        // Cancelled out of stock, then (against the step's contract) a
        // reservation arrives: it is recorded and released.
        let mut all = run(&[Input::StockRejected]).0;
        let d = decide(&order_after(&all), &Input::StockReserved);
        assert_eq!(d.commands, [Command::ReleaseStock]);
        all.extend(d.events);
        assert!(!settled(&order_after(&all)));
        all.extend(decide(&order_after(&all), &Input::StockReleased).events);
        assert!(settled(&order_after(&all)));
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
            Input::PaymentRefunded,
            Input::StockReleased,
        ] {
            let d = decide(&order, &input);
            assert!(d.events.is_empty() && d.commands.is_empty(), "{input:?}");
            assert_eq!(d.wake, Wake::Keep);
        }
    }

    #[test]
    fn redrive_backs_off_within_bounds() {
        assert_eq!(redrive_delay_seconds(5.0, 1, 0.5), 10.0);
        assert_eq!(redrive_delay_seconds(5.0, 3, 0.5), 40.0);
        assert_eq!(
            redrive_delay_seconds(5.0, 30, 0.5),
            MAX_REDRIVE_DELAY_SECONDS
        );
        assert!(redrive_delay_seconds(5.0, 1, 0.0) >= 8.0);
        assert!(redrive_delay_seconds(5.0, 1, 1.0) <= 12.0 + 1e-9);
    }
}
