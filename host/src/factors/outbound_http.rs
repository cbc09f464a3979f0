//! Outbound HTTP from guests: the allow-list check, and service chaining.
//!
//! A request to `http://<component>.spin.internal/...` never touches a
//! socket: it is handed to that component's handler in-process, which is how
//! Bazaar's gateway reaches its private services. As in Spin, the target must
//! still be listed in `allowed_outbound_hosts` (or `http://*.spin.internal`).

use http::Request;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::app::allowed_hosts::AllowList;

const CHAINING_SUFFIX: &str = ".spin.internal";

/// Whoever serves `http://<component>.spin.internal`: the HTTP trigger
/// implements it, so this capability needs no knowledge of triggers.
pub trait ServiceChaining: Send + Sync {
    fn chain(
        self: Arc<Self>,
        target: String,
        request: Request<WasiBody>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, Error>> + Send>>;
}

/// The chaining target, set once the HTTP trigger exists (components are
/// created before the trigger that runs them, hence the late binding).
pub type ChainingLink = Arc<OnceLock<Weak<dyn ServiceChaining>>>;

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

pub struct OutboundHttp {
    pub component: Arc<str>,
    pub allowed: Arc<AllowList>,
    pub chaining: ChainingLink,
}

impl OutboundHttp {
    fn chaining(&self) -> Result<Arc<dyn ServiceChaining>, Error> {
        self.chaining
            .get()
            .and_then(Weak::upgrade)
            .ok_or(Error::InternalError(Some(
                "the application is shutting down".into(),
            )))
    }

    fn deny(&self, destination: &str) -> SendFuture {
        tracing::warn!(
            component = %self.component,
            destination,
            "outbound request denied: add {destination:?} to the component's allowed_outbound_hosts"
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
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
            return self.deny(&format!("{scheme}://(no host)"));
        };
        let destination = match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        if !self.allowed.allows(&scheme, &host, uri.port_u16()) {
            return self.deny(&destination);
        }
        if let Some(target) = host.strip_suffix(CHAINING_SUFFIX) {
            let target = target.to_string();
            let chaining = self.chaining();
            request.headers_mut().remove(http::header::HOST);
            return Box::new(async move {
                let response = chaining?.chain(target, request).await?;
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
