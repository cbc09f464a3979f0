//! Redis server addresses as every part of the host takes them: what counts
//! as one, and how one appears in logs and errors (never with its password).

/// Whether `address` is a `redis://` or `rediss://` URL with a host.
pub fn is_redis_url(address: &str) -> bool {
    url::Url::parse(address).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.has_host())
}

/// `redis://user:secret@host` → `redis://host`: addresses appear in logs.
pub fn redact(address: &str) -> String {
    match url::Url::parse(address) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "(unparsable address)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(is_redis_url("redis://localhost:6379"));
        assert!(is_redis_url("rediss://user:pw@cache.example.com"));
        assert!(!is_redis_url("http://localhost:6379"));
        assert!(!is_redis_url("redis://"));
        assert_eq!(
            redact("redis://user:hunter2@cache:7000/1"),
            "redis://cache:7000/1"
        );
        assert_eq!(redact("not a url"), "(unparsable address)");
    }
}
