//! Prometheus metrics, served on their own address (`--metrics-listen`) by
//! the `metrics` crate's Prometheus exporter.
//!
//! Off by default, and then free: every recording function first checks
//! one flag, before building a label. The names follow Prometheus'
//! conventions (`_total` counters, `_seconds` histograms) and are listed in
//! docs/operations.md, which the dashboard in deploy/ is built from.

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Latency buckets, in seconds: from a cached read (sub-millisecond) to a
/// request that hits the default 30 s deadline.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Starts serving `/metrics` on `addr` and turns recording on. Must run
/// inside the Tokio runtime (the exporter's listener is a task on it).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .context("histogram buckets")?
        .install()
        .with_context(|| format!("cannot serve metrics on --metrics-listen {addr}"))?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    eprintln!("Metrics: http://{addr}/metrics");
    Ok(())
}

/// The `# HELP` line of each series.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "bazaar_http_requests_total",
        "HTTP requests a component answered, by trigger route (`private`: service chaining) and status class"
    );
    describe_histogram!(
        "bazaar_http_request_duration_seconds",
        Unit::Seconds,
        "Time until a component's response headers"
    );
    describe_counter!(
        "bazaar_instances_created_total",
        "Component instances created"
    );
    describe_counter!(
        "bazaar_instances_reused_total",
        "Requests or messages served by an instance that had served before"
    );
    describe_counter!(
        "bazaar_instances_ended_total",
        "Instances that stopped serving: retired (reuse count or idle), trap, deadline"
    );
    describe_counter!(
        "bazaar_redis_messages_total",
        "Redis messages handed to a component: handled or failed"
    );
    describe_histogram!(
        "bazaar_redis_message_duration_seconds",
        Unit::Seconds,
        "Time a component took over one Redis message"
    );
    describe_counter!(
        "bazaar_redis_redeliveries_total",
        "Redis messages whose envelope id this process had already handed to the component"
    );
    describe_gauge!(
        "bazaar_redis_backlog_messages",
        "Redis messages received on a channel and not yet handed to its components"
    );
    describe_counter!(
        "bazaar_redis_dropped_total",
        "Redis messages dropped because the channel's backlog was full"
    );
    describe_counter!(
        "bazaar_store_operations_total",
        "Key-value and SQLite operations by store label"
    );
    describe_histogram!(
        "bazaar_store_operation_duration_seconds",
        Unit::Seconds,
        "Time of one key-value or SQLite operation"
    );
    describe_counter!(
        "bazaar_outbound_http_requests_total",
        "Outbound HTTP requests by destination and status class (`error`: no response)"
    );
    describe_histogram!(
        "bazaar_outbound_http_request_duration_seconds",
        Unit::Seconds,
        "Time until an outbound response's headers"
    );
}

/// Whether metrics are on: for work done only to record one.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `2xx`, `4xx`, …: a bounded label for a status code.
fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A request a component answered; `route` is its trigger route as
/// spin.toml writes it (`private` for service chaining).
pub fn http_request(component: &Arc<str>, route: &Arc<str>, status: u16, elapsed: Duration) {
    if !enabled() {
        return;
    }
    metrics::counter!("bazaar_http_requests_total", "component" => Arc::clone(component), "route" => Arc::clone(route), "status_class" => class(status))
        .increment(1);
    metrics::histogram!("bazaar_http_request_duration_seconds", "component" => Arc::clone(component), "route" => Arc::clone(route))
        .record(elapsed.as_secs_f64());
}

/// Why an instance stopped serving.
#[derive(Clone, Copy)]
pub enum InstanceEnd {
    /// Served its share of requests or sat idle: the normal end.
    Retired,
    /// A guest trap (or another failure inside the instance).
    Trap,
    /// A request overran its deadline.
    Deadline,
}

pub fn instance_created(component: &Arc<str>, trigger: &'static str) {
    if enabled() {
        metrics::counter!("bazaar_instances_created_total", "component" => Arc::clone(component), "trigger" => trigger)
            .increment(1);
    }
}

/// A request or message served by an instance that had served before.
pub fn instance_reused(component: &Arc<str>, trigger: &'static str) {
    if enabled() {
        metrics::counter!("bazaar_instances_reused_total", "component" => Arc::clone(component), "trigger" => trigger)
            .increment(1);
    }
}

pub fn instance_ended(component: &Arc<str>, trigger: &'static str, end: InstanceEnd) {
    if enabled() {
        let reason = match end {
            InstanceEnd::Retired => "retired",
            InstanceEnd::Trap => "trap",
            InstanceEnd::Deadline => "deadline",
        };
        metrics::counter!("bazaar_instances_ended_total", "component" => Arc::clone(component), "trigger" => trigger, "reason" => reason)
            .increment(1);
    }
}

/// What became of a Redis message handed to a component.
#[derive(Clone, Copy)]
pub enum MessageOutcome {
    Handled,
    /// The guest returned an error, trapped or overran its deadline.
    Failed,
}

pub fn redis_message(
    component: &Arc<str>,
    channel: &Arc<str>,
    outcome: MessageOutcome,
    elapsed: Duration,
) {
    if !enabled() {
        return;
    }
    let outcome = match outcome {
        MessageOutcome::Handled => "handled",
        MessageOutcome::Failed => "failed",
    };
    metrics::counter!("bazaar_redis_messages_total", "component" => Arc::clone(component), "channel" => Arc::clone(channel), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("bazaar_redis_message_duration_seconds", "component" => Arc::clone(component), "channel" => Arc::clone(channel))
        .record(elapsed.as_secs_f64());
}

/// A message whose envelope id this process already handed to the
/// component: a redelivery, which the (idempotent) guest drops.
pub fn redis_redelivery(component: &Arc<str>, channel: &Arc<str>) {
    if enabled() {
        metrics::counter!("bazaar_redis_redeliveries_total", "component" => Arc::clone(component), "channel" => Arc::clone(channel))
            .increment(1);
    }
}

/// How many messages `channel`'s subscriber holds, received and not yet
/// handed to its components.
pub fn redis_backlog(channel: &Arc<str>, messages: usize) {
    if enabled() {
        metrics::gauge!("bazaar_redis_backlog_messages", "channel" => Arc::clone(channel))
            .set(messages as f64);
    }
}

/// A message dropped because `channel`'s backlog was full.
pub fn redis_dropped(channel: &Arc<str>) {
    if enabled() {
        metrics::counter!("bazaar_redis_dropped_total", "channel" => Arc::clone(channel))
            .increment(1);
    }
}

/// One store operation: `kind` is `sqlite` or `key_value`, `label` the
/// store's label, `op` the interface function.
pub fn store_operation(
    kind: &'static str,
    label: &Arc<str>,
    op: &'static str,
    ok: bool,
    elapsed: Duration,
) {
    if !enabled() {
        return;
    }
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("bazaar_store_operations_total", "kind" => kind, "label" => Arc::clone(label), "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("bazaar_store_operation_duration_seconds", "kind" => kind, "label" => Arc::clone(label), "op" => op)
        .record(elapsed.as_secs_f64());
}

/// An outbound HTTP request: `destination` is `scheme://host[:port]`
/// (bounded by the components' `allowed_outbound_hosts`); `status` is
/// `None` when no response came.
pub fn outbound_http(
    component: &Arc<str>,
    destination: &str,
    status: Option<u16>,
    elapsed: Duration,
) {
    if !enabled() {
        return;
    }
    let status = status.map_or("error", class);
    metrics::counter!("bazaar_outbound_http_requests_total", "component" => Arc::clone(component), "destination" => destination.to_owned(), "status_class" => status)
        .increment(1);
    metrics::histogram!("bazaar_outbound_http_request_duration_seconds", "component" => Arc::clone(component), "destination" => destination.to_owned())
        .record(elapsed.as_secs_f64());
}
