//! The conventions every Bazaar service's HTTP API follows, in one place so
//! that all of them answer alike: JSON bodies, errors as RFC 9457
//! `application/problem+json` with `status`, `title` and a precise `detail`,
//! and request bodies parsed with an error that says what was wrong.
//!
//! Responses are plain `http::Response<String>`, which `spin-sdk` accepts as
//! a handler's result, so this crate is tested natively.

use http::HeaderValue;
pub use http::{Method, Response, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod integer;
mod mount;
mod paging;
pub use integer::{integer, some_integer};
pub use mount::{local_path, service_path};
pub use paging::{DEFAULT_PAGE, MAX_PAGE, Page, PageRequest, is_id, is_position};

pub const JSON: &str = "application/json";
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The conflicts a client may have to tell apart, each with its problem
/// `type` (RFC 9457: a URI naming the kind of problem; URNs, since nothing
/// is to be fetched from them). docs/services.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The email is registered already.
    EmailTaken,
    /// A product has this SKU already.
    SkuTaken,
    /// The Idempotency-Key was used for a different request.
    IdempotencyKeyReused,
    /// Someone else changed the resource at the same moment: retry.
    ConcurrentChange,
    /// The order is cancelled already.
    OrderCancelled,
    /// The saga is not parked, so there is nothing to restart.
    SagaNotParked,
}

impl Conflict {
    pub fn type_uri(self) -> &'static str {
        match self {
            Conflict::EmailTaken => "urn:bazaar:problem:email-taken",
            Conflict::SkuTaken => "urn:bazaar:problem:sku-taken",
            Conflict::IdempotencyKeyReused => "urn:bazaar:problem:idempotency-key-reused",
            Conflict::ConcurrentChange => "urn:bazaar:problem:concurrent-change",
            Conflict::OrderCancelled => "urn:bazaar:problem:order-cancelled",
            Conflict::SagaNotParked => "urn:bazaar:problem:saga-not-parked",
        }
    }
}

/// An API error, rendered as problem details.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    /// The problem `type`; `about:blank` (the status says it all) unless
    /// set, as for the conflicts a client must tell apart.
    pub type_uri: &'static str,
    pub detail: String,
    /// Extra members, e.g. the invalid `fields` of a 422.
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Response headers the status calls for (`Allow` on a 405,
    /// `Retry-After` on a 429 or 503).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            type_uri: "about:blank",
            detail: detail.into(),
            extensions: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    /// 409, of the given kind.
    pub fn conflict(kind: Conflict, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: kind.type_uri(),
            ..Self::new(StatusCode::CONFLICT, detail)
        }
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
    /// 405, with the methods the resource does have in `allow`.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {allow} on this resource"),
        )
        .with("allow", allow)
        .header(header::ALLOW, allow)
    }
    /// 429: the caller must wait `retry_after_seconds`.
    pub fn too_many_requests(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, detail)
            .with("retry_after", retry_after_seconds)
            .header(header::RETRY_AFTER, retry_after_seconds.to_string())
    }
    /// A failure of ours, not the client's; `detail` must not leak internals.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.extensions.insert(key.to_string(), value);
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn into_response(self) -> Response<String> {
        let mut body = serde_json::Map::new();
        body.insert("type".into(), self.type_uri.into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert(
            "title".into(),
            self.status.canonical_reason().unwrap_or("Error").into(),
        );
        body.insert("detail".into(), self.detail.into());
        body.extend(self.extensions);
        let mut response = respond(
            self.status,
            PROBLEM_JSON,
            serde_json::Value::Object(body).to_string(),
        );
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

pub type ApiResult<T = Response<String>> = Result<T, Problem>;

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<String> {
    match serde_json::to_string(body) {
        Ok(text) => respond(status, JSON, text),
        Err(e) => Problem::internal(format!("response could not be encoded: {e}")).into_response(),
    }
}

/// A JSON response whose body is already encoded (e.g. stored views,
/// served without decoding and encoding them again).
pub fn json_text(status: StatusCode, body: String) -> Response<String> {
    respond(status, JSON, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A service's answer to `GET /health` once its store has answered.
pub fn healthy(service: &str) -> Response<String> {
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "ok", "service": service }),
    )
}

/// The response a handler's result makes, with its length stated.
pub fn finish(result: ApiResult) -> Response<String> {
    let mut response = result.unwrap_or_else(Problem::into_response);
    let length = response.body().len() as u64;
    state_length(&mut response, length);
    response
}

/// States `length`, the size of the whole body `response` carries, unless
/// its status has no body. Without it the host sends the body chunked, its
/// end known only once the body stream closes: a second write to the
/// socket, and a second wake-up of whoever reads it.
pub fn state_length<B>(response: &mut Response<B>, length: u64) {
    let status = response.status();
    if status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
    {
        return;
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// Parses a JSON request body; a malformed body or a field of the wrong type
/// is a 422 naming the field, an unreadable one a 400.
pub fn parse_json<T: DeserializeOwned>(content_type: Option<&str>, body: &[u8]) -> ApiResult<T> {
    let is_json = content_type
        .map(|ct| ct.split(';').next().unwrap_or_default().trim())
        .is_none_or(|ct| {
            ct.eq_ignore_ascii_case(JSON) || ct.to_ascii_lowercase().ends_with("+json")
        });
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a JSON body (content-type: {JSON})"),
        ));
    }
    if body.is_empty() {
        return Err(Problem::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let not_json = |e| Problem::bad_request(format!("the request body is not valid JSON: {e}"));
    // Every body this API takes is an object. Serde would also read a
    // struct from an array of its fields in order, so `[]` could pass for
    // a body whose fields are all optional.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => Problem::unprocessable("the request body must be a JSON object"),
                Err(e) => not_json(e),
            },
        );
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => not_json(e),
        _ => Problem::unprocessable(format!("invalid request body: {e}")),
    })
}

/// The path split into segments: `/api/v1/users/me` → `["api", "v1", "users", "me"]`.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// The value of `name` in a query string, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_replies_state_their_length_unless_they_have_no_body() {
        let reply = finish(Ok(json(StatusCode::OK, &serde_json::json!({ "a": "é" }))));
        assert_eq!(
            reply.headers()[header::CONTENT_LENGTH],
            reply.body().len().to_string().as_str()
        );
        let problem = finish(Err(Problem::not_found("no such thing")));
        assert_eq!(
            problem.headers()[header::CONTENT_LENGTH],
            problem.body().len().to_string().as_str()
        );
        let mut empty = Response::new(String::new());
        *empty.status_mut() = StatusCode::NO_CONTENT;
        assert!(
            finish(Ok(empty))
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_none()
        );
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        age: u8,
    }

    fn body_of(response: Response<String>) -> serde_json::Value {
        serde_json::from_str(response.body()).unwrap()
    }

    #[test]
    fn problems_have_rfc9457_members() {
        let response = Problem::conflict(Conflict::EmailTaken, "email already registered")
            .with("field", "email")
            .into_response();
        assert_eq!(response.status(), 409);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = body_of(response);
        assert_eq!(body["type"], "urn:bazaar:problem:email-taken");
        assert_eq!(body["status"], 409);
        assert_eq!(body["title"], "Conflict");
        assert_eq!(body["detail"], "email already registered");
        assert_eq!(body["field"], "email");
    }

    #[test]
    fn problems_carry_the_headers_their_status_calls_for() {
        let response = Problem::method_not_allowed("GET, POST").into_response();
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        let response = Problem::too_many_requests("slow down", 7).into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert_eq!(body_of(response)["retry_after"], 7);
    }

    #[test]
    fn bodies_are_parsed_with_precise_errors() {
        let ok: Login =
            parse_json(Some("application/json"), br#"{"email":"a@b.c","age":3}"#).unwrap();
        assert_eq!(ok.age, 3);
        let e = parse_json::<Login>(None, b"{").unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse_json::<Login>(None, br#"{"email":"a@b.c"}"#).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.detail.contains("missing field `age`"), "{}", e.detail);
        let e = parse_json::<Login>(None, br#"{"email":"a@b.c","age":"x"}"#).unwrap_err();
        assert_eq!(e.status, 422);
        for (body, status) in [
            (&b"[]"[..], 422),
            (b" [\"a@b.c\", 3]", 422),
            (b"null", 422),
            (b"\"text\"", 422),
            (b"[1,", 400),
        ] {
            let e = parse_json::<Login>(None, body).unwrap_err();
            assert_eq!(e.status, status, "{}", String::from_utf8_lossy(body));
        }
        let e = parse_json::<Login>(Some("text/plain"), b"{}").unwrap_err();
        assert_eq!(e.status, 415);
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("limit=5&cursor=a%2Fb"), "cursor").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_param(Some("limit=5"), "cursor"), None);
        assert_eq!(query_param(None, "x"), None);
        assert_eq!(segments("/api/v1//users/"), ["api", "v1", "users"]);
    }
}
