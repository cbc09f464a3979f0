//! Where each service is reached: its HTTP trigger's route is
//! `/services/<name>/...` (spin.toml), and every caller, the gateway and
//! orders alike, names that path.
//!
//! The same path serves both deployments: in one process a call goes by
//! service chaining to `http://<name>.spin.internal/services/<name>/...`;
//! split, to `<name>_url` pointing at the service's own process, where
//! `spin up -c <name>` routes it. A private route (`{ private = true }`)
//! could not be reached in a process of its own, so the route is public,
//! and the service, not the route, keeps clients out: every route but the
//! catalogue's reads demands an identity token the gateway signed.

use crate::Problem;

/// The part of the path every service is mounted under.
const SERVICES: &str = "/services/";

/// The path by which `service` is asked for its own `path`:
/// `("products", "/health")` → `/services/products/health`.
pub fn service_path(service: &str, path: &str) -> String {
    format!("{SERVICES}{service}{path}")
}

/// `path` as `service` routes it, without its mount
/// (`/services/products/health` → `/health`); 404 for a path outside the
/// mount, which the service does not serve.
pub fn local_path<'a>(service: &str, path: &'a str) -> Result<&'a str, Problem> {
    let rest = path
        .strip_prefix(SERVICES)
        .and_then(|p| p.strip_prefix(service));
    match rest {
        Some("") => Ok("/"),
        Some(rest) if rest.starts_with('/') => Ok(rest),
        _ => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_the_mount() {
        let path = service_path("products", "/api/v1/products/p-1");
        assert_eq!(path, "/services/products/api/v1/products/p-1");
        assert_eq!(
            local_path("products", &path).ok(),
            Some("/api/v1/products/p-1")
        );
        assert_eq!(local_path("products", "/services/products").ok(), Some("/"));
    }

    #[test]
    fn paths_outside_the_mount_are_not_the_services() {
        for path in [
            "/api/v1/products",
            "/services/productsx/health",
            "/services/orders/health",
            "/services/",
            "/",
        ] {
            let refused = local_path("products", path).unwrap_err();
            assert_eq!(refused.status, crate::StatusCode::NOT_FOUND, "{path}");
        }
    }
}
