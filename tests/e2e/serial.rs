//! Spin's Redis trigger runs one message at a time; a burst of orders must
//! settle that way too, without redrive feeding the backlog.

use crate::harness::{App, order_body};
use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_burst_settles_with_one_message_at_a_time() {
    const ORDERS: usize = 120;
    const STOCK: i64 = 1000;
    let app = App::start_with_args(&[], &["--redis-max-concurrent-handlers", "1"]);
    let admin = app.admin().await;
    let mut products = Vec::new();
    for sku in ["A", "B", "C", "D"] {
        let id = app.product(&admin, sku, 100, STOCK).await["id"].clone();
        products.push(id.as_str().unwrap().to_string());
    }
    let alice = app.user("alice@shop.test").await;
    let place = |i: usize| {
        let body = order_body(&products[i % 4], 1, "tok_ok");
        let request = app
            .request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
            .json(&body);
        async { app.send(request).await }
    };
    let placed: Vec<_> = futures::stream::iter((0..ORDERS).map(place))
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(placed.iter().all(|r| r.status == 202));

    let deadline = Instant::now() + Duration::from_secs(120);
    let statuses = loop {
        let list = app.all("/api/v1/orders", Some(&alice)).await;
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for order in &list {
            *statuses
                .entry(order["status"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        if !statuses.contains_key("pending") {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "still pending after 120 s: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        statuses,
        BTreeMap::from([("confirmed".to_string(), ORDERS)])
    );
    for product in &products {
        let stock = app
            .get(&format!("/api/v1/products/{product}"), None)
            .await
            .body;
        assert_eq!(
            stock["stock_available"],
            STOCK - (ORDERS / 4) as i64,
            "{stock}"
        );
    }
    let parked = app
        .all("/api/v1/admin/sagas?state=parked", Some(&admin))
        .await;
    assert_eq!(parked, Vec::<Value>::new());
}
