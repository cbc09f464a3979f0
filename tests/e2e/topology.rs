//! #26: the application split as servers run it. One `bazaar up -c`
//! process per HTTP service, and a saga worker running the three
//! Redis-triggered functions (`-c order-saga -c inventory-step -c
//! payments-step`), all from the same spin.toml; a real `redis-server`;
//! each service's own SQLite file. The gateway reaches the services over
//! real sockets at their `*_url`, and orders reaches products the same way.
//!
//! The API's scenarios run through the gateway. Then a service is killed
//! (SIGKILL) and restarted while the others keep serving, and the saga
//! worker is killed in the middle of a burst of orders. Every order must
//! settle, each confirmed one charged once, and the stock must be exact.
//! The times it took go to `target/topology-report.txt`.

use crate::chaos::{events_follow_the_state_machine, payment_rows_add_up, settle, snapshot};
use crate::common::RedisServer;
use crate::harness::{App, REDIS_CHANNELS, Reply, file_databases, order_body};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One process of the split application.
struct Part {
    name: &'static str,
    components: &'static [&'static str],
    /// Whether it serves HTTP (else it only handles Redis messages).
    http: bool,
    /// The Redis channels it subscribes to.
    subscriptions: usize,
}

/// The processes, in an order in which each finds the services it calls
/// already listening (orders calls products; the gateway, all four).
const PARTS: [Part; 6] = [
    Part {
        name: "users",
        components: &["users"],
        http: true,
        subscriptions: 0,
    },
    Part {
        name: "products",
        components: &["products"],
        http: true,
        subscriptions: 0,
    },
    Part {
        name: "payments",
        components: &["payments"],
        http: true,
        subscriptions: 0,
    },
    Part {
        name: "orders",
        components: &["orders"],
        http: true,
        subscriptions: 0,
    },
    Part {
        name: "gateway",
        components: &["gateway"],
        http: true,
        subscriptions: 0,
    },
    Part {
        name: "saga",
        components: &["order-saga", "inventory-step", "payments-step"],
        http: false,
        subscriptions: REDIS_CHANNELS,
    },
];

struct Topology {
    _redis: RedisServer,
    /// Holds the services' SQLite files and the runtime config naming them.
    _stores: tempfile::TempDir,
    config_file: PathBuf,
    /// What every process is given: the shared settings, then each
    /// service's URL once it listens.
    env: Vec<(String, String)>,
    /// Where each HTTP part listens (`127.0.0.1:port`), kept across restarts.
    addresses: BTreeMap<&'static str, String>,
    running: BTreeMap<&'static str, App>,
}

impl Topology {
    fn start() -> Topology {
        let redis = RedisServer::start();
        let stores = tempfile::tempdir().unwrap();
        let config_file = stores.path().join("runtime-config.toml");
        std::fs::write(&config_file, file_databases(stores.path())).unwrap();
        let env = [
            ("SPIN_VARIABLE_REDIS_URL", redis.url().as_str()),
            // A dead service's circuit opens after a few calls and is
            // probed again 2 s later; sagas whose messages were lost are
            // re-sent after 1 s.
            ("SPIN_VARIABLE_BREAKER_MIN_CALLS", "4"),
            ("SPIN_VARIABLE_BREAKER_OPEN_SECONDS", "2"),
            ("SPIN_VARIABLE_SAGA_REPLY_TIMEOUT_SECONDS", "1"),
            ("SPIN_VARIABLE_RATE_LIMIT_WRITES_PER_MINUTE", "0"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        let mut topology = Topology {
            _redis: redis,
            _stores: stores,
            config_file,
            env,
            addresses: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for part in &PARTS {
            topology.launch(part, "127.0.0.1:0");
            if let Some(address) = topology.addresses.get(part.name)
                && part.name != "gateway"
            {
                topology.env.push((
                    format!("SPIN_VARIABLE_{}_URL", part.name.to_uppercase()),
                    format!("http://{address}"),
                ));
            }
        }
        topology
    }

    fn part(name: &str) -> &'static Part {
        PARTS.iter().find(|p| p.name == name).unwrap()
    }

    fn launch(&mut self, part: &Part, listen: &str) {
        let args: Vec<&str> = part.components.iter().flat_map(|c| ["-c", c]).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let app = App::start_part(
            self.config_file.clone(),
            &env,
            &args,
            part.http.then_some(listen),
            part.subscriptions,
        );
        if part.http {
            self.addresses.insert(part.name, app.host.socket_address());
        }
        self.running.insert(part.name, app);
    }

    /// The way in for clients.
    fn gateway(&self) -> &App {
        &self.running["gateway"]
    }

    /// Kills `name`'s process with SIGKILL: no shutdown of any kind.
    fn kill(&mut self, name: &str) {
        drop(self.running.remove(name));
    }

    /// Starts `name` again, on the address it had.
    fn restart(&mut self, name: &str) {
        let part = Self::part(name);
        let listen = self
            .addresses
            .get(name)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        self.launch(part, &listen);
    }
}

/// The 95th percentile of `samples` (sorted in place).
fn p95(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() * 95).div_ceil(100) - 1]
}

/// Places order `i` of a burst as `token`: 1 to 3 of `product`, every
/// fifth with a card the processor declines. Its id.
async fn place(shop: &App, token: &str, product: &str, i: usize) -> String {
    let card = if i % 5 == 4 { "tok_decline" } else { "tok_ok" };
    let body = order_body(&product, 1 + (i % 3) as i64, card);
    let placed = shop.post("/api/v1/orders", Some(token), body).await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    placed.body["id"].as_str().unwrap().to_string()
}

/// A timed GET through the gateway.
async fn timed_get(app: &App, path: &str, token: Option<&str>) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = app.get(path, token).await;
    (reply, started.elapsed())
}

#[tokio::test]
async fn split_services_fail_and_recover_on_their_own() {
    const STOCK: i64 = 200;
    let mut topology = Topology::start();
    let mut report = Vec::new();

    // The API through the gateway, every service in its own process.
    let shop = topology.gateway();
    let health = shop.get("/health", None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let admin = shop.admin().await;
    let alice = shop.user("alice@split.test").await;
    let product = shop.product(&admin, "SPLIT-1", 700, STOCK).await;
    let product_id = product["id"].as_str().unwrap().to_string();
    let product_path = format!("/api/v1/products/{product_id}");
    let placed = shop
        .post(
            "/api/v1/orders",
            Some(&alice),
            order_body(&product_id, 2, "tok_ok"),
        )
        .await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    let first_order = placed.body["id"].as_str().unwrap().to_string();
    crate::saga::wait_for(shop, &alice, &first_order, "confirmed").await;
    let me = shop.get("/api/v1/users/me", Some(&alice)).await;
    assert_eq!(me.body["email"], "alice@split.test", "{}", me.body);
    let payments_path = format!("/api/v1/payments?order_id={first_order}");
    let payments = shop.get(&payments_path, Some(&alice)).await;
    assert_eq!(
        payments.body["items"][0]["status"], "charged",
        "{}",
        payments.body
    );

    // products goes away: its routes fail over to 503 once its circuit
    // opens, quickly, and everything else keeps answering.
    topology.kill("products");
    let shop = topology.gateway();
    let mut tries = 0;
    loop {
        let reply = shop.get(&product_path, None).await;
        if reply.status == 503 {
            break;
        }
        assert_eq!(reply.status, 502, "{}", reply.body);
        tries += 1;
        assert!(tries < 20, "the circuit never opened");
    }
    let mut refusals = Vec::new();
    for _ in 0..20 {
        let (reply, took) = timed_get(shop, &product_path, None).await;
        reply.assert_problem(503);
        assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
        assert_eq!(reply.body["service"], "products", "{}", reply.body);
        refusals.push(took);
    }
    let refusal_p95 = p95(&mut refusals);
    report.push(format!(
        "products killed: {tries} calls answered 502 before its circuit opened; 503 p95 {:.1} ms",
        refusal_p95.as_secs_f64() * 1e3
    ));
    // An open circuit answers without calling anyone: far below any
    // deadline (5 s), whatever the machine's load.
    assert!(refusal_p95 < Duration::from_secs(1), "{refusal_p95:?}");
    let health = shop.get("/health", None).await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(
        health.body["unhealthy"],
        json!(["products"]),
        "{}",
        health.body
    );
    for (path, token) in [
        ("/api/v1/users/me", &alice),
        ("/api/v1/orders", &alice),
        (payments_path.as_str(), &alice),
        ("/api/v1/admin/sagas?state=open", &admin),
    ] {
        let reply = shop.get(path, Some(token)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }

    // Back on its address: the half-open probe lets the first call through.
    let back = Instant::now();
    topology.restart("products");
    let shop = topology.gateway();
    let recovered = loop {
        let reply = shop.get(&product_path, None).await;
        if reply.status == 200 {
            break back.elapsed();
        }
        reply.assert_problem(503);
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "products never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    report.push(format!(
        "products restarted: served again through the gateway {:.2} s after its process started (its circuit's open time is 2 s)",
        recovered.as_secs_f64()
    ));
    let health = shop.get("/health", None).await;
    assert_eq!(health.status, 200, "{}", health.body);

    // The saga worker dies in the middle of a burst; the orders placed
    // while it is away wait for it, and none is lost.
    const ORDERS: usize = 40;
    let buyers = [alice.clone(), shop.user("bob@split.test").await];
    let worker = topology.running.remove("saga");
    let shop = topology.gateway();
    let mut placing =
        futures::stream::iter((0..ORDERS).map(|i| place(shop, &buyers[i % 2], &product_id, i)))
            .buffer_unordered(8);
    let mut ids = Vec::new();
    let mut worker = Some(worker);
    while let Some(id) = placing.next().await {
        ids.push(id);
        if ids.len() == ORDERS / 2 {
            drop(worker.take());
        }
    }
    drop(placing);
    // The orders placed after the kill (all but the 8 in flight) cannot
    // have settled: no process runs the saga.
    let mut pending = 0;
    for id in &ids {
        let order = shop
            .get(&format!("/api/v1/orders/{id}"), Some(&admin))
            .await;
        pending += usize::from(order.body["status"] == "pending");
    }
    assert!(pending >= ORDERS / 2 - 8, "{pending} orders pending");
    let back = Instant::now();
    topology.restart("saga");
    let shop = topology.gateway();
    settle(shop, &admin, &ids, Duration::from_secs(120)).await;
    report.push(format!(
        "saga worker killed after {} of {ORDERS} orders were placed, {pending} pending when the burst ended: all settled {:.2} s after it restarted",
        ORDERS / 2,
        back.elapsed().as_secs_f64()
    ));

    ids.push(first_order);
    let all = snapshot(shop, &admin, &ids).await;
    let mut sold = 0;
    for (id, (order, events, payments)) in &all {
        let payments = payments.as_array().unwrap();
        payment_rows_add_up(id, order, payments);
        events_follow_the_state_machine(id, order, events);
        let charged = payments.iter().filter(|p| p["status"] == "charged").count();
        match order["status"].as_str().unwrap() {
            "confirmed" => {
                assert_eq!(charged, 1, "order {id}: {payments:?}");
                sold += order["items"][0]["quantity"].as_i64().unwrap();
            }
            "cancelled" => assert_eq!(charged, 0, "order {id}: {payments:?}"),
            other => panic!("order {id} ended {other}"),
        }
    }
    let product: Value = shop.get(&product_path, None).await.body;
    assert_eq!(product["stock_available"], json!(STOCK - sold), "{product}");
    let parked = shop
        .all("/api/v1/admin/sagas?state=parked", Some(&admin))
        .await;
    assert!(parked.is_empty(), "{parked:?}");

    let report = report.join("\n");
    println!("{report}");
    let _ = std::fs::write(
        crate::common::workspace_root().join("target/topology-report.txt"),
        format!("split topology (one process per service, a saga worker):\n{report}\n"),
    );
}
