//! `bazaar up --otlp-endpoint`: an OTLP/HTTP receiver in this test process
//! (the protocol's own protobuf types, from `opentelemetry-proto`) collects
//! what the host exports while an order goes through the saga, and the
//! client's trace holds one connected tree of spans from every component
//! the order crossed.

use crate::harness::{App, order_body};
use crate::test_server::serve;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received span, reduced to what the assertions read.
#[derive(Debug, Clone)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    kind: SpanKind,
    attributes: BTreeMap<String, String>,
}

impl Received {
    fn component(&self) -> Option<&str> {
        self.attributes.get("spin.component_id").map(String::as_str)
    }
}

/// An OTLP/HTTP traces endpoint (`POST /v1/traces`, protobuf).
#[derive(Clone)]
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Requests that were not a decodable export, with why.
    rejected: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let mut collector = Collector {
            url: String::new(),
            spans: Arc::default(),
            rejected: Arc::default(),
        };
        let state = collector.clone();
        collector.url = serve(move |req| {
            let state = state.clone();
            async move { state.receive(req).await }
        })
        .await;
        collector
    }

    async fn receive(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let decoded = ExportTraceServiceRequest::decode(body);
        match decoded {
            Ok(export) if path == "/v1/traces" && content_type == "application/x-protobuf" => {
                let mut spans = self.spans.lock().unwrap();
                for resource in export.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            spans.push(Received {
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_id: hex(&span.parent_span_id),
                                kind: span.kind(),
                                name: span.name,
                                attributes: span
                                    .attributes
                                    .into_iter()
                                    .map(|kv| {
                                        let value = match kv.value.and_then(|v| v.value) {
                                            Some(AnyValue::StringValue(s)) => s,
                                            Some(AnyValue::IntValue(i)) => i.to_string(),
                                            other => format!("{other:?}"),
                                        };
                                        (kv.key, value)
                                    })
                                    .collect(),
                            });
                        }
                    }
                }
                hyper::Response::new(Full::new(Bytes::new()))
            }
            other => {
                self.rejected
                    .lock()
                    .unwrap()
                    .push(format!("{path} ({content_type}): {:?}", other.err()));
                hyper::Response::builder()
                    .status(400)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        }
    }

    fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";

/// The components an order's saga runs through.
const SAGA: [&str; 5] = [
    "gateway",
    "orders",
    "order-saga",
    "inventory-step",
    "payments-step",
];

/// Spans in the trace whose parent is neither the client's span nor
/// another span of the trace.
fn dangling(spans: &[Received]) -> Vec<&Received> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| s.parent_id != CLIENT_SPAN && !ids.contains(s.parent_id.as_str()))
        .collect()
}

#[tokio::test]
async fn a_placed_order_is_one_trace_through_every_component() {
    let collector = Collector::start().await;
    let app = App::start_with_args(
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        &["--otlp-endpoint", &collector.url],
    );
    let admin = app.admin().await;
    let lamp = app.product(&admin, "LAMP", 1500, 5).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = app.user("alice@traces.test").await;
    let body = order_body(&lamp, 1, "tok_ok");
    let order = app
        .send(
            app.request(reqwest::Method::POST, "/api/v1/orders", Some(&alice))
                .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
                .json(&body),
        )
        .await;
    assert_eq!(order.status, 202, "{}", order.body);
    let id = order.body["id"].as_str().unwrap();
    crate::saga::wait_for(&app, &alice, id, "confirmed").await;

    // Spans arrive in batches, each when it ends: wait (bounded) for a
    // connected trace that every saga component has joined.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.trace(TRACE_ID);
        let components: BTreeSet<&str> = spans.iter().filter_map(Received::component).collect();
        if SAGA.iter().all(|c| components.contains(c)) && dangling(&spans).is_empty() {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {TRACE_ID} incomplete: components {components:?}, dangling parents {:#?}\nrejected exports: {:?}\nall spans: {:#?}",
            dangling(&spans),
            collector.rejected.lock().unwrap(),
            spans
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |component: &str, kind: SpanKind| -> Vec<&Received> {
        spans
            .iter()
            .filter(|s| s.component() == Some(component) && s.kind == kind)
            .collect()
    };

    // The gateway's server span continues the client's span, as Spin's does.
    let gateway = named("gateway", SpanKind::Server);
    let root = gateway
        .iter()
        .find(|s| s.parent_id == CLIENT_SPAN)
        .unwrap_or_else(|| panic!("no gateway span under the client's: {gateway:#?}"));
    assert_eq!(root.name, "POST /...");
    assert_eq!(root.attributes["http.request.method"], "POST");
    assert_eq!(root.attributes["url.path"], "/api/v1/orders");
    assert_eq!(root.attributes["http.response.status_code"], "202");

    // Its call to orders is a client span, parent of the orders server span.
    let call = named("gateway", SpanKind::Client)
        .into_iter()
        .find(|s| {
            s.parent_id == root.span_id && s.attributes["server.address"] == "orders.spin.internal"
        })
        .unwrap_or_else(|| panic!("no client span for the call to orders: {spans:#?}"));
    assert_eq!(call.name, "POST");
    let orders = named("orders", SpanKind::Server);
    assert!(
        orders.iter().any(|s| s.parent_id == call.span_id),
        "the orders span is not the call's child: {orders:#?}"
    );
    // Its statements and publishes are its children.
    let orders_ids: BTreeSet<&str> = orders.iter().map(|s| s.span_id.as_str()).collect();
    assert!(
        spans
            .iter()
            .any(|s| orders_ids.contains(s.parent_id.as_str())
                && s.attributes.get("db.system.name").map(String::as_str) == Some("sqlite")),
        "no SQLite statement span under orders: {spans:#?}"
    );

    // Each saga step ran as a consumer span named for its channel.
    for step in ["order-saga", "inventory-step", "payments-step"] {
        let received = named(step, SpanKind::Consumer);
        assert!(
            !received.is_empty(),
            "no consumer span for {step}: {spans:#?}"
        );
        for span in received {
            assert!(span.name.ends_with(" receive"), "{span:#?}");
            assert_eq!(span.attributes["messaging.system"], "redis");
        }
    }
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("PUBLISH ") && s.kind == SpanKind::Client),
        "no publish span: {spans:#?}"
    );
    assert!(collector.rejected.lock().unwrap().is_empty());
}
