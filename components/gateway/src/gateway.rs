//! One request through the gateway: CORS preflight, routing, authentication,
//! forwarding to the service's own route (`/services/<name>/...`) with the
//! caller's identity and the trace context, and one structured log line.

use bazaar_api::{Method, Problem, StatusCode};
use bazaar_auth::{ACCESS_AUDIENCE, GATEWAY, Hop, IDENTITY_HEADER, Identity};
use bazaar_service::{TIMEOUT_HEADER, header, setting, setting_as, sign_identity, verifying_keys};
use bazaar_trace::{REQUEST_ID, TRACEPARENT, TraceContext};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use spin_sdk::http::{HeaderValue, Request, Response};
use std::time::Instant;

use crate::cors::{self, Cors};
use crate::limits::{self, Rule};
use crate::routes::{self, Routing, Service};
use crate::upstream::{self, Call, Traffic};
use crate::wasi_http::Body;

pub type Reply = Response<Body>;

/// Request headers a client may not pass on: the identity header, trace
/// context, request id, forwarded address and deadline are the gateway's
/// word alone (it sets its own), and hop-by-hop headers end here.
const STRIPPED: &[&str] = &[
    IDENTITY_HEADER,
    TRACEPARENT,
    REQUEST_ID,
    TIMEOUT_HEADER,
    "x-forwarded-for",
    "authorization",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// Per-request context, for forwarding and the log line.
pub struct Context {
    pub request_id: String,
    pub trace: TraceContext,
    pub user: Option<String>,
}

pub async fn handle(req: Request) -> Reply {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let origin = header(&req, "origin");
    let mut ctx = Context {
        request_id: bazaar_trace::request_id(header(&req, REQUEST_ID).as_deref()),
        trace: header(&req, TRACEPARENT)
            .and_then(|t| TraceContext::parse(&t))
            .map_or_else(TraceContext::new_root, |t| t.child()),
        user: None,
    };
    let cors = Cors::parse(&setting("cors_allowed_origins").await.unwrap_or_default());
    let mut reply = match dispatch(req, &method, &path, &mut ctx, &cors, origin.as_deref()).await {
        Ok(reply) => reply,
        Err(problem) => to_reply(problem.into_response()),
    };
    decorate(&mut reply, &ctx, &cors, origin.as_deref());
    declare_length(&mut reply, &method);
    log(&method, &path, reply.status(), started, &ctx);
    reply
}

async fn dispatch(
    req: Request,
    method: &Method,
    path: &str,
    ctx: &mut Context,
    cors: &Cors,
    origin: Option<&str>,
) -> Result<Reply, Problem> {
    let max_header_bytes: usize = setting_as("max_header_bytes").await?;
    let header_bytes = client_header_bytes(&req);
    if header_bytes > max_header_bytes {
        return Err(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request headers take {header_bytes} bytes (names and values), more than the {max_header_bytes} this API accepts"
            ),
        ));
    }
    if method == Method::OPTIONS && header(&req, "access-control-request-method").is_some() {
        return Ok(preflight(cors, origin));
    }
    match (method, path) {
        (&Method::GET, "/health") => return Ok(to_reply(crate::health::check(ctx).await)),
        (&Method::GET, "/api/v1/openapi.json") => return Ok(to_reply(crate::openapi::document())),
        (&Method::GET, "/metrics") => return crate::app_metrics::scrape(&req, ctx).await,
        (_, "/health" | "/api/v1/openapi.json" | "/metrics") => {
            return Err(not_allowed(&[Method::GET]));
        }
        // The redrive schedule (`bazaar up`'s, in-process): only another
        // component of this application may ask, and the gateway asks
        // orders on its own account. To anyone else the route is absent.
        (&Method::POST, "/internal/saga/redrive") if chained(&req) => {
            return forward(
                req,
                Service::Orders,
                Some(Identity::gateway()),
                ctx,
                Traffic::Upkeep,
            )
            .await;
        }
        _ => {}
    }
    match routes::route(method, path) {
        Routing::To(service) => {
            let by_address = match (method, path) {
                (&Method::POST, "/api/v1/auth/token") => Some(Rule::Login),
                (&Method::POST, "/api/v1/users") => Some(Rule::SignUp),
                _ => None,
            };
            if let Some(rule) = by_address {
                limits::check(rule, &limits::client_address(&req).await?).await?;
            }
            let identity = authenticate(&req).await?;
            ctx.user = identity.as_ref().map(|i| i.sub.clone());
            if let Some(user) = &ctx.user
                && !matches!(*method, Method::GET | Method::HEAD)
            {
                limits::check(Rule::Writes, user).await?;
            }
            let vouched = identity
                .or_else(|| (!routes::serves_anyone(method, path)).then(Identity::anonymous));
            forward(req, service, vouched, ctx, Traffic::Clients).await
        }
        Routing::MethodNotAllowed(allowed) => Err(not_allowed(&allowed)),
        Routing::NotFound => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

fn not_allowed(allowed: &[Method]) -> Problem {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Problem::method_not_allowed(&allow)
}

fn preflight(cors: &Cors, origin: Option<&str>) -> Reply {
    let mut reply = empty(if cors.allow(origin).is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::FORBIDDEN
    });
    if cors.allow(origin).is_some() {
        let headers = reply.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static(cors::ALLOW_METHODS),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(cors::ALLOW_HEADERS),
        );
        headers.insert(
            "access-control-max-age",
            HeaderValue::from_static(cors::MAX_AGE_SECONDS),
        );
    }
    reply
}

/// The size of the headers the client sent (the host's `spin-*` aside).
/// The gateway refuses what it could not pass on: a host limits the
/// headers a component may put on an outgoing request, and a request over
/// that limit would fail to send, which is the client's doing, not the
/// service's (a 431, not a 502 after retries).
fn client_header_bytes(req: &Request) -> usize {
    req.headers()
        .iter()
        .filter(|(name, _)| !name.as_str().starts_with("spin-"))
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// Verifies the bearer token, once, for the whole request. No token means
/// an anonymous caller (the service decides whether that is enough); a bad
/// token is refused here.
async fn authenticate(req: &Request) -> Result<Option<bazaar_auth::Identity>, Problem> {
    let Some(authorization) = header(req, "authorization") else {
        return Ok(None);
    };
    let token = bazaar_auth::bearer(&authorization).ok_or_else(|| {
        Problem::unauthorized("the Authorization header must be `Bearer <access token>`")
    })?;
    bazaar_auth::verify(&verifying_keys("jwt_secret").await?, ACCESS_AUDIENCE, token)
        .map(Some)
        .map_err(|e| Problem::unauthorized(format!("invalid or expired access token ({e})")))
}

/// Whether the request came from another component of this application by
/// service chaining: the host says so with the client address it sets,
/// which no client can forge (Spin's `spin-*` headers are the host's).
fn chained(req: &Request) -> bool {
    header(req, "spin-client-addr").as_deref() == Some("0.0.0.0:0")
}

/// An identity token for `identity`, good only for this call: `method` on
/// `path_and_query` of `service`.
pub async fn identity_token(
    service: Service,
    method: &str,
    path_and_query: &str,
    identity: &Identity,
) -> Result<String, Problem> {
    let hop = Hop {
        service: service.name(),
        method,
        path: path_and_query,
    };
    let deadline_ms: u64 = setting_as(service.timeout_variable()).await?;
    sign_identity(GATEWAY, identity, &hop, deadline_ms.div_ceil(1000)).await
}

async fn forward(
    req: Request,
    service: Service,
    identity: Option<bazaar_auth::Identity>,
    ctx: &Context,
    traffic: Traffic,
) -> Result<Reply, Problem> {
    let max_body: usize = setting_as("max_body_bytes").await?;
    let base = setting(service.url_variable()).await?;
    let path_and_query = service.path(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut headers = HeaderMap::new();
    for (name, value) in req.headers() {
        // `spin-*` headers are the host's word about this hop (route, URL,
        // client address); the host sets the service's own.
        if !STRIPPED.contains(&name.as_str()) && !name.as_str().starts_with("spin-") {
            headers.append(name, value.clone());
        }
    }
    if let Some(client) = header(&req, "spin-client-addr") {
        headers.insert(
            "x-forwarded-for",
            header_value(limits::without_port(&client))?,
        );
    }
    headers.insert(REQUEST_ID, header_value(&ctx.request_id)?);
    headers.insert(TRACEPARENT, header_value(&ctx.trace.to_string())?);
    let declared = header(&req, "content-length").and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return Err(too_large(max_body));
    }
    let method = req.method().clone();
    let idempotent = matches!(method, Method::GET | Method::HEAD)
        || (req.headers().contains_key("idempotency-key")
            && routes::honours_idempotency_key(&method, req.uri().path()));
    // GET and HEAD carry no content anyone defines (RFC 9110 §9.3.1): the
    // services get none, and the gateway spares the read and its timer.
    let body = if matches!(method, Method::GET | Method::HEAD) {
        Bytes::new()
    } else {
        // A client that sends its body slowly (or never) holds an instance:
        // it gets a deadline of its own, shorter than the host's.
        let body_timeout_ms: u64 = setting_as("request_body_timeout_ms").await?;
        bazaar_service::within(
            std::time::Duration::from_millis(body_timeout_ms),
            Limited::new(req.into_body(), max_body).collect(),
        )
        .await
        .ok_or_else(|| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {body_timeout_ms} ms"),
            )
        })?
        .map_err(|_| too_large(max_body))?
        .to_bytes()
    };
    // Minted once the body is in, so its lifetime covers the upstream
    // deadline (retries included), not the client's upload too.
    if let Some(identity) = identity {
        let token = identity_token(service, method.as_str(), &path_and_query, &identity).await?;
        headers.insert(IDENTITY_HEADER, header_value(&token)?);
    }
    let uri: http::Uri = routes::url(&base, &path_and_query).parse().map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("`{}` is not a URL", service.url_variable()),
        )
    })?;
    let call = Call {
        service,
        method,
        uri,
        headers,
        body,
        idempotent,
        traffic,
    };
    let answer = upstream::send(&call).await?;
    let mut reply = Response::new(Body::Upstream(answer.response));
    *reply.status_mut() = answer.status;
    for (name, value) in &answer.headers {
        // The body goes on as the service sent it, so its stated length
        // holds (one of it: `wasi:http` refuses a repeated one). Hop-by-hop
        // headers never reach a guest (wasmtime drops them from responses);
        // refused here too, as they would fail the reply.
        let repeated_length =
            name == http::header::CONTENT_LENGTH && reply.headers().contains_key(name);
        if !repeated_length && !matches!(name.as_str(), "transfer-encoding" | "connection") {
            reply.headers_mut().append(name, value.clone());
        }
    }
    Ok(reply)
}

fn header_value(value: &str) -> Result<HeaderValue, Problem> {
    HeaderValue::from_str(value)
        .map_err(|_| Problem::bad_request(format!("cannot forward the header value {value:?}")))
}

fn too_large(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
}

fn decorate(reply: &mut Reply, ctx: &Context, cors: &Cors, origin: Option<&str>) {
    let headers = reply.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(REQUEST_ID, id);
    }
    if let Some(allowed) = cors
        .allow(origin)
        .and_then(|o| HeaderValue::from_str(&o).ok())
    {
        headers.insert("access-control-allow-origin", allowed);
        headers.insert(
            "access-control-expose-headers",
            HeaderValue::from_static(cors::EXPOSE_HEADERS),
        );
        headers.append("vary", HeaderValue::from_static("origin"));
    }
}

/// States the length of the body the gateway holds whole
/// ([`bazaar_api::state_length`]); a service's body passed on keeps the
/// length the service stated. HEAD replies keep none: the body a GET would
/// have is not here to measure.
fn declare_length(reply: &mut Reply, method: &Method) {
    if *method == Method::HEAD {
        return;
    }
    if let Some(length) = reply.body().len() {
        bazaar_api::state_length(reply, length);
    }
}

/// The access log line: serialised straight from borrowed fields (a
/// `json!` value would allocate every key and value on every request).
#[derive(serde::Serialize)]
struct AccessLog<'a> {
    level: &'static str,
    msg: &'static str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: u64,
    request_id: &'a str,
    trace_id: String,
    user: Option<&'a str>,
}

/// One JSON line per request on stdout (the component's log file).
fn log(method: &Method, path: &str, status: StatusCode, started: Instant, ctx: &Context) {
    let line = AccessLog {
        level: if status.is_server_error() {
            "error"
        } else {
            "info"
        },
        msg: "request",
        method: method.as_str(),
        path,
        status: status.as_u16(),
        duration_ms: started.elapsed().as_millis() as u64,
        request_id: &ctx.request_id,
        trace_id: ctx.trace.trace_id_hex(),
        user: ctx.user.as_deref(),
    };
    if let Ok(mut text) = serde_json::to_string(&line) {
        text.push('\n');
        // One write per line; a failed log write is not the client's problem.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    }
}

pub fn to_reply(response: Response<String>) -> Reply {
    response.map(|body| Body::Whole(Bytes::from(body)))
}

fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Body::Whole(Bytes::new()));
    *reply.status_mut() = status;
    reply
}
