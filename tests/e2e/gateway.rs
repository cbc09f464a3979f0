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
            "http://orders.spin.internal/services/orders/internal/saga/redrive@100ms",
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

/// An identity token `key` signs, in which `issuer` vouches for an
/// administrator on `method` `path` of `service`.
fn admin_token(key: &str, issuer: &str, service: &str, method: &str, path: &str) -> String {
    let hop = bazaar_auth::Hop {
        service,
        method,
        path,
    };
    let admin = bazaar_auth::Identity {
        sub: "mallory".into(),
        email: "mallory@direct.test".into(),
        roles: vec![bazaar_auth::ADMIN_ROLE.into()],
    };
    let key = bazaar_auth::SigningKey::new("key", key).unwrap();
    bazaar_auth::issue_identity(&key, issuer, &hop, &admin, bazaar_auth::now(), 5)
}

/// #26: each service has a route of its own (`/services/<name>/...`), on
/// this listener as on a process of its own. A client there without the
/// gateway's identity token gets 401 on every route but the catalogue's
/// reads (public data, the same through the gateway), access token or not;
/// so does one with a token a service's own key signed, whatever issuer it
/// names. The same claims signed with the gateway's key get through: the
/// key is what refuses.
#[tokio::test]
async fn services_refuse_clients_who_go_around_the_gateway() {
    use crate::harness::{ADMIN_EMAIL, GATEWAY_IDENTITY_KEY, ORDERS_IDENTITY_KEY, PASSWORD};
    use reqwest::Method;
    let app = App::start();
    let admin = app.admin().await;
    let product = app.product(&admin, "DIRECT-1", 500, 3).await;
    let new_product = |sku: &str| json!({ "sku": sku, "name": "Direct", "price_cents": 100, "currency": "EUR", "stock": 1 });
    let mallory =
        json!({ "email": "mallory@direct.test", "password": PASSWORD, "name": "Mallory" });
    let direct: [(Method, &str, Option<serde_json::Value>); 6] = [
        (
            Method::POST,
            "/services/users/api/v1/users",
            Some(mallory.clone()),
        ),
        (
            Method::POST,
            "/services/users/api/v1/auth/token",
            Some(json!({ "email": ADMIN_EMAIL, "password": PASSWORD })),
        ),
        (Method::GET, "/services/users/api/v1/users/me", None),
        (Method::GET, "/services/orders/api/v1/orders", None),
        (
            Method::POST,
            "/services/products/api/v1/products",
            Some(new_product("DIRECT-2")),
        ),
        (
            Method::GET,
            "/services/payments/api/v1/payments?order_id=x",
            None,
        ),
    ];
    for (method, path, body) in direct {
        for token in [None, Some(admin.as_str())] {
            let mut request = app.request(method.clone(), path, token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let reply = app.send(request).await;
            reply.assert_problem(401);
            assert!(
                reply.body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("through the gateway"),
                "{method} {path}: {}",
                reply.body
            );
        }
    }
    // The refused sign-up left nothing behind.
    assert_eq!(
        app.register("mallory@direct.test", "Mallory").await.status,
        201
    );

    let path = "/services/products/api/v1/products";
    for (key, issuer) in [
        (ORDERS_IDENTITY_KEY, "bazaar-gateway"),
        (ORDERS_IDENTITY_KEY, "orders"),
    ] {
        let forged = admin_token(key, issuer, "products", "POST", path);
        let reply = app
            .send(
                app.request(Method::POST, path, None)
                    .header("x-bazaar-identity", forged)
                    .json(&new_product("FORGED-1")),
            )
            .await;
        reply.assert_problem(401);
    }
    let genuine = admin_token(
        GATEWAY_IDENTITY_KEY,
        "bazaar-gateway",
        "products",
        "POST",
        path,
    );
    let reply = app
        .send(
            app.request(Method::POST, path, None)
                .header("x-bazaar-identity", genuine)
                .json(&new_product("GENUINE-1")),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let catalogue = app.all("/api/v1/products", None).await;
    let skus: Vec<&str> = catalogue.iter().filter_map(|p| p["sku"].as_str()).collect();
    assert_eq!(skus.len(), 2, "{skus:?}");
    assert!(
        skus.contains(&"GENUINE-1") && !skus.contains(&"FORGED-1"),
        "{skus:?}"
    );

    let id = product["id"].as_str().unwrap();
    let at_service = app
        .get(&format!("/services/products/api/v1/products/{id}"), None)
        .await;
    let through_gateway = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(at_service.status, 200, "{}", at_service.body);
    assert_eq!(at_service.body, through_gateway.body);
}
