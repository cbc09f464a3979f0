//! The gateway in front of a service that misbehaves on demand: deadlines,
//! retries, the circuit breaker, rate limits, and the headers only the
//! gateway may set.
//!
//! The misbehaving service is a real HTTP server in this test process,
//! reached through the gateway's `products_url` variable exactly as a
//! products service deployed elsewhere would be.

use crate::harness::App;
use crate::test_server::serve;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the upstream answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok,
    /// Answers this status every time.
    Fail(u16),
    /// Answers this status to the next `n` requests, then 200.
    FailNext(u32, u16),
    /// Answers after this long.
    Slow(Duration),
}

/// A request the upstream received: method, and each header's values.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Clone)]
struct Upstream {
    url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let mut upstream = Upstream {
            url: String::new(),
            behaviour: Arc::new(Mutex::new(Behaviour::Ok)),
            seen: Arc::default(),
        };
        let state = upstream.clone();
        upstream.url = serve(move |req| {
            let state = state.clone();
            async move { state.answer(req).await }
        })
        .await;
        upstream
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
        });
        let (status, pause) = {
            let mut behaviour = self.behaviour.lock().unwrap();
            match *behaviour {
                Behaviour::Ok => (200, None),
                Behaviour::Fail(status) => (status, None),
                Behaviour::FailNext(n, status) => {
                    *behaviour = if n > 1 {
                        Behaviour::FailNext(n - 1, status)
                    } else {
                        Behaviour::Ok
                    };
                    (status, None)
                }
                Behaviour::Slow(pause) => (200, Some(pause)),
            }
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({ "upstream": status }).to_string(),
            )))
            .unwrap()
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The app with its products service replaced by `upstream`.
fn app_in_front_of(upstream: &Upstream, env: &[(&str, &str)]) -> App {
    let mut all = vec![("SPIN_VARIABLE_PRODUCTS_URL", upstream.url.as_str())];
    all.extend_from_slice(env);
    App::start_with(&all)
}

#[tokio::test]
async fn a_slow_service_gets_504_at_its_deadline_and_learns_its_budget() {
    let upstream = Upstream::start().await;
    let app = app_in_front_of(&upstream, &[("SPIN_VARIABLE_PRODUCTS_TIMEOUT_MS", "400")]);
    // Slower than the test would wait: an answer at all is one at the deadline.
    upstream.set(Behaviour::Slow(Duration::from_secs(3600)));
    let reply = app.get("/api/v1/products", None).await;
    reply.assert_problem(504);
    assert_eq!(reply.body["service"], "products", "{}", reply.body);
    assert!(
        reply.body["detail"].as_str().unwrap().contains("400 ms"),
        "{}",
        reply.body
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "a time-out is not retried");
    let budget: u64 = seen[0].values("x-timeout-ms")[0].parse().unwrap();
    assert!(budget > 0 && budget <= 400, "{budget}");
}

#[tokio::test]
async fn only_idempotent_requests_are_retried() {
    let upstream = Upstream::start().await;
    // The same stand-in answers for orders, whose `POST /orders` honours
    // `Idempotency-Key`.
    let app = app_in_front_of(
        &upstream,
        &[
            ("SPIN_VARIABLE_BREAKER_MIN_CALLS", "1000"),
            ("SPIN_VARIABLE_ORDERS_URL", upstream.url.as_str()),
        ],
    );

    upstream.set(Behaviour::FailNext(1, 503));
    let reply = app.get("/api/v1/products", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(upstream.count(), 2, "one failure, one retry");

    upstream.set(Behaviour::Fail(503));
    let reply = app
        .post("/api/v1/products", None, json!({ "sku": "A" }))
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["upstream"], 503, "the service's own answer");
    assert_eq!(
        upstream.count(),
        3,
        "a POST without Idempotency-Key is sent once"
    );

    // #28: a key on a write whose service does not honour it (a retry of a
    // POST /products that had succeeded would answer 409) is not a reason
    // to send it twice.
    let keyed = |path: &str, key: &str| {
        app.request(reqwest::Method::POST, path, None)
            .header("idempotency-key", key)
            .json(&json!({ "sku": "A" }))
    };
    let reply = app.send(keyed("/api/v1/products", "k-0")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(upstream.count(), 4, "a keyed POST /products is sent once");

    let reply = app.send(keyed("/api/v1/orders", "k-1")).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let keyed: Vec<_> = upstream.seen()[4..].to_vec();
    assert_eq!(keyed.len(), 3, "retried retry_max (2) times");
    assert!(
        keyed
            .iter()
            .all(|s| s.method == "POST" && s.values("idempotency-key") == ["k-1"])
    );

    // A 500 is not a transient failure: not retried.
    upstream.set(Behaviour::Fail(500));
    app.get("/api/v1/products", None).await;
    assert_eq!(upstream.count(), 8);
}

/// An app in front of a products service that fails every call, after the
/// four failures that open its circuit for `open_seconds` (no retries).
async fn tripped_circuit(open_seconds: &str, env: &[(&str, &str)]) -> (Upstream, App) {
    let upstream = Upstream::start().await;
    let mut all = vec![
        ("SPIN_VARIABLE_BREAKER_MIN_CALLS", "4"),
        ("SPIN_VARIABLE_BREAKER_OPEN_SECONDS", open_seconds),
        ("SPIN_VARIABLE_RETRY_MAX", "0"),
    ];
    all.extend_from_slice(env);
    let app = app_in_front_of(&upstream, &all);
    upstream.set(Behaviour::Fail(500));
    for _ in 0..4 {
        assert_eq!(app.get("/api/v1/products", None).await.status, 500);
    }
    (upstream, app)
}

#[tokio::test]
async fn a_failing_service_trips_its_circuit_and_a_probe_closes_it() {
    let (upstream, app) = tripped_circuit("1", &[]).await;
    assert_eq!(upstream.count(), 4);

    // Open: refused without calling the service, with a time to come back.
    let reply = app.get("/api/v1/products/p-1", None).await;
    reply.assert_problem(503);
    assert_eq!(reply.body["service"], "products");
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("circuit open")
    );
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    assert_eq!(
        upstream.count(),
        4,
        "an open circuit does not call the service"
    );
    // Another service is not affected.
    app.get("/api/v1/users/me", None).await.assert_problem(401);

    // The service recovers; after the open period one probe closes the circuit.
    upstream.set(Behaviour::Ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = app.get("/api/v1/products", None).await;
        if reply.status == 200 {
            break;
        }
        reply.assert_problem(503);
        assert!(reply.header("retry-after").is_some());
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upstream.count(), 5, "exactly one probe");
    for _ in 0..3 {
        assert_eq!(app.get("/api/v1/products", None).await.status, 200);
    }
    assert_eq!(upstream.count(), 8);
    app.wait_for_log("gateway_stdout.txt", "circuit opened")
        .await;
    app.wait_for_log("gateway_stdout.txt", "circuit closed")
        .await;
}

/// What an operator scrapes says which circuit is open, and that the
/// failing service did not answer for its own numbers.
#[tokio::test]
async fn the_application_metrics_show_an_open_circuit() {
    let (_upstream, app) =
        tripped_circuit("600", &[("SPIN_VARIABLE_METRICS_TOKEN", "scrape-secret")]).await;
    app.get("/api/v1/products", None).await.assert_problem(503);

    app.assert_app_metrics(
        "scrape-secret",
        &[
            "bazaar_circuit_state{service=\"products\"} 2",
            "bazaar_circuit_state{service=\"orders\"} 0",
            "bazaar_app_metrics_up{service=\"products\"} 0",
            "bazaar_app_metrics_up{service=\"orders\"} 1",
        ],
    )
    .await;
}

/// The scheduled saga redrive is the application's upkeep, not a client's
/// call: its failures must not open the orders circuit for the customers.
#[tokio::test]
async fn failing_scheduled_redrives_do_not_open_the_circuit_for_clients() {
    let upstream = Upstream::start().await;
    let app = App::start_with(&[
        ("SPIN_VARIABLE_ORDERS_URL", upstream.url.as_str()),
        ("SPIN_VARIABLE_BREAKER_MIN_CALLS", "2"),
        ("SPIN_VARIABLE_RETRY_MAX", "0"),
    ]);
    upstream.set(Behaviour::Fail(500));
    // `bazaar up`'s default schedule posts the redrive every 2 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the redrive schedule never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upstream.set(Behaviour::Ok);
    let reply = app.get("/api/v1/orders", None).await;
    assert_eq!(
        reply.status, 200,
        "the orders circuit refused a client after failed redrives: {}",
        reply.body
    );
    assert_eq!(upstream.seen().last().unwrap().method, "GET");
}

#[tokio::test]
async fn logins_sign_ups_and_writes_are_rate_limited() {
    let app = App::start_with(&[
        ("SPIN_VARIABLE_RATE_LIMIT_LOGIN_PER_MINUTE", "3"),
        ("SPIN_VARIABLE_RATE_LIMIT_SIGNUP_PER_MINUTE", "2"),
        ("SPIN_VARIABLE_RATE_LIMIT_WRITES_PER_MINUTE", "2"),
    ]);
    assert_eq!(app.register("a@bazaar.test", "A").await.status, 201);
    assert_eq!(app.register("b@bazaar.test", "B").await.status, 201);
    let reply = app.register("c@bazaar.test", "C").await;
    reply.assert_problem(429);
    let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    let a = app.login("a@bazaar.test").await;
    let b = app.login("b@bazaar.test").await;
    let wrong = json!({ "email": "a@bazaar.test", "password": "wrong password" });
    app.post("/api/v1/auth/token", None, wrong.clone())
        .await
        .assert_problem(401);
    let reply = app.post("/api/v1/auth/token", None, wrong).await;
    reply.assert_problem(429);
    assert!(reply.header("retry-after").is_some());

    // Writes count per user: A's limit is not B's.
    for _ in 0..2 {
        let reply = app.post("/api/v1/orders", Some(&a), json!({})).await;
        assert_eq!(reply.status, 422, "{}", reply.body);
    }
    app.post("/api/v1/orders", Some(&a), json!({}))
        .await
        .assert_problem(429);
    assert_eq!(
        app.post("/api/v1/orders", Some(&b), json!({})).await.status,
        422
    );
    // Reads are not limited.
    assert_eq!(app.get("/api/v1/orders", Some(&a)).await.status, 200);
}

/// #28: counted atomically on Redis, a limit holds under concurrency: 40
/// concurrent writes by one user, alternating between two replicas, at a
/// limit of 10 per minute: at most 10 pass (the old read-check-write count
/// let 17 through). Every counter has a time to live.
#[tokio::test]
async fn a_write_limit_holds_for_concurrent_requests_on_two_replicas() {
    let redis = crate::common::RedisServer::start();
    let url = redis.url();
    let env = [
        ("SPIN_VARIABLE_REDIS_URL", url.as_str()),
        ("SPIN_VARIABLE_RATE_LIMIT_WRITES_PER_MINUTE", "10"),
    ];
    let a = App::start_with(&env);
    let b = a.replica(&env, &[]);
    let token = a.user("busy@limits.test").await;
    let replies = futures::future::join_all((0..40).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post("/api/v1/orders", Some(&token), json!({}))
    }))
    .await;
    let passed = replies.iter().filter(|r| r.status == 422).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        passed + refused,
        40,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        (1..=10).contains(&passed),
        "{passed} writes passed a limit of 10"
    );

    let redis_cli = |args: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .args(["-u", &url])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8(output.stdout).unwrap()
    };
    let keys = redis_cli(&["--scan", "--pattern", "bazaar:rate:writes:*"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(!keys.is_empty(), "no counters on the Redis server");
    for key in keys {
        let ttl: i64 = redis_cli(&["TTL", key]).trim().parse().unwrap();
        assert!((1..=120).contains(&ttl), "{key}: TTL {ttl}");
    }
}

#[tokio::test]
async fn the_gateway_sets_trace_request_id_and_forwarding_headers_itself() {
    let upstream = Upstream::start().await;
    let app = app_in_front_of(&upstream, &[]);
    let client_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/products", None)
                .header("traceparent", client_trace)
                .header("x-request-id", "client-id-7")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-timeout-ms", "999999999"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = &upstream.seen()[0];
    let trace = seen.values("traceparent");
    assert_eq!(trace.len(), 1, "{seen:?}");
    assert!(
        trace[0].starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "same trace"
    );
    assert_ne!(trace[0], client_trace, "the gateway's own span");
    assert_eq!(seen.values("x-request-id"), ["client-id-7"]);
    assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"]);
    let budget = seen.values("x-timeout-ms");
    assert_eq!(budget.len(), 1);
    assert!(budget[0].parse::<u64>().unwrap() <= 5000, "{budget:?}");
}

/// #9 item 11: the identity token the gateway sends is good for this one
/// call only: this service, this method, this path and query, 15 s.
#[tokio::test]
async fn identity_tokens_are_bound_to_the_service_method_and_path() {
    use bazaar_auth::{GATEWAY, Hop, VerifyingKeys, verify_identity};
    let upstream = Upstream::start().await;
    let app = app_in_front_of(&upstream, &[]);
    let alice = app.user("alice@hop.test").await;
    let path = "/api/v1/products?limit=3";
    let reply = app.get(path, Some(&alice)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.seen().pop().expect("the upstream was called");
    let tokens = seen.values("x-bazaar-identity");
    assert_eq!(tokens.len(), 1, "{seen:?}");
    let keys = VerifyingKeys::new(
        "gateway_identity_public_keys",
        crate::harness::GATEWAY_IDENTITY_PUBLIC_KEY,
    )
    .unwrap();
    // The service is asked on its own route, and the token names that.
    let hop = Hop {
        service: "products",
        method: "GET",
        path: "/services/products/api/v1/products?limit=3",
    };
    let identity = verify_identity(&keys, GATEWAY, &hop, tokens[0], bazaar_auth::now())
        .expect("good for this very call");
    assert_eq!(identity.email, "alice@hop.test");
    for other in [
        Hop {
            service: "orders",
            ..hop
        },
        Hop {
            method: "POST",
            ..hop
        },
        Hop {
            path: "/services/products/api/v1/products?limit=4",
            ..hop
        },
        Hop { path, ..hop },
    ] {
        assert!(
            verify_identity(&keys, GATEWAY, &other, tokens[0], bazaar_auth::now()).is_err(),
            "replayable as {other:?}"
        );
    }
    // The claims' lifetime, read without trusting them.
    let payload = tokens[0].split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        15,
        "{claims}"
    );
}
