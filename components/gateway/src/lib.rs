//! Bazaar's public entry point.
//!
//! For now it answers the liveness probe; routing to the private services
//! lands with the services themselves.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/health") => json(
            200,
            serde_json::json!({
                "status": "ok",
                "service": "gateway",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
        (_, "/health") => problem(
            405,
            "Method Not Allowed",
            "GET is the only method on /health",
        ),
        (_, path) => problem(404, "Not Found", &format!("no route for {path}")),
    }
}

fn json(status: u16, body: serde_json::Value) -> Response<String> {
    respond(status, "application/json", body.to_string())
}

/// RFC 9457 problem details, the error shape every Bazaar service answers with.
fn problem(status: u16, title: &str, detail: &str) -> Response<String> {
    let body = serde_json::json!({ "type": "about:blank", "status": status, "title": title, "detail": detail });
    respond(status, "application/problem+json", body.to_string())
}

fn respond(status: u16, content_type: &str, body: String) -> Response<String> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .expect("static status and header are valid")
}
