//! Reading payments: owner or admin, by order.

use crate::harness::App;
use serde_json::json;

#[tokio::test]
async fn payments_are_listed_per_order_for_its_owner() {
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "CUP", 300, 5).await;
    let alice = app.user("alice@shop.test").await;
    let body = json!({ "items": [{ "product_id": product["id"], "quantity": 1 }], "payment": { "card_token": "tok_ok" } });
    let order = app.post("/api/v1/orders", Some(&alice), body).await;
    let id = order.body["id"].as_str().unwrap();

    let reply = app
        .get(&format!("/api/v1/payments?order_id={id}"), Some(&alice))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.is_array(), "{}", reply.body);
    app.get("/api/v1/payments", Some(&alice))
        .await
        .assert_problem(400);
    app.get(&format!("/api/v1/payments?order_id={id}"), None)
        .await
        .assert_problem(401);
}
