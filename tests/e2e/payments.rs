//! Reading payments: owner or admin, by order.

use crate::harness::{App, order_body};
use crate::saga::wait_for;
use serde_json::Value;

#[tokio::test]
async fn payments_are_listed_per_order_for_its_owner() {
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "CUP", 300, 5).await;
    let alice = app.user("alice@shop.test").await;
    let body = order_body(&product["id"], 2, "tok_ok");
    let order = app.post("/api/v1/orders", Some(&alice), body).await;
    assert_eq!(order.status, 202, "{}", order.body);
    let id = order.body["id"].as_str().unwrap();
    wait_for(&app, &alice, id, "confirmed").await;

    let reply = app
        .get(&format!("/api/v1/payments?order_id={id}"), Some(&alice))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let payments = reply.body["items"].as_array().expect("a list");
    assert_eq!(reply.body["next_cursor"], Value::Null);
    assert_eq!(payments.len(), 1, "{}", reply.body);
    assert_eq!(payments[0]["order_id"], id);
    assert_eq!(payments[0]["status"], "charged");
    assert_eq!(payments[0]["amount_cents"], 600);
    assert_eq!(payments[0]["currency"], "EUR");
    assert!(
        payments[0].get("user_id").is_none(),
        "whose it is stays inside"
    );
    app.get("/api/v1/payments", Some(&alice))
        .await
        .assert_problem(400);
    app.get(&format!("/api/v1/payments?order_id={id}"), None)
        .await
        .assert_problem(401);
}
