//! Cross-origin access, from the `cors_allowed_origins` setting: empty turns
//! CORS off (browsers on other origins are refused), `*` allows any origin,
//! otherwise a comma-separated list of exact origins.

pub const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
pub const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, if-match, x-request-id, traceparent";
pub const EXPOSE_HEADERS: &str = "location, etag, x-request-id";
pub const MAX_AGE_SECONDS: &str = "600";

#[derive(Debug, PartialEq, Eq)]
pub enum Cors {
    Off,
    AnyOrigin,
    Origins(Vec<String>),
}

impl Cors {
    pub fn parse(setting: &str) -> Cors {
        let origins: Vec<String> = setting
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            Cors::Off
        } else if origins.iter().any(|o| o == "*") {
            Cors::AnyOrigin
        } else {
            Cors::Origins(origins)
        }
    }

    /// The `access-control-allow-origin` value for a request from `origin`,
    /// if that origin is allowed.
    pub fn allow(&self, origin: Option<&str>) -> Option<String> {
        let origin = origin?;
        match self {
            Cors::Off => None,
            Cors::AnyOrigin => Some("*".to_string()),
            Cors::Origins(list) => list.iter().any(|o| o == origin).then(|| origin.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        assert_eq!(Cors::parse(""), Cors::Off);
        assert_eq!(Cors::parse(" * "), Cors::AnyOrigin);
        let list = Cors::parse("https://shop.test/, http://localhost:5173");
        assert_eq!(
            list.allow(Some("https://shop.test")).as_deref(),
            Some("https://shop.test")
        );
        assert_eq!(list.allow(Some("https://evil.test")), None);
        assert_eq!(list.allow(None), None);
        assert_eq!(
            Cors::AnyOrigin.allow(Some("https://x.test")).as_deref(),
            Some("*")
        );
        assert_eq!(Cors::Off.allow(Some("https://x.test")), None);
    }
}
