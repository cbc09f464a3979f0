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
//!
//! The two use different secrets and audiences, so neither can stand in for
//! the other.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ISSUER: &str = "bazaar";
/// Audience of tokens clients present to the gateway.
pub const ACCESS_AUDIENCE: &str = "bazaar-api";
/// Audience of tokens the gateway presents to the services.
pub const IDENTITY_AUDIENCE: &str = "bazaar-services";
/// Header carrying the identity token from the gateway to a service.
pub const IDENTITY_HEADER: &str = "x-bazaar-identity";
/// How long an identity token lives: one hop, so seconds are plenty.
pub const IDENTITY_TTL_SECONDS: u64 = 60;

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

/// Signs `identity` for `audience`, valid for `ttl_seconds` from `now`
/// (seconds since the Unix epoch).
pub fn issue(
    secret: &str,
    audience: &str,
    identity: &Identity,
    now: u64,
    ttl_seconds: u64,
) -> String {
    let claims = Claims {
        identity: identity.clone(),
        iss: ISSUER.into(),
        aud: audience.into(),
        iat: now,
        exp: now + ttl_seconds,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of serialisable claims cannot fail")
}

/// Checks signature, issuer, audience and expiry (against the clock).
pub fn verify(secret: &str, audience: &str, token: &str) -> Result<Identity, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[ISSUER]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims.identity)
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

    #[test]
    fn a_token_round_trips() {
        let token = issue("s3cret", ACCESS_AUDIENCE, &alice(), now(), 60);
        assert_eq!(verify("s3cret", ACCESS_AUDIENCE, &token), Ok(alice()));
    }

    #[test]
    fn wrong_secret_audience_or_expiry_is_refused() {
        let token = issue("s3cret", ACCESS_AUDIENCE, &alice(), now(), 60);
        assert!(matches!(
            verify("other", ACCESS_AUDIENCE, &token),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verify("s3cret", IDENTITY_AUDIENCE, &token),
            Err(TokenError::Invalid(_))
        ));
        let old = issue("s3cret", ACCESS_AUDIENCE, &alice(), now() - 120, 60);
        assert_eq!(
            verify("s3cret", ACCESS_AUDIENCE, &old),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            verify("s3cret", ACCESS_AUDIENCE, "not.a.jwt"),
            Err(TokenError::Invalid(_))
        ));
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
