//! Bazaar's two kinds of signed tokens (HS256 JWTs):
//!
//! - **access tokens**, issued by the users service to clients
//!   (`POST /api/v1/auth/token`) and verified by the gateway, once, per
//!   request;
//! - **identity tokens**, minted by the gateway for the private service a
//!   request is routed to, in the [`IDENTITY_HEADER`]. Services trust the
//!   caller's identity only from this header, and only when its signature
//!   checks out, so a request that reaches a service some other way (a
//!   misconfigured deployment, a forged header) carries no identity at all.
//!   Each one is good for one [`Hop`]: its audience names the service, and
//!   it names the method and path it was minted for (`htm`, `htu`, as in
//!   DPoP, RFC 9449), so a token seen by one service cannot be replayed
//!   against another, or against another route of the same service.
//!
//! The two use different secrets and audiences, so neither can stand in for
//! the other. Each secret can be rotated: tokens name their key (`kid`, a
//! fingerprint of the secret), and a previous secret keeps verifying the
//! tokens it signed until they expire, while only the current one signs.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
        // A fingerprint, not the secret: 8 bytes of its SHA-256.
        let digest = Sha256::digest(secret.as_bytes());
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Key {
            id,
            secret: secret.as_bytes().to_vec(),
        })
    }
}

/// The keys of one kind of token: `current` signs and verifies;
/// `previous`, during a rotation, only verifies.
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

pub const ISSUER: &str = "bazaar";
/// Audience of tokens clients present to the gateway.
pub const ACCESS_AUDIENCE: &str = "bazaar-api";
/// Header carrying the identity token from the gateway to a service.
pub const IDENTITY_HEADER: &str = "x-bazaar-identity";
/// The shortest an identity token lives. It covers one hop, retries
/// included, so the gateway gives it the call's deadline plus a margin
/// when that is longer (the default deadlines are 5 and 10 s).
pub const IDENTITY_TTL_SECONDS: u64 = 15;

/// The one request an identity token is for.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The service's name (`orders`): the token's audience is
    /// `bazaar-services/<service>`.
    pub service: &'a str,
    pub method: &'a str,
    /// Path and query, as the service receives them.
    pub path: &'a str,
}

impl Hop<'_> {
    fn audience(&self) -> String {
        format!("bazaar-services/{}", self.service)
    }
}

pub const ADMIN_ROLE: &str = "admin";
pub const CUSTOMER_ROLE: &str = "customer";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user id.
    pub sub: String,
    pub email: String,
    pub roles: Vec<String>,
}

impl Identity {
    /// The gateway itself, calling a service's internal route on its own
    /// account (metrics, a scheduled redrive): an administrator.
    pub fn gateway() -> Identity {
        Identity {
            sub: "bazaar-gateway".into(),
            email: String::new(),
            roles: vec![ADMIN_ROLE.into()],
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    identity: Identity,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
    /// Identity tokens only: the method and path they were minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    htm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    htu: Option<String>,
}

impl Claims {
    /// Bazaar's claims about `identity` for `aud`, from `now` for
    /// `ttl_seconds`, bound to no request.
    fn new(identity: &Identity, aud: String, now: u64, ttl_seconds: u64) -> Self {
        Claims {
            identity: identity.clone(),
            iss: ISSUER.into(),
            aud,
            iat: now,
            exp: now + ttl_seconds,
            htm: None,
            htu: None,
        }
    }
}

/// Why a token was refused; deliberately coarse, since clients are told no
/// more than "invalid or expired".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Expired => write!(f, "the token has expired"),
            TokenError::Invalid(why) => write!(f, "the token is invalid: {why}"),
        }
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
    sign(
        keys,
        Claims::new(identity, audience.into(), now, ttl_seconds),
    )
}

/// Signs an identity token for `identity`, good for `hop` only, for the
/// `deadline_seconds` the call may take plus a margin, at least
/// [`IDENTITY_TTL_SECONDS`], from `now`.
pub fn issue_identity(
    keys: &Keys,
    hop: &Hop<'_>,
    identity: &Identity,
    now: u64,
    deadline_seconds: u64,
) -> String {
    let ttl = IDENTITY_TTL_SECONDS.max(deadline_seconds.saturating_add(5));
    sign(
        keys,
        Claims {
            htm: Some(hop.method.into()),
            htu: Some(hop.path.into()),
            ..Claims::new(identity, hop.audience(), now, ttl)
        },
    )
}

fn sign(keys: &Keys, claims: Claims) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys.current.id.clone());
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
    decode(keys, audience, token).map(|claims| claims.identity)
}

/// Checks an identity token as [`verify`] does, and that it was minted for
/// this very `hop`.
pub fn verify_identity(keys: &Keys, hop: &Hop<'_>, token: &str) -> Result<Identity, TokenError> {
    let claims = decode(keys, &hop.audience(), token)?;
    if claims.htm.as_deref() != Some(hop.method) || claims.htu.as_deref() != Some(hop.path) {
        return Err(TokenError::Invalid(format!(
            "minted for {} {}, not {} {}",
            claims.htm.as_deref().unwrap_or("no method"),
            claims.htu.as_deref().unwrap_or("no path"),
            hop.method,
            hop.path
        )));
    }
    Ok(claims.identity)
}

fn decode(keys: &Keys, audience: &str, token: &str) -> Result<Claims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    let key = header
        .kid
        .as_deref()
        .and_then(|id| keys.by_id(id))
        .ok_or_else(|| {
            TokenError::Invalid("signed with a key this service does not have".into())
        })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[ISSUER]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key.secret), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        })
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_identity_token_is_good_for_one_service_method_and_path() {
        let k = keys(SECRET, "");
        let hop = Hop {
            service: "orders",
            method: "POST",
            path: "/api/v1/orders/o-1/cancel",
        };
        let token = issue_identity(&k, &hop, &alice(), now(), 10);
        assert_eq!(verify_identity(&k, &hop, &token), Ok(alice()));
        for other in [
            Hop {
                service: "payments",
                ..hop
            },
            Hop {
                method: "GET",
                ..hop
            },
            Hop {
                path: "/api/v1/orders/o-2/cancel",
                ..hop
            },
        ] {
            assert!(
                matches!(
                    verify_identity(&k, &other, &token),
                    Err(TokenError::Invalid(_))
                ),
                "{other:?}"
            );
        }
        // An access token is no identity token, even with the right audience.
        let access = issue(&k, "bazaar-services/orders", &alice(), now(), 60);
        assert!(matches!(
            verify_identity(&k, &hop, &access),
            Err(TokenError::Invalid(_))
        ));
        let old = issue_identity(&k, &hop, &alice(), now() - IDENTITY_TTL_SECONDS - 1, 10);
        assert_eq!(verify_identity(&k, &hop, &old), Err(TokenError::Expired));
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

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(!alice().is_admin());
    }
}
