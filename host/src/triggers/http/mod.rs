//! Spin's HTTP trigger: a hyper server that routes each request to a
//! component and adds Spin's `spin-*` request headers.
//!
//! Requests chained from one component to another (`*.spin.internal`) enter
//! through [`HttpApp::chain`] and reach private components too; only the
//! socket-facing path goes through the router.

pub mod pool;
pub mod router;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::{ExpirationError, ProxyHandler};

use crate::app::allowed_hosts::CHAINING_SUFFIX;
use crate::factors::outbound_http::AppRequests;
use crate::telemetry::metrics;
use crate::telemetry::traces::{self, Span};
use crate::triggers::http::pool::Call;
use crate::triggers::http::pool::ComponentPool;
use crate::triggers::http::router::{RouteMatch, Router};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// Paths Spin reserves for the runtime itself.
const WELL_KNOWN: &str = "/.well-known/spin/";

/// The route label of requests reached by service chaining.
static PRIVATE_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| "private".into());

/// Where a chained request reports coming from, as in Spin.
const CHAINED_CLIENT: &str = "0.0.0.0:0";

/// The most request header bytes (names and values) a client may send. Hyper
/// refuses a head larger than its read buffer only while the head is still
/// incomplete, so one that arrives whole in a large read gets through; this
/// makes the limit exact. It is half of `wasmtime-wasi-http`'s limit on the
/// headers a guest builds (128 KiB, with per-field overhead), so a component
/// can always copy what it was sent onto an outgoing request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

pub struct HttpApp {
    info: serde_json::Value,
    router: Router,
    handlers: BTreeMap<String, ProxyHandler<ComponentPool>>,
    next_request: AtomicU64,
    /// The address [`serve`] listens on: where self requests go.
    origin: OnceLock<SocketAddr>,
}

/// The parts of a route match that become `spin-*` headers.
struct Matched<'a> {
    raw_route: &'a str,
    component_route: &'a str,
    params: &'a [(String, String)],
    path_info: &'a str,
}

impl HttpApp {
    /// `info` is served at `/.well-known/spin/info`.
    pub fn new(info: serde_json::Value, router: Router, pools: Vec<ComponentPool>) -> Self {
        let handlers = pools
            .into_iter()
            .map(|pool| (pool.runtime.id.to_string(), ProxyHandler::new(pool)))
            .collect();
        HttpApp {
            info,
            router,
            handlers,
            next_request: AtomicU64::new(0),
            origin: OnceLock::new(),
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves one request from a client socket.
    pub async fn handle(
        &self,
        mut req: Request<WasiBody>,
        client: SocketAddr,
    ) -> Response<WasiBody> {
        let header_bytes = header_bytes(req.headers());
        if header_bytes > MAX_HEADER_BYTES {
            return headers_too_large(header_bytes);
        }
        let path = req.uri().path().to_string();
        if let Some(rest) = path.strip_prefix(WELL_KNOWN) {
            return self.well_known(rest);
        }
        let Some(RouteMatch {
            component,
            route,
            params,
            path_info,
        }) = self.router.route(&path)
        else {
            return empty(StatusCode::NOT_FOUND);
        };
        if let Err(status) = absolutize(&mut req) {
            return empty(status);
        }
        let matched = Matched {
            raw_route: route.raw(),
            component_route: route.without_wildcard(),
            params: &params,
            path_info: &path_info,
        };
        let full_url = req.uri().to_string();
        set_spin_headers(&mut req, &matched, &full_url, &client.to_string());
        self.dispatch(component, route.raw(), route.raw(), Some(client), req)
            .await
    }

    /// Serves a request another component sent to `http://<target>.spin.internal`.
    pub async fn chain(
        &self,
        target: &str,
        mut req: Request<WasiBody>,
    ) -> Result<Response<WasiBody>, wasmtime_wasi_http::Error> {
        if !self.handlers.contains_key(target) {
            tracing::warn!(
                target,
                "service chaining to a component that has no HTTP trigger"
            );
            return Err(wasmtime_wasi_http::Error::DestinationNotFound);
        }
        let path_info = req.uri().path().to_string();
        let matched = Matched {
            raw_route: "/...",
            component_route: "",
            params: &[],
            path_info: &path_info,
        };
        // As Spin: a `Host` naming the chaining domain is dropped, and the
        // full URL names the `Host` left, else `localhost`.
        let chaining_host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| h.split(':').next().unwrap_or(h).ends_with(CHAINING_SUFFIX));
        if chaining_host {
            req.headers_mut().remove(http::header::HOST);
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let full_url = format!("http://{host}{path}");
        set_spin_headers(&mut req, &matched, &full_url, CHAINED_CLIENT);
        Ok(self
            .dispatch(target, &PRIVATE_ROUTE, matched.raw_route, None, req)
            .await)
    }

    /// Runs `req` on `component`, reached by `route` (its trigger route, or
    /// `private` when chained, which Spin calls `/...`), counts it and
    /// traces it.
    async fn dispatch(
        &self,
        component: &str,
        route: &Arc<str>,
        spin_route: &str,
        client: Option<SocketAddr>,
        mut req: Request<WasiBody>,
    ) -> Response<WasiBody> {
        let Some(handler) = self.handlers.get(component) else {
            return empty(StatusCode::NOT_FOUND);
        };
        let id = &handler.state().runtime.id;
        let span = traces::enabled()
            .then(|| server_span(&req, id, spin_route, client))
            .flatten();
        // The component sees its own span as the request's trace context,
        // so what it logs and passes on (a message's `traceparent`) names
        // a span the backend receives.
        if let Some(span) = &span {
            traces::inject(span.context(), req.headers_mut());
        }
        let started = std::time::Instant::now();
        let response = self
            .run(handler, req, span.as_ref().map(Span::reference))
            .await;
        let status = response.status().as_u16();
        metrics::http_request(id, route, status, started.elapsed());
        if let Some(span) = span {
            span.set(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.fail(status);
            }
            span.end();
        }
        response
    }

    async fn run(
        &self,
        handler: &ProxyHandler<ComponentPool>,
        req: Request<WasiBody>,
        trace: Option<opentelemetry::Context>,
    ) -> Response<WasiBody> {
        let component = &*handler.state().runtime.id;
        let trace_id = trace.as_ref().map(traces::trace_id);
        let trace_id = trace_id.as_deref();
        let request = Call {
            id: self.next_request.fetch_add(1, Ordering::Relaxed),
            trace,
        };
        let method = req.method().clone();
        let uri = req.uri().clone();
        let started = std::time::Instant::now();
        let timeout = handler.state().runtime.limits.request_timeout;
        match handler.handle(request, req).await {
            Ok(response) => {
                tracing::debug!(component, %method, %uri, trace_id, status = response.status().as_u16(), "handled");
                response
            }
            // The instance may be retired by its own expiry before the
            // request's deadline reports, so elapsed time decides too.
            Err(error)
                if error.downcast_ref::<ExpirationError>().is_some()
                    || started.elapsed() >= timeout =>
            {
                tracing::error!(
                    component, %method, %uri, trace_id, ?timeout,
                    "request deadline exceeded; the instance was discarded"
                );
                empty(StatusCode::GATEWAY_TIMEOUT)
            }
            Err(error) => {
                tracing::error!(component, %method, %uri, trace_id, "error processing request: {error:?}");
                empty(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    fn well_known(&self, rest: &str) -> Response<WasiBody> {
        match rest {
            "health" => full(StatusCode::OK, "text/plain", Bytes::from_static(b"OK")),
            "info" => full(
                StatusCode::OK,
                "application/json",
                Bytes::from(self.info.to_string()),
            ),
            _ => empty(StatusCode::NOT_FOUND),
        }
    }
}

impl AppRequests for HttpApp {
    fn chain(
        self: Arc<Self>,
        target: String,
        request: Request<WasiBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<WasiBody>, wasmtime_wasi_http::Error>> + Send>>
    {
        Box::pin(async move { HttpApp::chain(&self, &target, request).await })
    }

    fn origin(&self) -> Option<SocketAddr> {
        self.origin.get().copied()
    }
}

/// Spin's server span for a request a component serves, under the
/// caller's `traceparent`: `otel.name` is the method and route.
fn server_span(
    req: &Request<WasiBody>,
    component: &Arc<str>,
    route: &str,
    client: Option<SocketAddr>,
) -> Option<Span> {
    let parent = traces::parent_from(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let uri = req.uri();
    let mut attributes = vec![
        KeyValue::new("http.request.method", req.method().as_str().to_string()),
        KeyValue::new("url.path", uri.path().to_string()),
        KeyValue::new("url.scheme", uri.scheme_str().unwrap_or("http").to_string()),
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("spin.component_id", Arc::clone(component)),
    ];
    if let Some(query) = uri.query() {
        attributes.push(KeyValue::new("url.query", query.to_string()));
    }
    if let Some(client) = client {
        attributes.push(KeyValue::new(
            "network.peer.address",
            client.ip().to_string(),
        ));
        attributes.push(KeyValue::new("network.peer.port", i64::from(client.port())));
    }
    Span::start(
        format!("{} {route}", req.method()),
        SpanKind::Server,
        Some(&parent),
        attributes,
    )
}

/// Spin hands components an absolute URI built from the `Host` header. The
/// header must be an authority (`host[:port]`): anything else (a path, a
/// query, user info) would change the URL the component sees, so it is a
/// 400, as in Spin. Without one (HTTP/1.0), `localhost`.
fn absolutize(req: &mut Request<WasiBody>) -> Result<(), StatusCode> {
    if req.uri().authority().is_some() {
        return Ok(());
    }
    let authority = match req.headers().get(http::header::HOST) {
        None => http::uri::Authority::from_static("localhost"),
        Some(host) => host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .filter(|a| !a.as_str().contains('@'))
            .ok_or(StatusCode::BAD_REQUEST)?,
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(())
}

fn set_spin_headers(
    req: &mut Request<WasiBody>,
    matched: &Matched<'_>,
    full_url: &str,
    client: &str,
) {
    let headers = req.headers_mut();
    // Clients must not be able to forge what the host tells the component.
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    let raw = matched.raw_route;
    let matched_route = if raw.len() > 1 {
        raw.strip_suffix('/').unwrap_or(raw)
    } else {
        raw
    };
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    // Names made once: parsing a custom header name allocates.
    set(HeaderName::from_static("spin-path-info"), matched.path_info);
    set(HeaderName::from_static("spin-full-url"), full_url);
    set(HeaderName::from_static("spin-matched-route"), matched_route);
    set(HeaderName::from_static("spin-base-path"), "/");
    set(
        HeaderName::from_static("spin-raw-component-route"),
        matched.raw_route,
    );
    set(
        HeaderName::from_static("spin-component-route"),
        matched.component_route,
    );
    set(HeaderName::from_static("spin-client-addr"), client);
    for (name, value) in matched.params {
        let name = format!(
            "spin-path-match-{}",
            name.to_ascii_lowercase().replace('_', "-")
        );
        if let Ok(name) = HeaderName::try_from(name) {
            set(name, value);
        }
    }
}

fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// 431, with a problem document saying by how much.
fn headers_too_large(bytes: usize) -> Response<WasiBody> {
    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let detail = format!(
        "the request headers take {bytes} bytes (names and values), more than the {MAX_HEADER_BYTES} this server accepts"
    );
    full(
        status,
        "application/problem+json",
        Bytes::from(problem(status, &detail)),
    )
}

/// An RFC 9457 problem document for what the host answers itself.
fn problem(status: StatusCode, detail: &str) -> String {
    serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason(),
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
}

fn empty(status: StatusCode) -> Response<WasiBody> {
    let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<WasiBody> {
    let mut response = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// The most of an unread request body the server reads and discards after
/// answering, and for how long.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body that, if the component answers without reading all of
/// it (a 413, a 404, an early error), is read to its end and discarded in
/// the background, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
///
/// Otherwise hyper closes the connection with the client's bytes still
/// unread, the kernel answers them with a reset, and a client still
/// sending (most do: they write the whole body before reading) gets a
/// broken pipe instead of the response (a "lingering close", as nginx and
/// Apache do it).
struct DrainOnDrop(Option<hyper::body::Incoming>);

impl hyper::body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if hyper::body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut read = 0;
                while read < DRAIN_BYTES
                    && let Some(Ok(frame)) = body.frame().await
                {
                    read += frame.data_ref().map_or(0, Bytes::len);
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until `shutdown` resolves, then lets in-flight
/// requests finish.
/// How long a refused connection may take to receive its 503.
const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer to a connection over the listener's cap, written by hand:
/// it costs no hyper connection and no component, and then the socket is
/// closed.
fn refusal(max_connections: usize) -> Vec<u8> {
    let body = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "the server holds its maximum of {max_connections} open connections; retry after 1 s"
        ),
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `shutdown`, holding at most
/// `max_connections` client connections open at once: one more is
/// answered 503 with `Retry-After` and closed, so that a crowd of slow or
/// idle clients cannot take every socket, task and instance the host has.
pub async fn serve(
    app: Arc<HttpApp>,
    listener: tokio::net::TcpListener,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let _ = app.origin.set(listener.local_addr()?);
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let refused = Arc::new(refusal(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its request headers (slowloris) is cut off;
    // bodies are the component's to time (the gateway answers 408).
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!("accept failed: {error}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                let mut stream = stream;
                // The client's request is read and dropped after the answer:
                // closing a socket with unread data resets it, and the
                // client could lose the 503 before reading it.
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    stream.write_all(&refused).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 1024];
                    while stream.read(&mut sink).await? > 0 {}
                    Ok::<_, std::io::Error>(())
                })
                .await;
            });
            tracing::warn!(%client, max_connections, "connection refused: the listener is at its cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let app = Arc::clone(&app);
            async move {
                let req = req.map(|body| {
                    DrainOnDrop(Some(body))
                        .map_err(wasmtime_wasi_http::Error::from)
                        .boxed_unsync()
                });
                Ok::<_, std::convert::Infallible>(app.handle(req, client).await)
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%client, "connection closed with error: {error}");
            }
            drop(permit);
        });
    }
    eprintln!("Shutting down: waiting for in-flight requests…");
    graceful.shutdown().await;
    Ok(())
}
