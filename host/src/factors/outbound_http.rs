//! Outbound HTTP from guests: the allow-list check, service chaining and
//! self requests.
//!
//! A request to `http://<component>.spin.internal/...` never touches a
//! socket: it is handed to that component's handler in-process, which is how
//! Bazaar's gateway reaches its private services. As in Spin, the target must
//! still be listed in `allowed_outbound_hosts` (or `http://*.spin.internal`).
//! A request to `http://self.alt/...` (a "self request", allowed by
//! `http://self`) goes to the application's own listener, as from any client,
//! through its routes. Both belong to the HTTP trigger: as in Spin, only
//! instances serving HTTP requests can make them.
//!
//! Requests to plain `http://` hosts go through one keep-alive connection
//! pool shared by every component (hyper-util's client), so a service called
//! by URL (`*_url` variables pointing at a real address) costs a request, not
//! a TCP handshake. `https://` and requests with their own timeouts
//! (`RequestOptions`) use `wasmtime-wasi-http`'s per-request connection.

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::app::allowed_hosts::{AllowList, CHAINING_SUFFIX};
use crate::factors::Capabilities;
use crate::telemetry::metrics;
use crate::telemetry::traces::{self, Span};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// The host that names the application itself, as in Spin (some SDKs need
/// a host in every URL).
pub const SELF_HOST: &str = "self.alt";

/// The requests that stay inside the application: the HTTP trigger
/// implements it, so this capability needs no knowledge of triggers.
pub trait AppRequests: Send + Sync {
    /// Serves a request to `http://<target>.spin.internal` in-process.
    fn chain(
        self: Arc<Self>,
        target: String,
        request: Request<WasiBody>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>>;

    /// Where the application listens, for self requests; `None` until it
    /// does.
    fn origin(&self) -> Option<SocketAddr>;
}

/// The HTTP trigger, set once it exists (components are created before the
/// trigger that runs them, hence the late binding).
pub type AppLink = Arc<OnceLock<Weak<dyn AppRequests>>>;

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

/// Keep-alive connections to plain-HTTP hosts, shared by every component.
pub type PooledClient = Client<HttpConnector, WasiBody>;

/// How long a pooled connection waits for a TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn pooled_client() -> PooledClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// The application's outbound HTTP: the HTTP trigger and the pool.
pub struct HttpClients {
    pub app: AppLink,
    pub pool: PooledClient,
}

impl HttpClients {
    pub fn new() -> Self {
        HttpClients {
            app: Arc::new(OnceLock::new()),
            pool: pooled_client(),
        }
    }
}

/// What one component may reach.
pub struct HttpGrants {
    pub clients: Arc<HttpClients>,
    pub allowed: Arc<AllowList>,
}

/// An instance's hooks into `wasmtime-wasi-http`.
pub struct OutboundHttp {
    pub component: Arc<str>,
    pub capabilities: Arc<Capabilities>,
    /// Whether the instance serves HTTP requests: only those may chain and
    /// make self requests, as in Spin.
    pub serves_http: bool,
    /// The span of the request or message being served, when traced.
    pub trace: Option<opentelemetry::Context>,
}

impl OutboundHttp {
    fn grants(&self) -> &HttpGrants {
        &self.capabilities.http
    }

    /// The HTTP trigger, for a request that stays inside the application.
    fn app(&self, destination: &str) -> Result<Arc<dyn AppRequests>, Error> {
        if !self.serves_http {
            tracing::warn!(
                component = %self.component,
                destination,
                "outbound request refused: only a component serving HTTP requests can reach the application itself, as in Spin"
            );
            return Err(Error::HttpRequestUriInvalid);
        }
        self.grants()
            .clients
            .app
            .get()
            .and_then(Weak::upgrade)
            .ok_or(Error::InternalError(Some(
                "the application is shutting down".into(),
            )))
    }

    /// Refuses a request the allow-list does not cover, naming the entry
    /// that would (for a self request, `http://self`, whatever the port).
    fn deny(&self, destination: &str, to_self: bool) -> SendFuture {
        let entry = if to_self { "http://self" } else { destination };
        tracing::warn!(
            component = %self.component,
            destination,
            "outbound request denied: add {entry:?} to the component's allowed_outbound_hosts"
        );
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}

fn done() -> IoFuture {
    Box::new(async { Ok(()) })
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: IoFuture,
    ) -> SendFuture {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        // As in Spin, a URL with no host names the application too.
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .map_or_else(|| SELF_HOST.to_string(), str::to_ascii_lowercase);
        let destination = match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let to_self = host == SELF_HOST;
        let allowed = if to_self {
            self.grants().allowed.allows_self()
        } else {
            self.grants().allowed.allows(&scheme, &host, uri.port_u16())
        };
        if !allowed {
            return self.deny(&destination, to_self);
        }
        let span = self.client_span(&request, &host);
        if let Some(span) = &span {
            traces::inject(span.context(), request.headers_mut());
        }
        let send = self.send_allowed(request, options, &scheme, &host);
        if !metrics::enabled() && span.is_none() {
            return send;
        }
        let component = Arc::clone(&self.component);
        Box::new(async move {
            let started = std::time::Instant::now();
            let result = Box::into_pin(send).await;
            let status = result.as_ref().ok().map(|(r, _)| r.status().as_u16());
            metrics::outbound_http(&component, &destination, status, started.elapsed());
            if let (Some(span), Some(status)) = (&span, status) {
                span.set(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            traces::finish(span, &result.as_ref().map(drop));
            result
        })
    }
}

impl OutboundHttp {
    /// Spin's client span for an outbound request (`otel.name` the method),
    /// when the instance is serving a traced request.
    fn client_span(&self, request: &Request<WasiBody>, host: &str) -> Option<Span> {
        Span::child(self.trace.as_ref(), SpanKind::Client, || {
            let uri = request.uri();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let method = request.method().as_str().to_string();
            (
                method.clone(),
                vec![
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("url.full", uri.to_string()),
                    KeyValue::new("server.address", host.to_string()),
                    KeyValue::new("server.port", i64::from(port)),
                    KeyValue::new("spin.component_id", Arc::clone(&self.component)),
                ],
            )
        })
    }
}

impl OutboundHttp {
    /// Sends a request the allow-list admits: by chaining, to the
    /// application's own listener, on the pool, or on a connection of its
    /// own.
    fn send_allowed(
        &self,
        mut request: Request<WasiBody>,
        options: Option<RequestOptions>,
        scheme: &str,
        host: &str,
    ) -> SendFuture {
        if host.ends_with(CHAINING_SUFFIX) {
            // The component id as the URL writes it: ids may be UPPERCASE
            // words, and Spin looks them up as written.
            let written = request.uri().host().unwrap_or(host);
            let target = written[..written.len() - CHAINING_SUFFIX.len()].to_string();
            let app = self.app(host);
            request.headers_mut().remove(http::header::HOST);
            return Box::new(async move {
                let response = app?.chain(target, request).await?;
                Ok((response, done()))
            });
        }
        let mut scheme = scheme;
        if host == SELF_HOST {
            // To the application's own address, as from any client (the
            // `Host` is the one the client derives from the URL).
            let origin = self.app(host).and_then(|app| {
                app.origin().ok_or(Error::InternalError(Some(
                    "the application is not listening yet".into(),
                )))
            });
            let origin = match origin {
                Ok(origin) => origin,
                Err(error) => return Box::new(async move { Err(error) }),
            };
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            match format!("http://{origin}{path}").parse() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Box::new(async { Err(Error::HttpRequestUriInvalid) }),
            }
            request.headers_mut().remove(http::header::HOST);
            scheme = "http";
        }
        let own_timeouts = options.is_some_and(|o| {
            o.connect_timeout.is_some()
                || o.first_byte_timeout.is_some()
                || o.between_bytes_timeout.is_some()
        });
        if scheme == "http" && !own_timeouts {
            let client = self.grants().clients.pool.clone();
            return Box::new(async move {
                let response = client.request(request).await.map_err(client_error)?;
                let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
                Ok((response, done()))
            });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}

/// The guest's view of a pooled request's failure. A failure to connect
/// means nothing was sent; once connected, the request may have reached the
/// server, and the guest must be able to tell the two apart: a refused
/// connection is safe to retry, a connection that broke mid-exchange is not.
fn client_error(error: hyper_util::client::legacy::Error) -> Error {
    use std::io::ErrorKind;
    let io = cause::<std::io::Error>(&error);
    if error.is_connect() {
        return match io {
            None => Error::ConnectionRefused,
            Some(io) => match io.kind() {
                ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                ErrorKind::TimedOut => Error::ConnectionTimeout,
                // Name lookups and unreachable networks: `wasmtime-wasi-http`
                // tells them apart by the error's kind and text.
                kind => Error::Connect(std::io::Error::new(kind, io.to_string())),
            },
        };
    }
    if let Some(hyper) = cause::<hyper::Error>(&error) {
        if hyper.is_incomplete_message() {
            return Error::HttpResponseIncomplete;
        }
        if hyper.is_parse() {
            return Error::HttpProtocolError;
        }
    }
    match io.map(std::io::Error::kind) {
        Some(
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof,
        ) => Error::ConnectionTerminated,
        Some(ErrorKind::TimedOut) => Error::ConnectionReadTimeout,
        // With its causes: hyper-util's own text is only "client error
        // (SendRequest)".
        _ => Error::InternalError(Some(format!("{:#}", anyhow::Error::from(error)))),
    }
}

/// The first error of type `E` in `error`'s chain of causes.
fn cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<E>())
}
