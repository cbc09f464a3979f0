//! The gateway's own behaviour: health, OpenAPI, 404/405, request ids,
//! body limits and CORS.

use crate::harness::App;
use serde_json::json;

#[tokio::test]
async fn health_reports_every_service() {
    let app = App::start();
    let reply = app.get("/health", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({ "status": "ok", "services": { "users": "ok", "products": "ok", "orders": "ok", "payments": "ok" } })
    );
}

#[tokio::test]
async fn health_names_an_unreachable_service() {
    let app = App::start_with(&[("SPIN_VARIABLE_PAYMENTS_URL", "http://nowhere.spin.internal")]);
    let reply = app.get("/health", None).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["unhealthy"], json!(["payments"]));
    assert_eq!(reply.body["services"]["users"], "ok");
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let app = App::start();
    let reply = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["openapi"], "3.1.0");
    assert!(reply.body["paths"]["/api/v1/orders/{id}/cancel"]["post"].is_object());
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let app = App::start();
    app.get("/api/v1/nothing-here", None)
        .await
        .assert_problem(404);
    let reply = app
        .send(app.request(reqwest::Method::DELETE, "/api/v1/products", None))
        .await;
    reply.assert_problem(405);
    assert_eq!(reply.body["allow"], "GET, POST");
    assert_eq!(
        reply.header("allow"),
        Some("GET, POST"),
        "RFC 9110: 405 carries Allow"
    );
    app.post("/health", None, json!({}))
        .await
        .assert_problem(405);
}

/// Replies say how long they are: the gateway's own, which it holds whole,
/// and the services' it passes on, which state theirs. A client (and the
/// host's server, which then writes the response at once) need not wait for
/// a chunked body's end.
#[tokio::test]
async fn replies_state_their_length() {
    let app = App::start();
    for path in ["/api/v1/products", "/api/v1/nothing-here", "/health"] {
        let response = app
            .request(reqwest::Method::GET, path, None)
            .send()
            .await
            .unwrap();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        assert_eq!(
            headers.get("content-length").and_then(|v| v.to_str().ok()),
            Some(body.len().to_string().as_str()),
            "{path}"
        );
        assert!(headers.get("transfer-encoding").is_none(), "{path}");
    }
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let app = App::start();
    let reply = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/products", None)
                .header("x-request-id", "client-id-1"),
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some("client-id-1"));
    let reply = app.get("/api/v1/products", None).await;
    assert_eq!(reply.header("x-request-id").map(str::len), Some(32));
    app.wait_for_log("gateway_stdout.txt", "\"request_id\":\"client-id-1\"")
        .await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = App::start_with(&[("SPIN_VARIABLE_MAX_BODY_BYTES", "1024")]);
    let big = json!({ "email": "a@b.test", "password": "x".repeat(2048), "name": "A" });
    app.post("/api/v1/users", None, big)
        .await
        .assert_problem(413);
}

#[tokio::test]
async fn cors_follows_the_allowed_origins() {
    let app = App::start_with(&[("SPIN_VARIABLE_CORS_ALLOWED_ORIGINS", "https://shop.test")]);
    let preflight = app
        .request(reqwest::Method::OPTIONS, "/api/v1/orders", None)
        .header("origin", "https://shop.test")
        .header("access-control-request-method", "POST");
    let reply = app.send(preflight).await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://shop.test")
    );
    assert!(
        reply
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    let other = app
        .request(reqwest::Method::OPTIONS, "/api/v1/orders", None)
        .header("origin", "https://evil.test")
        .header("access-control-request-method", "POST");
    assert_eq!(app.send(other).await.status, 403);
    let simple = app
        .send(
            app.request(reqwest::Method::GET, "/api/v1/products", None)
                .header("origin", "https://shop.test"),
        )
        .await;
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://shop.test")
    );
}

/// #9 item 12: redrive is for administrators and for the application
/// itself. A caller that reaches orders' internal route without the
/// gateway's identity (here an in-process schedule aimed at orders itself)
/// gets 401 and redrives nothing; clients get 404 from the gateway's
/// internal route; the schedule of `bazaar up`, which posts to the
/// gateway's route in-process, gets through on the gateway's account.
#[tokio::test]
async fn internal_redrive_is_the_applications_own() {
    let direct = App::start_with_args(
        &[],
        &[
            "--schedule",
            "http://orders.spin.internal/internal/saga/redrive@100ms",
        ],
    );
    let refused = direct.host.wait_for_stderr(
        "scheduled call failed",
        3,
        std::time::Duration::from_secs(10),
    );
    assert!(refused.contains("\"status\":401"), "{refused}");
    assert_eq!(
        direct.log_count("orders_stdout.txt", "\"msg\":\"saga redrive\""),
        0,
        "orders redrove for a caller without an identity"
    );
    drop(direct);

    let app = App::start();
    let admin = app.admin().await;
    for token in [None, Some(admin.as_str())] {
        app.post("/internal/saga/redrive", token, json!({}))
            .await
            .assert_problem(404);
    }
    let customer = app.user("carol@internal.test").await;
    app.post("/api/v1/admin/saga/redrive", Some(&customer), json!({}))
        .await
        .assert_problem(403);
    let scheduled = app.log_count("orders_stdout.txt", "\"msg\":\"saga redrive\"");
    app.wait_for_log_count(
        "orders_stdout.txt",
        "\"msg\":\"saga redrive\"",
        scheduled + 1,
    )
    .await;
    let reply = app
        .post("/api/v1/admin/saga/redrive", Some(&admin), json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
