//! The public API's route table: which service answers which path.
//!
//! The gateway answers 404 and 405 itself from this table, so an unknown
//! path never costs a service call, and the OpenAPI document is checked
//! against it (see `openapi.rs`).

use bazaar_api::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Users,
    Products,
    Orders,
    Payments,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Users,
        Service::Products,
        Service::Orders,
        Service::Payments,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Users => "users",
            Service::Products => "products",
            Service::Orders => "orders",
            Service::Payments => "payments",
        }
    }

    /// The variable holding the deadline of a call to the service, in ms.
    pub fn timeout_variable(self) -> &'static str {
        match self {
            Service::Users => "users_timeout_ms",
            Service::Products => "products_timeout_ms",
            Service::Orders => "orders_timeout_ms",
            Service::Payments => "payments_timeout_ms",
        }
    }

    /// The path by which the service is asked for its own `path`: under
    /// its mount, `/services/<name>` ([`bazaar_api::service_path`]).
    pub fn path(self, path: &str) -> String {
        bazaar_api::service_path(self.name(), path)
    }

    /// The variable holding the service's base URL (by default
    /// `http://<name>.spin.internal`, overridable for a distributed
    /// deployment).
    pub fn url_variable(self) -> &'static str {
        match self {
            Service::Users => "users_url",
            Service::Products => "products_url",
            Service::Orders => "orders_url",
            Service::Payments => "payments_url",
        }
    }
}

/// The URL of `path` (one [`Service::path`] made) on the service at
/// `base`, its `url_variable`'s value.
pub fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Every proxied route: method, path template (`{id}` is one segment), and
/// the service behind it.
pub const ROUTES: &[(Method, &str, Service)] = &[
    (Method::POST, "/api/v1/users", Service::Users),
    (Method::GET, "/api/v1/users/me", Service::Users),
    (Method::POST, "/api/v1/auth/token", Service::Users),
    (Method::GET, "/api/v1/products", Service::Products),
    (Method::POST, "/api/v1/products", Service::Products),
    (Method::GET, "/api/v1/products/{id}", Service::Products),
    (Method::PATCH, "/api/v1/products/{id}", Service::Products),
    (
        Method::PUT,
        "/api/v1/products/{id}/stock",
        Service::Products,
    ),
    (Method::POST, "/api/v1/orders", Service::Orders),
    (Method::GET, "/api/v1/orders", Service::Orders),
    (Method::GET, "/api/v1/orders/{id}", Service::Orders),
    (Method::GET, "/api/v1/orders/{id}/events", Service::Orders),
    (Method::POST, "/api/v1/orders/{id}/cancel", Service::Orders),
    (Method::GET, "/api/v1/payments", Service::Payments),
    (Method::POST, "/api/v1/admin/saga/redrive", Service::Orders),
    (Method::GET, "/api/v1/admin/sagas", Service::Orders),
    (
        Method::POST,
        "/api/v1/admin/sagas/expedite",
        Service::Orders,
    ),
    (
        Method::POST,
        "/api/v1/admin/sagas/{id}/restart",
        Service::Orders,
    ),
    (
        Method::POST,
        "/api/v1/admin/orders/views/rebuild",
        Service::Orders,
    ),
];

/// Routes the gateway answers itself (see `gateway::dispatch`); listed for
/// the OpenAPI check.
#[cfg(test)]
pub const OWN_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/health"),
    (Method::GET, "/api/v1/openapi.json"),
    (Method::GET, "/metrics"),
];

#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    To(Service),
    /// The path exists, not with this method; the methods it has.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Whether `template` matches the path split into `got`: segment by
/// segment, without allocating (this runs for every route on every request).
fn matches(template: &str, got: &[&str]) -> bool {
    let mut want = template.split('/').filter(|s| !s.is_empty());
    let mut got = got.iter();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if (w.starts_with('{') && w.ends_with('}')) || w == *g => {}
            _ => return false,
        }
    }
}

/// Writes whose service honours `Idempotency-Key`: a replay with the same
/// key answers as the first request did and changes nothing again. Only
/// these writes may be sent to a service twice; another write that carries
/// a key (`POST /users`, say) is not retried, or a retry of one that had
/// succeeded would answer with an error (409, 412).
const WRITES_HONOURING_IDEMPOTENCY_KEYS: &[(Method, &str)] = &[(Method::POST, "/api/v1/orders")];

/// Routes whose service answers anyone, without an identity token: the
/// catalogue's reads. The data is public, and the same through the gateway
/// or at the service's own route, so the gateway spares an anonymous
/// caller's token (a signature here and its check there, the most of a
/// catalogue read's cost). Every other route gets one, an anonymous
/// caller's included, so that no service serves a client who went around
/// the gateway's checks.
const SERVING_ANYONE: &[(Method, &str)] = &[
    (Method::GET, "/api/v1/products"),
    (Method::GET, "/api/v1/products/{id}"),
];

/// Whether the service behind `method` `path` serves anyone, unvouched.
pub fn serves_anyone(method: &Method, path: &str) -> bool {
    let got = bazaar_api::segments(path);
    SERVING_ANYONE
        .iter()
        .any(|(m, t)| m == method && matches(t, &got))
}

/// Whether the service behind `method` `path` honours `Idempotency-Key`.
pub fn honours_idempotency_key(method: &Method, path: &str) -> bool {
    let got = bazaar_api::segments(path);
    WRITES_HONOURING_IDEMPOTENCY_KEYS
        .iter()
        .any(|(m, t)| m == method && matches(t, &got))
}

pub fn route(method: &Method, path: &str) -> Routing {
    let got = bazaar_api::segments(path);
    let matching = ROUTES.iter().filter(|(_, t, _)| matches(t, &got));
    if let Some((_, _, service)) = matching.clone().find(|(m, _, _)| m == method) {
        return Routing::To(*service);
    }
    let allowed: Vec<Method> = matching.map(|(m, _, _)| m.clone()).collect();
    if allowed.is_empty() {
        Routing::NotFound
    } else {
        Routing::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_their_service() {
        assert_eq!(
            route(&Method::GET, "/api/v1/users/me"),
            Routing::To(Service::Users)
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/auth/token"),
            Routing::To(Service::Users)
        );
        assert_eq!(
            route(&Method::PUT, "/api/v1/products/p-1/stock"),
            Routing::To(Service::Products)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/orders/o-1/events"),
            Routing::To(Service::Orders)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/payments"),
            Routing::To(Service::Payments)
        );
    }

    #[test]
    fn only_order_placement_honours_idempotency_keys() {
        assert!(honours_idempotency_key(&Method::POST, "/api/v1/orders"));
        for (method, path) in [
            (Method::POST, "/api/v1/users"),
            (Method::POST, "/api/v1/products"),
            (Method::PATCH, "/api/v1/products/p-1"),
            (Method::PUT, "/api/v1/products/p-1/stock"),
            (Method::POST, "/api/v1/orders/o-1/cancel"),
            (Method::GET, "/api/v1/orders"),
        ] {
            assert!(!honours_idempotency_key(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn only_catalogue_reads_serve_anyone() {
        assert!(serves_anyone(&Method::GET, "/api/v1/products"));
        assert!(serves_anyone(&Method::GET, "/api/v1/products/p-1"));
        for (method, path) in [
            (Method::POST, "/api/v1/products"),
            (Method::PATCH, "/api/v1/products/p-1"),
            (Method::GET, "/api/v1/products/p-1/stock"),
            (Method::POST, "/api/v1/users"),
            (Method::POST, "/api/v1/auth/token"),
            (Method::GET, "/api/v1/orders"),
            (Method::GET, "/api/v1/payments"),
        ] {
            assert!(!serves_anyone(&method, path), "{method} {path}");
        }
    }

    #[test]
    fn wrong_method_and_unknown_path() {
        assert_eq!(
            route(&Method::DELETE, "/api/v1/products/p-1"),
            Routing::MethodNotAllowed(vec![Method::GET, Method::PATCH])
        );
        assert_eq!(route(&Method::GET, "/api/v1/nope"), Routing::NotFound);
        assert_eq!(
            route(&Method::GET, "/api/v1/products/a/b"),
            Routing::NotFound
        );
    }
}
