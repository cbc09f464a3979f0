//! `GET /metrics`: what only the application knows, in the OpenMetrics
//! text format — each service's circuit, the order saga's backlog and parked
//! sagas, and each service's unpublished outbox messages. A route of the gateway component,
//! so it works on Spin as on `bazaar up`; the host's own metrics are
//! separate (`bazaar up --metrics-listen`).
//!
//! Off unless the `metrics_token` variable is set; the scraper then sends
//! it as a bearer token. The numbers are business data: an open route would
//! publish them to anyone.

use bazaar_api::{Problem, StatusCode};
use bazaar_gateway_resilience::Breaker;
use bazaar_service::{header, setting};
use bytes::Bytes;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{EmptyBody, HeaderValue, Request, Response};
use std::time::Duration;
use subtle::ConstantTimeEq;

use crate::circuit::Circuit;
use crate::gateway::{Context, Reply, identity_token};
use crate::routes::Service;
use crate::wasi_http::Body;

type Labels = Vec<(String, String)>;

/// How long the gateway waits for a service's numbers.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn scrape(req: &Request, ctx: &Context) -> Result<Reply, Problem> {
    let token = setting("metrics_token").await?;
    if token.is_empty() {
        return Err(Problem::not_found(
            "application metrics are off: set the metrics_token variable",
        ));
    }
    let presented = header(req, "authorization");
    let presented = presented
        .as_deref()
        .and_then(bazaar_auth::bearer)
        .unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        return Err(Problem::unauthorized(
            "send the metrics token as `Authorization: Bearer <metrics_token>`",
        ));
    }

    let mut registry = Registry::default();
    let circuits = Family::<Labels, Gauge>::default();
    registry.register(
        "bazaar_circuit_state",
        "The gateway's circuit for each service: 0 closed, 1 half-open, 2 open",
        circuits.clone(),
    );
    for service in Service::ALL {
        let state = match Circuit::load(service).await?.state {
            Breaker::Closed | Breaker::Counting { .. } => 0,
            Breaker::HalfOpen { .. } => 1,
            Breaker::Open { .. } => 2,
        };
        circuits.get_or_create(&service_label(service)).set(state);
    }

    let up = Family::<Labels, Gauge>::default();
    registry.register(
        "bazaar_app_metrics_up",
        "1 if the service answered the gateway's request for its numbers",
        up.clone(),
    );
    let outbox = Family::<Labels, Gauge>::default();
    registry.register(
        "bazaar_outbox_unpublished",
        "Messages committed but not yet published to Redis",
        outbox.clone(),
    );
    let asked = [Service::Orders, Service::Products, Service::Payments];
    let answers = futures::future::join_all(asked.map(|service| ask(service, ctx))).await;
    for (service, numbers) in asked.into_iter().zip(answers) {
        up.get_or_create(&service_label(service))
            .set(i64::from(numbers.is_some()));
        let Some(numbers) = numbers else { continue };
        // A number the service did not give is left out, not reported as 0:
        // an absent series alerts (`absent()`), a false 0 would not.
        if let Some(unpublished) = numbers["outbox_unpublished"].as_i64() {
            outbox
                .get_or_create(&service_label(service))
                .set(unpublished);
        }
        if service != Service::Orders {
            continue;
        }
        for (name, help, key) in [
            (
                "bazaar_sagas_open",
                "Orders whose saga has not settled",
                "sagas_open",
            ),
            (
                "bazaar_sagas_overdue",
                "Open sagas past their redrive deadline: the redrive backlog",
                "sagas_overdue",
            ),
            (
                "bazaar_sagas_parked",
                "Sagas parked for an administrator after saga_max_attempts",
                "sagas_parked",
            ),
        ] {
            let Some(value) = numbers[key].as_i64() else {
                continue;
            };
            let gauge = Gauge::<i64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    }

    let mut text = String::new();
    encode(&mut text, &registry)
        .map_err(|e| Problem::internal(format!("the metrics could not be encoded: {e}")))?;
    let mut reply = Response::new(Body::Whole(Bytes::from(text)));
    reply.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    *reply.status_mut() = StatusCode::OK;
    Ok(reply)
}

fn service_label(service: Service) -> Labels {
    vec![("service".to_string(), service.name().to_string())]
}

/// A service's `GET /internal/metrics` (JSON), asked on the gateway's own
/// account, or `None` if it did not answer in time.
async fn ask(service: Service, ctx: &Context) -> Option<serde_json::Value> {
    let path = service.path("/internal/metrics");
    let base = setting(service.url_variable()).await.ok()?;
    let token = identity_token(service, "GET", &path, &bazaar_auth::Identity::gateway())
        .await
        .ok()?;
    let request = Request::get(crate::routes::url(&base, &path))
        .header(bazaar_auth::IDENTITY_HEADER, token)
        .header(bazaar_trace::REQUEST_ID, &ctx.request_id)
        .header(bazaar_trace::TRACEPARENT, ctx.trace.child().to_string())
        .body(EmptyBody::new())
        .ok()?;
    let exchange = async {
        let response = spin_sdk::http::send(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let bytes = response.into_body().bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    bazaar_service::within(ASK_TIMEOUT, exchange)
        .await
        .flatten()
}
