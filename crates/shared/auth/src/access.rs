//! Access tokens: HS256 JWTs the users service issues to clients and the
//! gateway verifies. Both hold the secret (`jwt_secret`): the users service
//! to sign, the gateway to verify; no other component has it.

use crate::{ISSUER, Identity, Registered, TokenError, key_id, kid};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// The shortest secret accepted: an HS256 key must be at least as long as
/// the hash's output (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// One signing secret and its key id.
#[derive(Clone)]
struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    fn new(variable: &str, secret: &str) -> Result<Key, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "variable {variable}: the secret is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ));
        }
        Ok(Key {
            id: key_id(secret.as_bytes()),
            secret: secret.as_bytes().to_vec(),
        })
    }
}

/// The keys of access tokens: `current` signs and verifies; `previous`,
/// during a rotation, only verifies.
#[derive(Clone)]
pub struct Keys {
    current: Key,
    previous: Option<Key>,
}

impl Keys {
    /// `variable` names the setting in errors; an empty `previous` means
    /// no rotation is under way.
    pub fn new(variable: &str, current: &str, previous: &str) -> Result<Keys, String> {
        Ok(Keys {
            current: Key::new(variable, current)?,
            previous: if previous.is_empty() {
                None
            } else {
                Some(Key::new(&format!("{variable}_previous"), previous)?)
            },
        })
    }

    fn by_id(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id == id)
    }
}

/// Signs an access token for `identity` with the current key, valid for
/// `ttl_seconds` from `now` (seconds since the Unix epoch).
pub fn issue(
    keys: &Keys,
    audience: &str,
    identity: &Identity,
    now: u64,
    ttl_seconds: u64,
) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys.current.id.clone());
    let claims = Registered::new(identity, ISSUER, audience.into(), now, ttl_seconds);
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&keys.current.secret),
    )
    .expect("HS256 signing of serialisable claims cannot fail")
}

/// Checks an access token's signature (with the key the token names),
/// issuer, audience and expiry (against the clock).
pub fn verify(keys: &Keys, audience: &str, token: &str) -> Result<Identity, TokenError> {
    let key = keys.by_id(&kid(token)?).ok_or_else(|| {
        TokenError::Invalid("signed with a key this service does not have".into())
    })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[ISSUER]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Registered>(
        token,
        &DecodingKey::from_secret(&key.secret),
        &validation,
    )?
    .claims;
    Ok(claims.identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ACCESS_AUDIENCE, CUSTOMER_ROLE, now};

    fn alice() -> Identity {
        Identity {
            sub: "u-1".into(),
            email: "alice@example.com".into(),
            roles: vec![CUSTOMER_ROLE.into()],
        }
    }

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";
    const OTHER: &str = "another-secret-of-at-least-32-bytes!";

    fn keys(current: &str, previous: &str) -> Keys {
        Keys::new("jwt_secret", current, previous).unwrap()
    }

    #[test]
    fn a_token_round_trips() {
        let token = issue(&keys(SECRET, ""), ACCESS_AUDIENCE, &alice(), now(), 60);
        assert_eq!(
            verify(&keys(SECRET, ""), ACCESS_AUDIENCE, &token),
            Ok(alice())
        );
    }

    #[test]
    fn wrong_secret_audience_or_expiry_is_refused() {
        let k = keys(SECRET, "");
        let token = issue(&k, ACCESS_AUDIENCE, &alice(), now(), 60);
        assert!(matches!(
            verify(&keys(OTHER, ""), ACCESS_AUDIENCE, &token),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verify(&k, "bazaar-services/orders", &token),
            Err(TokenError::Invalid(_))
        ));
        let old = issue(&k, ACCESS_AUDIENCE, &alice(), now() - 120, 60);
        assert_eq!(verify(&k, ACCESS_AUDIENCE, &old), Err(TokenError::Expired));
        assert!(matches!(
            verify(&k, ACCESS_AUDIENCE, "not.a.jwt"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_rotated_secret_verifies_its_tokens_until_it_is_dropped() {
        let before = issue(&keys(OTHER, ""), ACCESS_AUDIENCE, &alice(), now(), 60);
        let rotating = keys(SECRET, OTHER);
        assert_eq!(verify(&rotating, ACCESS_AUDIENCE, &before), Ok(alice()));
        let after = issue(&rotating, ACCESS_AUDIENCE, &alice(), now(), 60);
        assert_eq!(
            verify(&keys(SECRET, ""), ACCESS_AUDIENCE, &after),
            Ok(alice()),
            "the current key signs"
        );
        assert!(matches!(
            verify(&keys(SECRET, ""), ACCESS_AUDIENCE, &before),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn short_secrets_are_refused_naming_the_variable() {
        let e = Keys::new("jwt_secret", "too short", "").err().unwrap();
        assert!(e.contains("jwt_secret") && e.contains("32"), "{e}");
        let e = Keys::new("jwt_secret", SECRET, "short").err().unwrap();
        assert!(e.contains("jwt_secret_previous"), "{e}");
    }
}
