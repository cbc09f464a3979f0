//! Black-box bad input through the public API (#9, "must show"): malformed
//! JSON, wrong types, huge numbers, unicode edge cases, odd paths and query
//! values, oversized headers, and clients that send their headers or body
//! too slowly. Every answer is a 4xx (a problem document where a component
//! answers), none is a 5xx, and the server keeps serving.

use crate::harness::{App, Reply};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asserts a 4xx problem document, naming the case on failure.
fn client_error(case: &str, reply: &Reply) {
    assert!(
        (400..500).contains(&reply.status),
        "{case}: {} {}",
        reply.status,
        reply.body
    );
    reply.assert_problem(reply.status);
}

/// Bodies no endpoint accepts: not JSON, JSON of the wrong shape or types,
/// numbers beyond i64, strings no field allows.
fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let long = "x".repeat(100_000);
    vec![
        ("empty", b"".to_vec()),
        ("truncated", b"{\"email\": ".to_vec()),
        ("not json", b"hello".to_vec()),
        ("NaN", b"{\"price_cents\": NaN}".to_vec()),
        ("array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("string", b"\"a\"".to_vec()),
        ("wrong types", br#"{"email": 5, "name": [], "password": {}}"#.to_vec()),
        (
            "huge number",
            br#"{"sku": "S", "name": "N", "price_cents": 99999999999999999999999, "currency": "EUR", "stock": 1}"#.to_vec(),
        ),
        ("1e400", br#"{"quantity": 1e400}"#.to_vec()),
        (
            "lone surrogate",
            br#"{"email": "\ud800@x.test", "name": "N", "password": "longenough"}"#.to_vec(),
        ),
        ("invalid utf-8", b"{\"name\": \"\xff\xfe\"}".to_vec()),
        (
            "nul and bidi controls",
            "{\"email\": \"a\u{0}\u{202e}@x.test\", \"name\": \"\u{202e}\", \"password\": \"longenough\"}"
                .as_bytes()
                .to_vec(),
        ),
        (
            "long strings",
            format!(r#"{{"email": "{long}@x.test", "name": "{long}", "password": "{long}"}}"#)
                .into_bytes(),
        ),
        ("deep nesting", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
        ("unknown field", br#"{"items": [], "payment": {"card_token": "t"}, "x": 1}"#.to_vec()),
        (
            "negative quantity",
            br#"{"items": [{"product_id": "p", "quantity": -9223372036854775808}], "payment": {"card_token": "t"}}"#.to_vec(),
        ),
    ]
}

#[tokio::test]
async fn bad_input_gets_a_4xx_problem_and_the_server_keeps_serving() {
    // Rate limits off: this test sends many writes from one address.
    let app = App::start_with(&[
        ("SPIN_VARIABLE_REQUEST_BODY_TIMEOUT_MS", "1500"),
        ("SPIN_VARIABLE_RATE_LIMIT_SIGNUP_PER_MINUTE", "0"),
        ("SPIN_VARIABLE_RATE_LIMIT_LOGIN_PER_MINUTE", "0"),
        ("SPIN_VARIABLE_RATE_LIMIT_WRITES_PER_MINUTE", "0"),
    ]);
    let admin = app.admin().await;
    let alice = app.user("alice@bad.test").await;
    let product = app.product(&admin, "BAD-1", 100, 5).await;
    let id = product["id"].as_str().unwrap().to_string();
    let etag = app
        .get(&format!("/api/v1/products/{id}"), None)
        .await
        .header("etag")
        .unwrap()
        .to_string();

    let writes: Vec<(reqwest::Method, String, Option<&str>)> = vec![
        (reqwest::Method::POST, "/api/v1/users".into(), None),
        (reqwest::Method::POST, "/api/v1/auth/token".into(), None),
        (
            reqwest::Method::POST,
            "/api/v1/products".into(),
            Some(&admin),
        ),
        (
            reqwest::Method::PATCH,
            format!("/api/v1/products/{id}"),
            Some(&admin),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/products/{id}/stock"),
            Some(&admin),
        ),
        (reqwest::Method::POST, "/api/v1/orders".into(), Some(&alice)),
    ];
    for (method, path, token) in &writes {
        for (case, body) in bad_bodies() {
            for content_type in ["application/json", "text/plain"] {
                let request = app
                    .request(method.clone(), path, *token)
                    .header("content-type", content_type)
                    .header("if-match", &etag)
                    .body(body.clone());
                let reply = app.send(request).await;
                client_error(&format!("{method} {path} {case} ({content_type})"), &reply);
            }
        }
    }

    let reads = [
        "/api/v1/products?limit=NaN",
        "/api/v1/products?limit=-1",
        "/api/v1/products?limit=99999999999999999999",
        "/api/v1/products?cursor=%00%ff",
        "/api/v1/products/%00",
        "/api/v1/products/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/products/%E2%80%AE",
        "/api/v1/orders/not-an-order",
        "/api/v1/admin/saga/redrive?retention_seconds=NaN",
        "/api/v1/admin/saga/redrive?batch=1e9",
    ];
    for path in reads {
        let method = if path.contains("redrive") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let reply = app.send(app.request(method, path, Some(&admin))).await;
        client_error(path, &reply);
    }

    // A retention longer than time can name keeps everything; it is no trap.
    let forever = app
        .send(app.request(
            reqwest::Method::POST,
            "/api/v1/admin/saga/redrive?retention_seconds=1e12",
            Some(&admin),
        ))
        .await;
    assert_eq!(forever.status, 200, "{}", forever.body);

    let garbage_token = app.get("/api/v1/users/me", Some("\u{202e}.x.y")).await;
    client_error("garbage bearer token", &garbage_token);
    let huge_header = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/products", None)
                .header("x-filler", "f".repeat(512 * 1024)),
        )
        .await;
    assert_eq!(huge_header.status, 431, "a 512 KiB header");
    // Under the host's limit, over the gateway's: the gateway refuses what
    // it could not pass on to a service, instead of failing the call.
    let big_header = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/products", None)
                .header("x-filler", "f".repeat(40 * 1024)),
        )
        .await;
    big_header.assert_problem(431);
    let detail = big_header.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("more than the 32768"), "{detail}");

    // A body that never finishes: the gateway stops waiting and says so
    // (`raw` gives up after 30 s, so waiting for the client fails).
    let (status, response) = raw(
        &app,
        "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"email\":",
    )
    .await;
    assert_eq!(status, 408, "{response}");
    assert!(response.contains("application/problem+json"), "{response}");

    // Headers that never finish: the host hangs up without a word (hyper's
    // header read timeout; `raw` would give up after 30 s).
    let (status, response) = raw(&app, "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1").await;
    assert_eq!((status, response.as_str()), (0, ""));

    let health = app.get("/health", None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(app.get("/api/v1/products", None).await.status, 200);
}

/// Writes `request` on a raw connection and reads until the server answers
/// or hangs up (bounded): the status (0 when none) and what it sent.
async fn raw(app: &App, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(app.host.socket_address())
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    response.extend_from_slice(&buffer[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server neither answered nor hung up in 30 s"
    );
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
