//! Answers every request with a fixed body: what remains of a request's cost
//! when the guest does nothing is the host's own (HTTP, routing, instances).
//!
//! Served as the `chain` component (`bench/hello.toml`), it instead passes
//! each request on to the `hello` component by service chaining and hands
//! back the response resource untouched: the least a chained request can
//! cost, the floor under the gateway-to-service hop.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_service;
use spin_sdk::wasip3::http::types::{self, ErrorCode, Fields, Scheme};
use spin_sdk::wasip3::wit_future;

/// The route `bench/hello.toml` gives the forwarding component.
const CHAIN_ROUTE: &str = "/chain";

#[http_service]
async fn handle(req: Request) -> Result<types::Response, ErrorCode> {
    if req.uri().path() == CHAIN_ROUTE {
        forward().await
    } else {
        Response::new("Hello, Bazaar!\n".to_string()).into_response()
    }
}

/// `GET http://hello.spin.internal/` with no headers and no body.
async fn forward() -> Result<types::Response, ErrorCode> {
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (request, _) = types::Request::new(Fields::new(), None, trailers, None);
    let invalid = |_| ErrorCode::HttpRequestUriInvalid;
    request.set_scheme(Some(&Scheme::Http)).map_err(invalid)?;
    request
        .set_authority(Some("hello.spin.internal"))
        .map_err(invalid)?;
    request.set_path_with_query(Some("/")).map_err(invalid)?;
    spin_sdk::wasip3::http::client::send(request).await
}
