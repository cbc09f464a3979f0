//! The order saga end to end: each path ends in the right state, with the
//! right events, stock and payments.

use crate::harness::{App, Reply, order_body};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Polls an order until it reaches `status`; returns it.
pub async fn wait_for(app: &App, token: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let order = app.get(&format!("/api/v1/orders/{id}"), Some(token)).await;
        if order.body["status"] == status {
            return order.body;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} stayed {} instead of {status}\n{}",
            order.body,
            app.host.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Store {
    app: App,
    alice: String,
    admin: String,
    lamp: String,
}

async fn store(stock: i64) -> Store {
    store_in(App::start(), stock).await
}

async fn store_in(app: App, stock: i64) -> Store {
    let admin = app.admin().await;
    let lamp = app.product(&admin, "LAMP", 4000, stock).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = app.user("alice@shop.test").await;
    Store {
        app,
        alice,
        admin,
        lamp,
    }
}

impl Store {
    async fn order(&self, quantity: i64, card_token: &str) -> String {
        let body = order_body(&self.lamp, quantity, card_token);
        let reply = self
            .app
            .post("/api/v1/orders", Some(&self.alice), body)
            .await;
        assert_eq!(
            reply.status,
            202,
            "{}\n{}",
            reply.body,
            std::fs::read_to_string(self.app.host_log("orders_stderr.txt")).unwrap_or_default()
        );
        reply.body["id"].as_str().unwrap().to_string()
    }

    async fn stock(&self) -> i64 {
        self.app
            .get(&format!("/api/v1/products/{}", self.lamp), None)
            .await
            .body["stock_available"]
            .as_i64()
            .unwrap()
    }

    /// Alice cancels the order; the request is accepted.
    async fn cancel(&self, id: &str) {
        let reply = self
            .app
            .post(
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&self.alice),
                json!({}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }

    /// The order's one payment: its status and amount.
    async fn only_payment(&self, id: &str) -> (String, i64) {
        let reply = self.payments(id).await;
        let list = reply.body["items"].as_array().expect("a list of payments");
        assert_eq!(list.len(), 1, "one payment per order: {}", reply.body);
        (
            list[0]["status"].as_str().unwrap().to_string(),
            list[0]["amount_cents"].as_i64().unwrap(),
        )
    }

    async fn payments(&self, id: &str) -> Reply {
        self.app
            .get(
                &format!("/api/v1/payments?order_id={id}"),
                Some(&self.alice),
            )
            .await
    }

    async fn event_types(&self, id: &str) -> Vec<String> {
        let events = self
            .app
            .get(&format!("/api/v1/orders/{id}/events"), Some(&self.alice))
            .await;
        events.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test]
async fn a_paid_order_is_confirmed() {
    let s = store(5).await;
    let id = s.order(2, "tok_ok").await;
    let order = wait_for(&s.app, &s.alice, &id, "confirmed").await;
    assert!(order.get("cancel_reason").is_none());
    assert_eq!(
        s.event_types(&id).await,
        [
            "order.placed",
            "order.stock_reserved",
            "order.payment_charged",
            "order.confirmed"
        ]
    );
    assert_eq!(s.stock().await, 3);
    let payments = s.payments(&id).await;
    assert_eq!(
        payments.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        payments.body
    );
    assert_eq!(payments.body["items"][0]["status"], "charged");
    assert_eq!(payments.body["items"][0]["amount_cents"], 8000);
    assert_eq!(payments.body["items"][0]["currency"], "EUR");
}

#[tokio::test]
async fn an_order_beyond_the_stock_is_cancelled_out_of_stock() {
    let s = store(1).await;
    let id = s.order(2, "tok_ok").await;
    let order = wait_for(&s.app, &s.alice, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "out_of_stock");
    assert_eq!(
        s.event_types(&id).await,
        ["order.placed", "order.cancelled"]
    );
    assert_eq!(s.stock().await, 1);
    assert_eq!(s.payments(&id).await.body["items"], json!([]));
}

#[tokio::test]
async fn a_declined_card_releases_the_stock() {
    let s = store(4).await;
    let id = s.order(3, "tok_decline").await;
    let order = wait_for(&s.app, &s.alice, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "payment_declined");
    assert_eq!(
        s.event_types(&id).await,
        [
            "order.placed",
            "order.stock_reserved",
            "order.payment_declined",
            "order.stock_released",
            "order.cancelled"
        ]
    );
    assert_eq!(s.stock().await, 4);
    assert_eq!(
        s.only_payment(&id).await,
        ("declined".to_string(), 3 * 4000)
    );
}

#[tokio::test]
async fn a_failing_processor_is_retried_then_treated_as_declined() {
    let s = store(2).await;
    let id = s.order(1, "tok_error").await;
    let order = wait_for(&s.app, &s.alice, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "payment_declined");
    let kinds = s.event_types(&id).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "order.payment_failed")
            .count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("order.cancelled"));
    assert_eq!(s.stock().await, 2);
    assert_eq!(s.payments(&id).await.body["items"], json!([]));
}

#[tokio::test]
async fn cancelling_a_confirmed_order_refunds_and_restocks() {
    let s = store(3).await;
    let id = s.order(1, "tok_ok").await;
    wait_for(&s.app, &s.alice, &id, "confirmed").await;
    assert_eq!(s.stock().await, 2);
    s.cancel(&id).await;
    let order = wait_for(&s.app, &s.alice, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "cancelled_by_user");
    assert_eq!(s.stock().await, 3);
    assert_eq!(s.only_payment(&id).await, ("refunded".to_string(), 4000));
}

#[tokio::test]
async fn payments_stay_private() {
    let s = store(3).await;
    let id = s.order(1, "tok_ok").await;
    wait_for(&s.app, &s.alice, &id, "confirmed").await;
    let bob = s.app.user("bob@shop.test").await;
    s.app
        .get(&format!("/api/v1/payments?order_id={id}"), Some(&bob))
        .await
        .assert_problem(404);
    let as_admin = s
        .app
        .get(&format!("/api/v1/payments?order_id={id}"), Some(&s.admin))
        .await;
    assert_eq!(as_admin.body["items"].as_array().map(Vec::len), Some(1));
    let redrive = s
        .app
        .post("/api/v1/admin/saga/redrive", Some(&bob), json!({}))
        .await;
    redrive.assert_problem(403);
    let redrive = s
        .app
        .post("/api/v1/admin/saga/redrive", Some(&s.admin), json!({}))
        .await;
    assert_eq!(redrive.status, 200, "{}", redrive.body);
    // Nothing is due: the only saga is settled.
    assert_eq!(
        (&redrive.body["redriven"], &redrive.body["parked"]),
        (&json!(0), &json!(0)),
        "{}",
        redrive.body
    );
}

/// The review finding: cancelled while the charge is being retried, the
/// saga must never charge again; it voids the charge and releases stock.
#[tokio::test]
async fn a_cancellation_during_payment_retries_is_never_charged() {
    // On files: the orders outbox, every command the saga ever sent, is read.
    let s = store_in(App::start_on_files(&[]), 2).await;
    let id = s.order(1, "tok_error").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s
        .event_types(&id)
        .await
        .iter()
        .any(|k| k == "order.payment_failed")
    {
        assert!(Instant::now() < deadline, "the charge never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.cancel(&id).await;
    let order = wait_for(&s.app, &s.alice, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "cancelled_by_user");
    let kinds = s.event_types(&id).await;
    assert!(
        kinds.contains(&"order.payment_refunded".to_string())
            && kinds.contains(&"order.stock_released".to_string())
            && !kinds.contains(&"order.payment_charged".to_string()),
        "{kinds:?}"
    );
    assert_eq!(s.stock().await, 2);
    assert_eq!(s.payments(&id).await.body["items"], json!([]));
    // The saga ends: no deadline of its own is left to re-send anything.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = s
            .app
            .all("/api/v1/admin/sagas?state=open", Some(&s.admin))
            .await;
        if open.iter().all(|saga| saga["order_id"] != id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the saga stayed open: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every charge the saga sent (each leaves through the orders outbox,
    // whenever it would arrive) was answered by a failure it recorded: none
    // was sent after the cancellation.
    let failures = kinds
        .iter()
        .filter(|k| *k == "order.payment_failed")
        .count();
    let sent: Vec<Vec<u8>> = s
        .app
        .database("orders")
        .prepare("SELECT payload FROM outbox")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let charges = sent
        .iter()
        .filter_map(|payload| serde_json::from_slice::<Value>(payload).ok())
        .filter(|m| m["order_id"] == id.as_str() && m["type"] == "payment.charge")
        .count();
    assert!(failures >= 1);
    assert_eq!(charges, failures, "{kinds:?}");
}
