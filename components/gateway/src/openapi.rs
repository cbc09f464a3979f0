//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 description, kept in
//! step with the route table by the test below.

use bazaar_api::{JSON, StatusCode};
use spin_sdk::http::Response;

const DOCUMENT: &str = include_str!("../openapi.json");

pub fn document() -> Response<String> {
    let mut response = Response::new(DOCUMENT.to_string());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        "content-type",
        spin_sdk::http::HeaderValue::from_static(JSON),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{OWN_ROUTES, ROUTES};
    use std::collections::BTreeSet;

    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .chain(
                OWN_ROUTES
                    .iter()
                    .map(|(m, p)| (m.to_string(), p.to_string())),
            )
            .collect();
        assert_eq!(documented, served);
    }

    /// Every write is counted against its user's rate limit (and sign-ups
    /// and logins against the client's address), so each says it may be 429.
    #[test]
    fn every_write_may_be_rate_limited() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["post", "put", "patch", "delete"] {
                if let Some(operation) = item.get(method) {
                    assert!(
                        operation["responses"].get("429").is_some(),
                        "{method} {path} does not document 429"
                    );
                }
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        for kind in ["schemas", "responses"] {
            let defined = doc["components"][kind].as_object().unwrap();
            let prefix = format!("\"#/components/{kind}/");
            for reference in DOCUMENT.split(prefix.as_str()).skip(1) {
                let name = reference.split('"').next().unwrap();
                assert!(defined.contains_key(name), "unresolved $ref {kind}/{name}");
            }
        }
    }
}
