//! Bazaar's two kinds of signed tokens (JWTs):
//!
//! - **access tokens** ([`access`], HS256), issued by the users service to
//!   clients (`POST /api/v1/auth/token`) and verified by the gateway, once,
//!   per request;
//! - **identity tokens** ([`identity`], EdDSA over Ed25519), in the
//!   [`IDENTITY_HEADER`] of a call from one component to a service. The
//!   gateway mints them for the client a request is routed for; a service
//!   calling another (orders → products) mints its own, naming itself.
//!   Each signer holds its own private key and every service only public
//!   keys, so no service can mint a token another accepts as a client's,
//!   an administrator's or a third service's. Each token is good for one
//!   [`Hop`]: its audience names the service, and it names the method and
//!   path it was minted for (`htm`, `htu`, as in DPoP, RFC 9449), so a
//!   token seen by one service cannot be replayed against another, or
//!   against another route of the same service.
//!
//! The two use different keys and audiences, so neither can stand in for
//! the other. Every key can be rotated: tokens name their key (`kid`, a
//! fingerprint), and a verifier keeps accepting the keys it is given until
//! they are dropped from its list, while only the current one signs.

pub mod access;
pub mod identity;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use access::{Keys, MIN_SECRET_BYTES, issue, verify};
pub use identity::{
    GATEWAY, IDENTITY_TTL_SECONDS, SigningKey, VerifyingKeys, issue_identity, verify_identity,
};

pub const ISSUER: &str = "bazaar";
/// Audience of tokens clients present to the gateway.
pub const ACCESS_AUDIENCE: &str = "bazaar-api";
/// Header carrying an identity token to a service.
pub const IDENTITY_HEADER: &str = "x-bazaar-identity";

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
    /// The user id; for a service calling on its own account, its name.
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

    /// A service calling another on its own account (orders asking
    /// products for prices): no roles, so no route that serves clients or
    /// administrators takes it for one.
    pub fn service(name: &str) -> Identity {
        Identity {
            sub: name.into(),
            email: String::new(),
            roles: Vec::new(),
        }
    }

    /// A client who presented no access token, as the gateway vouches for
    /// it on the routes that serve anyone (sign-up, login): the request
    /// came through the gateway, its checks and its rate limits, and is
    /// nobody's. No route that serves a user takes it for one.
    pub fn anonymous() -> Identity {
        Identity {
            sub: String::new(),
            email: String::new(),
            roles: Vec::new(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.sub.is_empty()
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

/// The claims both kinds of token carry: whom they speak for, who signed
/// them, for whom, and when. Flattened into each kind's own claims, so the
/// JSON stays flat as RFC 7519 has it.
#[derive(Debug, Serialize, Deserialize)]
struct Registered {
    #[serde(flatten)]
    identity: Identity,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
}

impl Registered {
    /// `issuer`'s claims about `identity` for `audience`, from `now` for
    /// `ttl_seconds`.
    fn new(
        identity: &Identity,
        issuer: &str,
        audience: String,
        now: u64,
        ttl_seconds: u64,
    ) -> Self {
        Registered {
            identity: identity.clone(),
            iss: issuer.into(),
            aud: audience,
            iat: now,
            exp: now + ttl_seconds,
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

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        }
    }
}

/// A key's id in the tokens it signs: 8 bytes of the SHA-256 of its
/// public part (or of an HS256 secret), in hex, which names the key
/// without revealing it.
fn key_id(material: &[u8]) -> String {
    Sha256::digest(material)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key id a token's header names.
fn kid(token: &str) -> Result<String, TokenError> {
    jsonwebtoken::decode_header(token)
        .map_err(|e| TokenError::Invalid(e.to_string()))?
        .kid
        .ok_or_else(|| TokenError::Invalid("the token names no key".into()))
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

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn only_the_gateway_is_an_administrator_of_its_own() {
        assert!(Identity::gateway().is_admin());
        assert!(!Identity::service("orders").is_admin());
    }
}
