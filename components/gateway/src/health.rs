//! `GET /health`: the gateway is up, and so is each service behind it.

use bazaar_api::{StatusCode, json};
use bazaar_service::setting;
use bazaar_trace::{REQUEST_ID, TRACEPARENT};
use spin_sdk::http::{EmptyBody, Request, Response};

use crate::gateway::Context;
use crate::routes::Service;

/// Asks every service's `/health` at once; 503 names those that failed.
pub async fn check(ctx: &Context) -> Response<String> {
    let results = futures::future::join_all(Service::ALL.map(|service| probe(service, ctx))).await;
    let mut services = serde_json::Map::new();
    let mut unhealthy = Vec::new();
    for (service, healthy) in Service::ALL.iter().zip(results) {
        services.insert(
            service.name().into(),
            (if healthy { "ok" } else { "unavailable" }).into(),
        );
        if !healthy {
            unhealthy.push(service.name());
        }
    }
    if unhealthy.is_empty() {
        json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "services": services }),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "unavailable", "unhealthy": unhealthy, "services": services }),
        )
    }
}

async fn probe(service: Service, ctx: &Context) -> bool {
    let Ok(base) = setting(service.url_variable()).await else {
        return false;
    };
    let request = Request::get(crate::routes::url(&base, &service.path("/health")))
        .header(REQUEST_ID, &ctx.request_id)
        .header(TRACEPARENT, ctx.trace.child().to_string())
        .body(EmptyBody::new());
    match request {
        Ok(request) => spin_sdk::http::send(request)
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK),
        Err(_) => false,
    }
}
