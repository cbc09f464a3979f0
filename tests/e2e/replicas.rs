//! Two `bazaar up` processes serving one application from the same stores
//! and the same Redis server, as two replicas of a deployment would — once
//! with the SQLite files shared in WAL mode (one machine), once with each
//! service's database on a libSQL server (several machines): requests alternate between them, orders
//! placed on one are read on the other, and the saga runs with both Redis
//! triggers subscribed (each message reaches both) and both redrive
//! schedules active. Every order must settle exactly once.

use crate::common::{RedisServer, Sqld};
use crate::harness::{App, SERVICE_DATABASES};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ORDERS: usize = 60;
const STOCK: i64 = 500;

#[tokio::test]
async fn two_replicas_on_shared_sqlite_files_settle_every_order_exactly_once() {
    let redis = RedisServer::start();
    let env = [("SPIN_VARIABLE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = App::start_with(&env);
    let b = a.replica(&env, &[]);
    let report = settle_orders_on(&a, &b).await;
    let _ = std::fs::write(
        crate::common::workspace_root().join("target/replicas-report.txt"),
        format!("replicas on shared SQLite files: {report}"),
    );
}

#[tokio::test]
async fn two_replicas_on_libsql_settle_every_order_exactly_once() {
    let redis = RedisServer::start();
    let servers: Vec<Sqld> = SERVICE_DATABASES.iter().map(|_| Sqld::start()).collect();
    let config: String = SERVICE_DATABASES
        .iter()
        .zip(&servers)
        .map(|(label, server)| {
            format!(
                "[sqlite_database.{label}]\ntype = \"libsql\"\nurl = \"{}\"\ntoken = \"unused\"\n",
                server.url()
            )
        })
        .collect();
    let env = [("SPIN_VARIABLE_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = App::start_with_config(&config, &env, &[]);
    let b = a.replica(&env, &[]);
    let report = settle_orders_on(&a, &b).await;
    // Everything is on the servers: the orders database holds each order's
    // events, read over sqld's own API.
    let streams = servers[2]
        .query("SELECT count(DISTINCT order_id) FROM events")
        .await;
    // (libSQL's HTTP API writes integers as strings.)
    assert_eq!(streams[0][0], json!(ORDERS.to_string()), "{streams:?}");
    let _ = std::fs::write(
        crate::common::workspace_root().join("target/replicas-libsql-report.txt"),
        format!("replicas on libSQL (sqld): {report}"),
    );
}

/// Every component's stderr on both replicas, for a failure message.
fn components_stderr(replicas: &[&App]) -> String {
    let mut out = String::new();
    for (name, app) in ["a", "b"].iter().zip(replicas) {
        for component in [
            "orders",
            "order-saga",
            "inventory-step",
            "payments-step",
            "payments",
            "products",
        ] {
            let text = std::fs::read_to_string(app.host_log(&format!("{component}_stderr.txt")))
                .unwrap_or_default();
            if !text.is_empty() {
                out.push_str(&format!("[{name} {component}]\n{text}\n"));
            }
        }
    }
    out
}

/// Runs the scenario on two replicas; the counts, as a line for the report.
async fn settle_orders_on(a: &App, b: &App) -> String {
    let replicas = [a, b];

    // Accounts and the catalogue written on one replica, used on the other.
    let admin = {
        let reply = a.register(crate::harness::ADMIN_EMAIL, "Admin").await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        b.login(crate::harness::ADMIN_EMAIL).await
    };
    let mut products = Vec::new();
    for (i, sku) in ["A", "B", "C"].into_iter().enumerate() {
        let created = replicas[i % 2].product(&admin, sku, 250, STOCK).await;
        let id = created["id"].as_str().unwrap().to_string();
        let seen = replicas[(i + 1) % 2]
            .get(&format!("/api/v1/products/{id}"), None)
            .await;
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.body["stock_available"], STOCK, "{}", seen.body);
        products.push(id);
    }
    let alice = {
        let reply = b.register("alice@shop.test", "Alice").await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        a.login("alice@shop.test").await
    };

    // Orders placed alternately on each replica, 16 at a time; every fifth
    // card is declined, so compensation runs on both too.
    let place = |i: usize| {
        let card = if i % 5 == 4 { "tok_decline" } else { "tok_ok" };
        let body = json!({
            "items": [{ "product_id": products[i % 3], "quantity": 2 }],
            "payment": { "card_token": card },
        });
        let (on, other) = (replicas[i % 2], replicas[(i + 1) % 2]);
        let request = on
            .request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
            .json(&body);
        let alice = alice.as_str();
        async move {
            let placed = on.send(request).await;
            assert_eq!(
                placed.status,
                202,
                "{}\norders' stderr:\n{}",
                placed.body,
                std::fs::read_to_string(on.host_log("orders_stderr.txt")).unwrap_or_default()
            );
            let id = placed.body["id"].as_str().unwrap().to_string();
            // Read on the other process at once: the view is written in the
            // transaction that placed the order, in the shared file.
            let read = other
                .get(&format!("/api/v1/orders/{id}"), Some(alice))
                .await;
            assert_eq!(read.status, 200, "{}", read.body);
            assert_eq!(read.body["id"], id.as_str());
            (i, id)
        }
    };
    let placed: Vec<(usize, String)> = futures::stream::iter((0..ORDERS).map(place))
        .buffer_unordered(16)
        .collect()
        .await;

    // Both replicas' redrive schedules run every 2 s meanwhile.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finals: BTreeMap<String, Value> = BTreeMap::new();
    let mut round = 0;
    while finals.len() < ORDERS {
        for (_, id) in &placed {
            if finals.contains_key(id) {
                continue;
            }
            // An error answer (a busy replica) is no final state: asked again.
            let order = replicas[round % 2]
                .get(&format!("/api/v1/orders/{id}"), Some(&alice))
                .await;
            if order.status == 200 && order.body["status"] != "pending" {
                finals.insert(id.clone(), order.body);
            }
        }
        round += 1;
        assert!(
            Instant::now() < deadline,
            "{} orders still pending after 120 s\n--- a:\n{}\n--- b:\n{}\n--- components' stderr:\n{}",
            ORDERS - finals.len(),
            a.host.stderr(),
            b.host.stderr(),
            components_stderr(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, id) in &placed {
        let order = &finals[id];
        let declined = i % 5 == 4;
        let (status, reason) = if declined {
            ("cancelled", json!("payment_declined"))
        } else {
            ("confirmed", Value::Null)
        };
        assert_eq!(order["status"], status, "order {i}: {order}");
        assert_eq!(
            order.get("cancel_reason").cloned().unwrap_or(Value::Null),
            reason
        );
        if !declined {
            *sold.entry(products[i % 3].as_str()).or_default() += 2;
        }

        // Exactly once: no event twice in the stream, one payment.
        let events = replicas[i % 2]
            .all(&format!("/api/v1/orders/{id}/events"), Some(&alice))
            .await;
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let expected: &[&str] = if declined {
            &[
                "order.placed",
                "order.stock_reserved",
                "order.payment_declined",
                "order.stock_released",
                "order.cancelled",
            ]
        } else {
            &[
                "order.placed",
                "order.stock_reserved",
                "order.payment_charged",
                "order.confirmed",
            ]
        };
        assert_eq!(types, expected, "order {i} ({id})");
        let payments = replicas[(i + 1) % 2]
            .all(&format!("/api/v1/payments?order_id={id}"), Some(&alice))
            .await;
        assert_eq!(payments.len(), 1, "one payment for order {i}: {payments:?}");
        let expected = if declined { "declined" } else { "charged" };
        assert_eq!(payments[0]["status"], expected, "order {i}");
        assert_eq!(payments[0]["amount_cents"], 500, "order {i}");
    }
    // No double reservation: stock went down by exactly what was sold.
    for product in &products {
        for replica in replicas {
            let seen = replica
                .get(&format!("/api/v1/products/{product}"), None)
                .await
                .body;
            assert_eq!(
                seen["stock_available"],
                STOCK - sold.get(product.as_str()).copied().unwrap_or(0),
                "{seen}"
            );
        }
    }
    let parked = b
        .all("/api/v1/admin/sagas?state=parked", Some(&admin))
        .await;
    assert_eq!(parked, Vec::<serde_json::Value>::new());

    // Both processes did the work: each trigger received every message and
    // one of the two consumed it, the other dropped it as a duplicate.
    let counts = |app: &App| {
        [
            "order-saga_stdout.txt",
            "inventory-step_stdout.txt",
            "payments-step_stdout.txt",
        ]
        .map(|file| app.log_count(file, "duplicate dropped"))
    };
    let (dropped_a, dropped_b) = (counts(a), counts(b));
    let confirmed = finals
        .values()
        .filter(|o| o["status"] == "confirmed")
        .count();
    let report = format!(
        "{ORDERS} orders placed alternately on two bazaar processes, {confirmed} confirmed, {} declined, \
         each once; duplicates dropped (saga, inventory, payments): a {dropped_a:?}, b {dropped_b:?}",
        ORDERS - confirmed
    );
    println!("{report}");
    // The messages each step's channel carried at least (redrive may add
    // re-sends): a confirmed order's saga hears reserved and charged, a
    // declined one's also released; inventory gets a reserve per order and
    // a release per decline; payments a charge per order.
    let declined = ORDERS - confirmed;
    let sent = [2 * confirmed + 3 * declined, ORDERS + declined, ORDERS];
    for ((step, sent), (x, y)) in ["saga", "inventory", "payments"]
        .iter()
        .zip(sent)
        .zip(dropped_a.iter().zip(dropped_b.iter()))
    {
        // Which replica handles a message is a race (one may win them
        // all): what holds is that every message reached both, and one of
        // the two dropped it.
        assert!(
            x + y >= sent,
            "{step}: each of its {sent} messages reached both replicas and one dropped it: \
             a dropped {x}, b dropped {y}"
        );
    }
    report
}
