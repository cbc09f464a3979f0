//! The catalogue: reading is public, changing it is for administrators.

use crate::harness::{App, order_body};
use serde_json::json;

#[tokio::test]
async fn admins_create_and_anyone_reads() {
    let app = App::start();
    let admin = app.admin().await;
    let created = app.product(&admin, "MUG-1", 1250, 7).await;
    assert_eq!(created["stock_available"], 7);
    assert_eq!(created["description"], serde_json::Value::Null);
    let id = created["id"].as_str().unwrap();

    let reply = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, created);
    app.get("/api/v1/products/no-such-id", None)
        .await
        .assert_problem(404);

    let duplicate =
        json!({ "sku": "MUG-1", "name": "Again", "price_cents": 1, "currency": "EUR", "stock": 1 });
    app.post("/api/v1/products", Some(&admin), duplicate)
        .await
        .assert_conflict("sku-taken");
}

#[tokio::test]
async fn only_admins_change_the_catalogue() {
    let app = App::start();
    let admin = app.admin().await;
    let customer = app.user("eve@shop.test").await;
    let body =
        json!({ "sku": "HAT-1", "name": "Hat", "price_cents": 500, "currency": "EUR", "stock": 1 });
    app.post("/api/v1/products", None, body.clone())
        .await
        .assert_problem(401);
    app.post("/api/v1/products", Some(&customer), body)
        .await
        .assert_problem(403);

    let product = app.product(&admin, "HAT-1", 500, 1).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    let patch = app
        .request(reqwest::Method::PATCH, &path, Some(&customer))
        .json(&json!({ "price_cents": 1 }));
    app.send(patch).await.assert_problem(403);
    let stock = app
        .request(
            reqwest::Method::PUT,
            &format!("{path}/stock"),
            Some(&customer),
        )
        .json(&json!({ "available": 9 }));
    app.send(stock).await.assert_problem(403);
    // Refused means unchanged.
    let unchanged = app.get(&path, None).await;
    assert_eq!(
        (
            &unchanged.body["price_cents"],
            &unchanged.body["stock_available"]
        ),
        (&json!(500), &json!(1)),
        "{}",
        unchanged.body
    );
}

#[tokio::test]
async fn patch_and_stock_updates() {
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "PEN-1", 199, 3).await;
    let path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());

    let read = app.get(&path, None).await;
    let first = read
        .header("etag")
        .expect("GET gives the product's ETag")
        .to_string();
    let patch = app
        .request(reqwest::Method::PATCH, &path, Some(&admin))
        .header("if-match", &first)
        .json(&json!({ "price_cents": 249, "description": "Blue ink" }));
    let reply = app.send(patch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let second = reply
        .header("etag")
        .expect("a PATCH gives the new ETag")
        .to_string();
    assert_ne!(second, first, "a change moves the ETag");
    assert_eq!(
        (
            reply.body["price_cents"].as_i64(),
            reply.body["name"].as_str()
        ),
        (Some(249), Some("Product PEN-1"))
    );
    assert_eq!(reply.body["description"], "Blue ink");

    // #28: an edit made against the version another admin has changed
    // since is refused (412, with the current ETag), not silently lost;
    // an edit that names no version is refused too (428).
    let lost = app
        .request(reqwest::Method::PATCH, &path, Some(&admin))
        .header("if-match", &first)
        .json(&json!({ "name": "Lost edit" }));
    let reply = app.send(lost).await;
    reply.assert_problem(412);
    assert_eq!(reply.header("etag"), Some(second.as_str()));
    let blind = app
        .request(reqwest::Method::PATCH, &path, Some(&admin))
        .json(&json!({ "name": "Blind edit" }));
    app.send(blind).await.assert_problem(428);
    let kept = app.get(&path, None).await;
    assert_eq!(
        (
            kept.body["name"].as_str(),
            kept.body["price_cents"].as_i64()
        ),
        (Some("Product PEN-1"), Some(249)),
        "{}",
        kept.body
    );

    let invalid = app
        .request(reqwest::Method::PATCH, &path, Some(&admin))
        .header("if-match", &second)
        .json(&json!({ "currency": "euro" }));
    app.send(invalid).await.assert_problem(422);
    let unknown_field = app
        .request(reqwest::Method::PATCH, &path, Some(&admin))
        .header("if-match", &second)
        .json(&json!({ "sku": "X" }));
    app.send(unknown_field).await.assert_problem(422);

    let read = app.get(&path, None).await;
    let etag = read
        .header("etag")
        .expect("GET gives the product's ETag")
        .to_string();
    let stock = app
        .request(reqwest::Method::PUT, &format!("{path}/stock"), Some(&admin))
        .header("if-match", &etag)
        .json(&json!({ "available": 42 }));
    let reply = app.send(stock).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["stock_available"], 42, "{}", reply.body);
    assert_ne!(
        reply.header("etag"),
        Some(etag.as_str()),
        "a change moves the ETag"
    );
    let negative = app
        .request(reqwest::Method::PUT, &format!("{path}/stock"), Some(&admin))
        .header("if-match", reply.header("etag").unwrap())
        .json(&json!({ "available": -1 }));
    app.send(negative).await.assert_problem(422);
    assert_eq!(app.get(&path, None).await.body["stock_available"], 42);
}

/// #9 item 15: setting the stock from a stale read would undo the
/// reservations made since, so `PUT /stock` needs `If-Match` and refuses a
/// version a reservation has moved on from.
#[tokio::test]
async fn stock_is_set_only_against_the_version_read() {
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "INK-1", 300, 10).await;
    let id = product["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/products/{id}");
    let put = |if_match: Option<&str>, available: i64| {
        let mut request = app.request(reqwest::Method::PUT, &format!("{path}/stock"), Some(&admin));
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        app.send(request.json(&json!({ "available": available })))
    };
    put(None, 15).await.assert_problem(428);
    put(Some("7"), 15).await.assert_problem(400);

    let read = app.get(&path, None).await;
    let stale = read.header("etag").unwrap().to_string();
    assert_eq!(read.body["stock_available"], 10);
    // A customer's order reserves 3 meanwhile.
    let alice = app.user("alice@ink.test").await;
    let body = order_body(&id, 3, "tok_ok");
    let order = app.post("/api/v1/orders", Some(&alice), body).await;
    assert_eq!(order.status, 202, "{}", order.body);
    crate::saga::wait_for(
        &app,
        &alice,
        order.body["id"].as_str().unwrap(),
        "confirmed",
    )
    .await;

    // "10 + 5" computed from the stale read would erase the reservation.
    let refused = put(Some(&stale), 15).await;
    refused.assert_problem(412);
    let current = refused
        .header("etag")
        .expect("412 names the current ETag")
        .to_string();
    assert_eq!(app.get(&path, None).await.body["stock_available"], 7);
    let reply = put(Some(&current), 12).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(app.get(&path, None).await.body["stock_available"], 12);
}

#[tokio::test]
async fn listing_pages_with_a_cursor() {
    let app = App::start();
    let admin = app.admin().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.product(&admin, &format!("SKU-{i}"), 100 + i, 1).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let first = app.get("/api/v1/products?limit=2", None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let page_ids = |reply: &crate::harness::Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page_ids(&first), ids[0..2]);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = app
        .get(&format!("/api/v1/products?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(page_ids(&second), ids[2..4]);
    let cursor = second.body["next_cursor"].as_str().unwrap();
    let last = app
        .get(&format!("/api/v1/products?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(page_ids(&last), ids[4..5]);
    assert_eq!(last.body["next_cursor"], serde_json::Value::Null);
    app.get("/api/v1/products?limit=0", None)
        .await
        .assert_problem(400);
}
