//! The read model against a real Redis: replayed and stale event messages
//! change nothing, and messages carry the client's trace.

use crate::common::RedisServer;
use crate::harness::App;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test]
async fn replayed_events_do_not_move_the_read_model_backwards() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("bazaar.orders.events").await.unwrap();
    let mut messages = pubsub.into_on_message();

    let app = App::start_with(&[("SPIN_VARIABLE_REDIS_URL", &redis.url())]);
    let admin = app.admin().await;
    let product = app.product(&admin, "LAMP", 4000, 2).await;
    let alice = app.user("alice@shop.test").await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = json!({ "items": [{ "product_id": product["id"], "quantity": 1 }], "payment": { "card_token": "tok_ok" } });
    let placed = app
        .send(
            app.request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
                .header("traceparent", trace)
                .json(&body),
        )
        .await;
    let id = placed.body["id"].as_str().unwrap().to_string();
    app.post(
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&alice),
        json!({}),
    )
    .await;

    let mut seen: Vec<Vec<u8>> = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(message.get_payload_bytes().to_vec());
    }
    let first: Value = serde_json::from_slice(&seen[0]).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["order_id"].as_str()),
        (Some("order.placed"), Some(id.as_str()))
    );
    assert_eq!(first["correlation_id"], first["order_id"]);
    let traceparent = first["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{traceparent}"
    );
    assert_ne!(traceparent, trace, "each hop gets its own parent id");

    wait_for_status(&app, &alice, &id, "cancelled").await;
    // Deliver `order.placed` again, and again: the view stays cancelled.
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..2 {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bazaar.orders.events")
            .arg(&seen[0])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let log = app.host_log("order-projection_stdout.txt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("view already current")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the replays were not processed:\n{}",
            app.host.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = app.get("/api/v1/orders", Some(&alice)).await;
    assert_eq!(list.body[0]["status"], "cancelled", "{}", list.body);
}

async fn wait_for_status(app: &App, token: &str, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = app.get("/api/v1/orders", Some(token)).await;
        if list.body.as_array().is_some_and(|orders| {
            orders
                .iter()
                .any(|o| o["id"] == id && o["status"] == status)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never showed {status}: {}",
            list.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
