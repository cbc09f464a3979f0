//! The orders read model and the saga's operations against a real Redis:
//! views written with the events, public events carrying the client's
//! trace, a view rebuild from the event store, parking and restarting a
//! saga whose step never answers, and pruning.

use crate::common::RedisServer;
use crate::harness::{App, order_body};
use crate::saga::wait_for;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn place(app: &App, token: &str, product: &Value, card: &str) -> String {
    let body = order_body(&product["id"], 1, card);
    let reply = app.post("/api/v1/orders", Some(token), body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

/// The list as the customer sees it.
async fn listed(app: &App, token: &str) -> Vec<Value> {
    app.all("/api/v1/orders", Some(token)).await
}

#[tokio::test]
async fn views_are_written_with_the_events_and_events_are_public() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("bazaar.orders.events").await.unwrap();
    let mut messages = pubsub.into_on_message();

    // On files: the rebuild below must replace a view the test rewrites.
    let app = App::start_on_files(&[("SPIN_VARIABLE_REDIS_URL", &redis.url())]);
    let admin = app.admin().await;
    let product = app.product(&admin, "LAMP", 4000, 5).await;
    let alice = app.user("alice@shop.test").await;
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = order_body(&product["id"], 1, "tok_ok");
    let placed = app
        .send(
            app.request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
                .header("traceparent", trace)
                .json(&body),
        )
        .await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();
    // Committed with the event: no projection lag to wait out.
    let list = listed(&app, &alice).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    let first = tokio::time::timeout(Duration::from_secs(20), messages.next())
        .await
        .expect("order.placed was published")
        .unwrap();
    let first: Value = serde_json::from_slice(first.get_payload_bytes()).unwrap();
    assert_eq!(
        (first["type"].as_str(), first["order_id"].as_str()),
        (Some("order.placed"), Some(id.as_str()))
    );
    assert_eq!(first["correlation_id"], first["order_id"]);
    assert!(
        first["data"].get("card_token").is_none() && first["data"]["total_cents"] == 4000,
        "public events carry no card token: {first}"
    );
    let traceparent = first["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{traceparent}"
    );
    assert_ne!(traceparent, trace, "each hop gets its own parent id");

    let detail = wait_for(&app, &alice, &id, "confirmed").await;
    let list = listed(&app, &alice).await;
    assert_eq!(list[0], detail, "the view is the order as the API shows it");

    // A rebuild from the event store gives the same views, whatever is
    // stored: here a view of another shape at the same version, as after
    // a change to the view's shape.
    app.database_for_writing("orders")
        .execute(
            "UPDATE order_views SET view = '{\"shape\":\"old\"}' WHERE order_id = ?",
            [&id],
        )
        .unwrap();
    assert_eq!(listed(&app, &alice).await, vec![json!({ "shape": "old" })]);
    let bob = app.user("bob@shop.test").await;
    app.post("/api/v1/admin/orders/views/rebuild", Some(&bob), json!({}))
        .await
        .assert_problem(403);
    let rebuild = app
        .post(
            "/api/v1/admin/orders/views/rebuild",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(rebuild.status, 202, "{}", rebuild.body);
    assert_eq!(rebuild.body["views_to_rebuild"], 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rebuilt = 0;
    while rebuilt == 0 {
        // The dev schedule's redrive may get there first.
        let run = redrive(&app, &admin, "").await;
        rebuilt += run["views_rebuilt"].as_u64().unwrap();
        if rebuilt == 0 && log_has(&app, "\"views_rebuilt\":1") {
            break;
        }
        assert!(Instant::now() < deadline, "the view was never rebuilt");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed(&app, &alice).await, vec![detail]);
}

/// One redrive run as an administrator (`query` may add parameters); it
/// must succeed. Its outcome.
async fn redrive(app: &App, admin: &str, query: &str) -> Value {
    let path = format!("/api/v1/admin/saga/redrive{query}");
    let run = app.post(&path, Some(admin), json!({})).await;
    assert_eq!(run.status, 200, "{}", run.body);
    run.body
}

fn log_has(app: &App, text: &str) -> bool {
    std::fs::read_to_string(app.host_log("orders_stdout.txt"))
        .unwrap_or_default()
        .contains(text)
}

async fn parked(app: &App, admin: &str) -> Vec<Value> {
    app.all("/api/v1/admin/sagas?state=parked", Some(admin))
        .await
}

async fn open_sagas(app: &App, admin: &str) -> Vec<Value> {
    app.all("/api/v1/admin/sagas?state=open", Some(admin)).await
}

/// After an incident: a saga backed off far into the future (here its
/// first deadline, 600 s away) is listed as open with that deadline; no
/// redrive touches it until an administrator expedites the open sagas,
/// and then the next redrive re-sends it, as an attempt.
#[tokio::test]
async fn an_administrator_expedites_backed_off_sagas() {
    let app = App::start_with(&[
        ("SPIN_VARIABLE_FAULT_PERCENT", "100"),
        ("SPIN_VARIABLE_SAGA_REPLY_TIMEOUT_SECONDS", "600"),
    ]);
    let admin = app.admin().await;
    let product = app.product(&admin, "LAMP", 4000, 5).await;
    let alice = app.user("alice@shop.test").await;
    let id = place(&app, &alice, &product, "tok_ok").await;

    app.get("/api/v1/admin/sagas?state=open", Some(&alice))
        .await
        .assert_problem(403);
    app.post("/api/v1/admin/sagas/expedite", Some(&alice), json!({}))
        .await
        .assert_problem(403);
    app.get("/api/v1/admin/sagas?state=closed", Some(&admin))
        .await
        .assert_problem(400);
    let open = open_sagas(&app, &admin).await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (&open[0]["order_id"], &open[0]["attempts"]),
        (&json!(id), &json!(0)),
        "{open:?}"
    );
    let placed_deadline = open[0]["next_attempt_at"].as_str().unwrap().to_string();
    let run = redrive(&app, &admin, "").await;
    assert_eq!(run["redriven"], 0, "not due for 600 s: {run}");

    let expedited = app
        .post("/api/v1/admin/sagas/expedite", Some(&admin), json!({}))
        .await;
    assert_eq!(expedited.status, 202, "{}", expedited.body);
    assert_eq!(expedited.body["expedited"], 1, "{}", expedited.body);
    // Due now: this redrive (or the schedule's, whichever comes first)
    // re-sends it, as its first attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let saga = loop {
        redrive(&app, &admin, "").await;
        let open = open_sagas(&app, &admin).await;
        if open[0]["attempts"] == 1 {
            break open[0].clone();
        }
        assert!(Instant::now() < deadline, "never re-sent: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        saga["last_error"]
            .as_str()
            .unwrap()
            .contains("inventory.reserve yet (attempt 1)"),
        "{saga}"
    );
    assert_ne!(saga["next_attempt_at"], json!(placed_deadline), "{saga}");
    // Backed off again (minutes away): the runs after it leave it alone.
    let run = redrive(&app, &admin, "").await;
    assert_eq!(run["redriven"], 0, "{run}");
    assert_eq!(open_sagas(&app, &admin).await[0]["attempts"], 1);
    let order = app.get(&format!("/api/v1/orders/{id}"), Some(&alice)).await;
    assert_eq!(order.body["status"], "pending");
}

/// A step that never answers: the saga re-sends with growing deadlines,
/// then parks; an administrator sees why and restarts it.
#[tokio::test]
async fn a_saga_whose_step_never_answers_is_parked_then_restarted() {
    let app = App::start_with(&[
        ("SPIN_VARIABLE_FAULT_PERCENT", "100"),
        ("SPIN_VARIABLE_SAGA_REPLY_TIMEOUT_SECONDS", "0.2"),
        ("SPIN_VARIABLE_SAGA_MAX_ATTEMPTS", "2"),
        ("SPIN_VARIABLE_METRICS_TOKEN", "scrape-secret"),
    ]);
    let admin = app.admin().await;
    let product = app.product(&admin, "LAMP", 4000, 5).await;
    let alice = app.user("alice@shop.test").await;
    let id = place(&app, &alice, &product, "tok_ok").await;

    app.get("/api/v1/admin/sagas?state=parked", Some(&alice))
        .await
        .assert_problem(403);
    app.get("/api/v1/admin/sagas", Some(&admin))
        .await
        .assert_problem(400);
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        redrive(&app, &admin, "").await;
        if let Some(entry) = parked(&app, &admin).await.into_iter().next() {
            break entry;
        }
        assert!(Instant::now() < deadline, "the saga was never parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["order_id"], id.as_str());
    assert_eq!(entry["attempts"], 2);
    let why = entry["last_error"].as_str().unwrap();
    assert!(
        why.contains("inventory.reserve") && why.contains("2 attempts"),
        "{why}"
    );
    // Parked means left alone: redrive runs do not touch it.
    let run = redrive(&app, &admin, "").await;
    assert_eq!(
        (run["redriven"].as_u64(), run["parked"].as_u64()),
        (Some(0), Some(0))
    );
    let order = app.get(&format!("/api/v1/orders/{id}"), Some(&alice)).await;
    assert_eq!(order.body["status"], "pending");
    // The operator's gauges count it: open, parked, and (parked) not overdue.
    app.assert_app_metrics(
        "scrape-secret",
        &[
            "bazaar_sagas_open 1",
            "bazaar_sagas_parked 1",
            "bazaar_sagas_overdue 0",
        ],
    )
    .await;

    let restart = format!("/api/v1/admin/sagas/{id}/restart");
    let restarted = app.post(&restart, Some(&admin), json!({})).await;
    assert_eq!(restarted.status, 202, "{}", restarted.body);
    assert!(
        parked(&app, &admin).await.is_empty(),
        "a restarted saga is no longer parked"
    );
    // Due at once: it is re-sent again, and (the step still failing)
    // parked again after its attempts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while parked(&app, &admin).await.is_empty() {
        redrive(&app, &admin, "").await;
        assert!(Instant::now() < deadline, "the restarted saga never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.post(
        &format!("/api/v1/admin/sagas/{id}/restart"),
        Some(&alice),
        json!({}),
    )
    .await
    .assert_problem(403);
    let unknown = app
        .post(
            "/api/v1/admin/sagas/no-such-order/restart",
            Some(&admin),
            json!({}),
        )
        .await;
    unknown.assert_conflict("saga-not-parked");
}

#[tokio::test]
async fn redrive_prunes_what_is_past_retention() {
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "LAMP", 4000, 5).await;
    let alice = app.user("alice@shop.test").await;
    let body = order_body(&product["id"], 1, "tok_ok");
    let placed = app
        .send(
            app.request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
                .header("idempotency-key", "prune-me")
                .json(&body),
        )
        .await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();
    wait_for(&app, &alice, &id, "confirmed").await;
    let kept = redrive(&app, &admin, "").await;
    assert_eq!(
        kept["pruned"],
        json!({ "outbox": 0, "consumed": 0, "idempotency_keys": 0 })
    );
    let bad = app
        .post(
            "/api/v1/admin/saga/redrive?retention_seconds=-1",
            Some(&admin),
            json!({}),
        )
        .await;
    bad.assert_problem(400);
    // The order's announcements and commands (placed, reserve, reserved,
    // charge, charged, confirmed: 6) and the two replies it consumed. The
    // last publication may trail the commit the status showed: sum runs.
    let (mut outbox, mut consumed, mut keys) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox < 6 {
        let pruned = redrive(&app, &admin, "?retention_seconds=0").await;
        outbox += pruned["pruned"]["outbox"].as_u64().unwrap();
        consumed += pruned["pruned"]["consumed"].as_u64().unwrap();
        keys += pruned["pruned"]["idempotency_keys"].as_u64().unwrap();
        assert!(
            Instant::now() < deadline,
            "pruned only {outbox} outbox rows"
        );
    }
    // The order's Idempotency-Key: kept until retention, then gone.
    assert_eq!((outbox, consumed, keys), (6, 2, 1));
}
