//! OpenTelemetry traces, exported over OTLP/HTTP (`--otlp-endpoint`, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` as for Spin).
//!
//! The host makes the spans, as Spin does: one per HTTP request a component
//! serves (chained requests included), one per Redis message a component
//! handles, and one per outbound HTTP request, Redis publish and store
//! operation. A span's parent comes from the `traceparent` the request
//! carries, or for a Redis message from the `traceparent` field of its JSON
//! envelope, so an order's saga, which crosses Redis four times, is one
//! trace. Outbound requests carry the client span's `traceparent` (replacing
//! the guest's), so the next component's span is its child.
//!
//! Off by default, and then free: nothing here runs unless [`enabled`].

use anyhow::{Context as _, bail};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::borrow::Cow;
use std::sync::OnceLock;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being made.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The exporter; dropping it (at shutdown) flushes the spans still queued.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(error) = self.0.shutdown() {
            tracing::warn!("traces not all exported at shutdown: {error}");
        }
    }
}

/// Starts exporting to the OTLP/HTTP collector at `endpoint` (its base
/// address, as in `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go to
/// `<endpoint>/v1/traces`). The OpenTelemetry SDK's own variables still
/// apply: `OTEL_SERVICE_NAME` (default `bazaar`), `OTEL_TRACES_SAMPLER`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`.
pub fn export(endpoint: &str) -> anyhow::Result<Exporting> {
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "bazaar".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    if TRACER.set(provider.tracer("bazaar")).is_err() {
        bail!("traces are already being exported");
    }
    eprintln!("Traces: OTLP/HTTP to {url}");
    Ok(Exporting(provider))
}

/// `<base>/v1/traces`, for an `http://` base (the exporter has no TLS; a
/// collector on the same machine or pod is the usual setup).
fn traces_url(endpoint: &str) -> anyhow::Result<url::Url> {
    let base = url::Url::parse(endpoint)
        .with_context(|| format!("--otlp-endpoint {endpoint:?}: expected a URL"))?;
    if base.scheme() != "http" {
        bail!(
            "--otlp-endpoint {endpoint:?}: expected an http:// address (OTLP over HTTP, no TLS: \
             point it at a collector beside bazaar)"
        );
    }
    let path = base.path().trim_end_matches('/');
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    };
    let mut url = base.clone();
    url.set_path(&path);
    Ok(url)
}

/// The remote parent named by a W3C `traceparent` value, or an empty
/// context (a new trace) when there is none or it is invalid.
pub fn parent_from(traceparent: Option<&str>) -> Context {
    struct One<'a>(Option<&'a str>);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0).flatten()
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    TraceContextPropagator::new().extract(&One(traceparent))
}

/// Sets `traceparent` (and `tracestate`) on outbound headers to `span`,
/// replacing what the guest wrote.
pub fn inject(span: &Context, headers: &mut http::HeaderMap) {
    struct Headers<'a>(&'a mut http::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    TraceContextPropagator::new().inject_context(span, &mut Headers(headers));
}

/// The trace id of `span`, as log lines write it (32 hex digits).
pub fn trace_id(span: &Context) -> String {
    span.span().span_context().trace_id().to_string()
}

/// A span in progress; ended by [`Span::end`] or when dropped.
pub struct Span(Context);

impl Span {
    /// Starts a span under `parent` (`None`: a new trace). `None` when
    /// tracing is off.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&Context>,
        attributes: Vec<KeyValue>,
    ) -> Option<Span> {
        let tracer = TRACER.get()?;
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent.unwrap_or(&Context::new()));
        Some(Span(Context::new().with_span(span)))
    }

    /// A child of the span the instance is working for, if it is traced;
    /// `describe` gives its name and attributes, and runs only then (an
    /// untraced call allocates nothing for its span).
    pub fn child<N: Into<Cow<'static, str>>>(
        of: Option<&Context>,
        kind: SpanKind,
        describe: impl FnOnce() -> (N, Vec<KeyValue>),
    ) -> Option<Span> {
        let parent = of?;
        let (name, attributes) = describe();
        Span::start(name, kind, Some(parent), attributes)
    }

    /// The context children of this span are made under.
    pub fn context(&self) -> &Context {
        &self.0
    }

    /// A context that names this span without holding it, for an instance
    /// to make children under: the span still ends when its request does
    /// (or when the request is dropped), not when the instance next works.
    pub fn reference(&self) -> Context {
        Context::new().with_remote_span_context(self.0.span().span_context().clone())
    }

    pub fn set(&self, attribute: KeyValue) {
        self.0.span().set_attribute(attribute);
    }

    /// Marks the span failed, with the error's description.
    pub fn fail(&self, error: impl std::fmt::Display) {
        let description = error.to_string();
        self.0
            .span()
            .set_attribute(KeyValue::new("error.type", description.clone()));
        self.0.span().set_status(Status::error(description));
    }

    pub fn end(self) {
        self.0.span().end();
    }
}

/// Ends `span` (if any) as the outcome of an operation says; the error is
/// described only for a span.
pub fn finish<T, E: std::fmt::Debug>(span: Option<Span>, result: &Result<T, E>) {
    if let Some(span) = span {
        if let Err(error) = result {
            span.fail(format!("{error:?}"));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_base_address() {
        for (given, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("http://c:4318/otlp", "http://c:4318/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(traces_url(given).unwrap().as_str(), url, "{given}");
        }
        let error = traces_url("https://c:4318").unwrap_err().to_string();
        assert!(error.contains("expected an http:// address"), "{error}");
        let error = traces_url("collector:4318").unwrap_err().to_string();
        assert!(error.contains("expected"), "{error}");
    }

    #[test]
    fn a_traceparent_becomes_the_remote_parent() {
        let parent = parent_from(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let span = parent.span();
        let context = span.span_context();
        assert!(context.is_remote());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !parent_from(Some("garbage"))
                .span()
                .span_context()
                .is_valid()
        );
        assert!(!parent_from(None).span().span_context().is_valid());
    }
}
