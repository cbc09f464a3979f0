//! Identity tokens: EdDSA JWTs over Ed25519 keys, one per call between
//! components ([`crate::Hop`]).
//!
//! Each signer has a key pair of its own: the gateway (issuer [`GATEWAY`]),
//! which vouches for clients and for itself as an administrator, and each
//! service that calls another on its own account (issuer: its name). The
//! private key stays with its signer (its `identity_key` variable); the
//! services it calls hold the public keys (`<signer>_identity_public_keys`)
//! and name the issuer they expect, so a token is believed only from the
//! signer the route trusts: a service's own key cannot make a token any
//! other service takes for a client's or an administrator's.
//!
//! Keys are written as in a JSON Web Key (RFC 8037): base64url, without
//! padding, of the 32-byte private seed (`d`) or public key (`x`). A list
//! of public keys (commas or spaces between them) is a rotation: add the
//! new public key everywhere, switch the signer to the new private key,
//! then drop the old public key.
//!
//! The tokens are compact JWS (RFC 7515) with `alg` `EdDSA` (RFC 8037),
//! signed and verified with `ed25519-dalek` on keys parsed once, not
//! through `jsonwebtoken`, which parses the key again for every token: in
//! a guest that doubled the cost of each signature and verification (a
//! fixed-base scalar multiplication to derive the public key on every
//! signature, a point decompression on every verification), measured as
//! ~0.8 ms of CPU per order. Only `EdDSA` is accepted, and the signature
//! is checked (strictly: no small-order keys, no malleable signatures)
//! before the claims are read.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};

use crate::{Hop, Identity, Registered, TokenError, key_id};

/// The issuer of identity tokens that speak for clients, and for the
/// gateway's own calls as an administrator.
pub const GATEWAY: &str = "bazaar-gateway";

/// The shortest an identity token lives. It covers one hop, retries
/// included, so the signer gives it the call's deadline plus a margin when
/// that is longer (the default deadlines are 5 and 10 s).
pub const IDENTITY_TTL_SECONDS: u64 = 15;

/// The JOSE header's algorithm for Ed25519 (RFC 8037).
const ALGORITHM: &str = "EdDSA";

/// A signer's private key, and the id its tokens name it by.
#[derive(Clone)]
pub struct SigningKey {
    id: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// The key written in `text` (base64url of the 32-byte seed);
    /// `variable` names the setting in errors.
    pub fn new(variable: &str, text: &str) -> Result<SigningKey, String> {
        let key = ed25519_dalek::SigningKey::from_bytes(&decode_key(variable, text, "private")?);
        Ok(SigningKey {
            id: key_id(key.verifying_key().as_bytes()),
            key,
        })
    }
}

/// The public keys of one signer that a service believes.
#[derive(Clone)]
pub struct VerifyingKeys(Vec<(String, ed25519_dalek::VerifyingKey)>);

impl VerifyingKeys {
    /// The keys listed in `text` (base64url, separated by commas or
    /// spaces); `variable` names the setting in errors.
    pub fn new(variable: &str, text: &str) -> Result<VerifyingKeys, String> {
        let keys = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(|k| {
                let public = decode_key(variable, k, "public")?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
                    .ok()
                    .filter(|key| !key.is_weak())
                    .ok_or_else(|| {
                        format!("variable {variable}: {k:?} is not an Ed25519 public key")
                    })?;
                Ok((key_id(&public), key))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if keys.is_empty() {
            return Err(format!("variable {variable}: no public key is given"));
        }
        Ok(VerifyingKeys(keys))
    }

    fn by_id(&self, id: &str) -> Option<&ed25519_dalek::VerifyingKey> {
        self.0.iter().find(|(kid, _)| kid == id).map(|(_, key)| key)
    }
}

/// 32 bytes written as base64url (padding tolerated).
fn decode_key(variable: &str, text: &str, what: &str) -> Result<[u8; 32], String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|_| format!("variable {variable}: the {what} key is not base64url"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "variable {variable}: an Ed25519 {what} key is 32 bytes, this one is {}",
            bytes.len()
        )
    })
}

/// The JOSE header of an identity token.
#[derive(Debug, Serialize, Deserialize)]
struct JoseHeader {
    alg: String,
    kid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    registered: Registered,
    /// The method and path the token was minted for.
    htm: String,
    htu: String,
}

/// Signs, as `issuer`, a token for `identity` good for `hop` only, for the
/// `deadline_seconds` the call may take plus a margin, at least
/// [`IDENTITY_TTL_SECONDS`], from `now`.
pub fn issue_identity(
    key: &SigningKey,
    issuer: &str,
    hop: &Hop<'_>,
    identity: &Identity,
    now: u64,
    deadline_seconds: u64,
) -> String {
    let ttl = IDENTITY_TTL_SECONDS.max(deadline_seconds.saturating_add(5));
    let header = JoseHeader {
        alg: ALGORITHM.into(),
        kid: key.id.clone(),
    };
    let claims = Claims {
        registered: Registered::new(identity, issuer, hop.audience(), now, ttl),
        htm: hop.method.into(),
        htu: hop.path.into(),
    };
    let signing_input = format!("{}.{}", encoded(&header), encoded(&claims));
    let signature = key.key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// `value` as base64url JSON, a part of a compact JWS.
fn encoded(value: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("plain structs serialise"))
}

/// A part of a compact JWS, read as `T`.
fn decoded<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Invalid(format!("its {what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Invalid(format!("its {what}: {e}")))
}

/// Checks an identity token: signed by one of `keys` (the one it names),
/// by `issuer`, not expired at `now`, and minted for this very `hop`.
pub fn verify_identity(
    keys: &VerifyingKeys,
    issuer: &str,
    hop: &Hop<'_>,
    token: &str,
    now: u64,
) -> Result<Identity, TokenError> {
    let invalid = |why: &str| TokenError::Invalid(why.into());
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| invalid("not a compact JWS"))?;
    let (header, claims) = signing_input
        .split_once('.')
        .ok_or_else(|| invalid("not a compact JWS"))?;
    let header: JoseHeader = decoded(header, "header")?;
    if header.alg != ALGORITHM {
        return Err(invalid("not signed with EdDSA"));
    }
    let key = keys.by_id(&header.kid).ok_or_else(|| {
        TokenError::Invalid(format!(
            "not signed by a key of {issuer} this service knows"
        ))
    })?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or_else(|| invalid("its signature is malformed"))?;
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| invalid("its signature does not verify"))?;
    let Claims {
        registered: claims,
        htm,
        htu,
    } = decoded(claims, "claims")?;
    if claims.iss != issuer {
        return Err(TokenError::Invalid(format!(
            "issued by {}, not {issuer}",
            claims.iss
        )));
    }
    if claims.aud != hop.audience() {
        return Err(TokenError::Invalid(format!("meant for {}", claims.aud)));
    }
    if claims.exp < now {
        return Err(TokenError::Expired);
    }
    if htm != hop.method || htu != hop.path {
        return Err(TokenError::Invalid(format!(
            "minted for {htm} {htu}, not {} {}",
            hop.method, hop.path
        )));
    }
    Ok(claims.identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ACCESS_AUDIENCE, ADMIN_ROLE, CUSTOMER_ROLE, Keys, now};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    // Two key pairs made for these tests with `openssl genpkey -algorithm
    // ed25519` (docs/services.md says how).
    const GATEWAY_SEED: &str = "7Ik08HiQg1cehrxFvLX9V60Nbl7bSrLPWyluK98ztnE";
    const GATEWAY_PUBLIC: &str = "O1WKu4fpTusRSL4UToiFYiGEJA8tyDMdSBxmW0TRxBg";
    const ORDERS_SEED: &str = "o2AmwRz_alOhwrUkLacGJtVOdGsLK7eLbySUoNHgQuw";
    const ORDERS_PUBLIC: &str = "ndmRNhiy2345LNRXADTS7BDtwV_tLacmE-n8OBmtVE4";

    fn alice() -> Identity {
        Identity {
            sub: "u-1".into(),
            email: "alice@example.com".into(),
            roles: vec![CUSTOMER_ROLE.into()],
        }
    }

    fn root() -> Identity {
        Identity {
            roles: vec![CUSTOMER_ROLE.into(), ADMIN_ROLE.into()],
            ..alice()
        }
    }

    fn signer(seed: &str) -> SigningKey {
        SigningKey::new("identity_key", seed).unwrap()
    }

    fn trusting(publics: &str) -> VerifyingKeys {
        VerifyingKeys::new("gateway_identity_public_keys", publics).unwrap()
    }

    const HOP: Hop<'static> = Hop {
        service: "orders",
        method: "POST",
        path: "/api/v1/orders/o-1/cancel",
    };

    #[test]
    fn a_token_is_good_for_one_service_method_and_path() {
        let token = issue_identity(&signer(GATEWAY_SEED), GATEWAY, &HOP, &alice(), now(), 10);
        let keys = trusting(GATEWAY_PUBLIC);
        assert_eq!(
            verify_identity(&keys, GATEWAY, &HOP, &token, now()),
            Ok(alice())
        );
        for other in [
            Hop {
                service: "payments",
                ..HOP
            },
            Hop {
                method: "GET",
                ..HOP
            },
            Hop {
                path: "/api/v1/orders/o-2/cancel",
                ..HOP
            },
        ] {
            assert!(
                matches!(
                    verify_identity(&keys, GATEWAY, &other, &token, now()),
                    Err(TokenError::Invalid(_))
                ),
                "{other:?}"
            );
        }
        let old = issue_identity(
            &signer(GATEWAY_SEED),
            GATEWAY,
            &HOP,
            &alice(),
            now() - IDENTITY_TTL_SECONDS - 1,
            10,
        );
        assert_eq!(
            verify_identity(&keys, GATEWAY, &HOP, &old, now()),
            Err(TokenError::Expired)
        );
    }

    /// The finding of issue 26: with one shared secret, every service could
    /// mint an administrator's token. A service's own key now makes no
    /// token a service takes from the gateway, whatever it claims.
    #[test]
    fn a_services_key_cannot_speak_for_a_client_or_an_administrator() {
        let gateway = trusting(GATEWAY_PUBLIC);
        for claimed_issuer in [GATEWAY, "orders"] {
            let forged = issue_identity(
                &signer(ORDERS_SEED),
                claimed_issuer,
                &HOP,
                &root(),
                now(),
                10,
            );
            assert!(
                matches!(
                    verify_identity(&gateway, GATEWAY, &HOP, &forged, now()),
                    Err(TokenError::Invalid(_))
                ),
                "issuer {claimed_issuer}"
            );
        }
        // Orders' tokens are believed only as orders', by whoever trusts
        // orders' key: not as the gateway's, even with that key at hand.
        let own = issue_identity(
            &signer(ORDERS_SEED),
            "orders",
            &HOP,
            &Identity::service("orders"),
            now(),
            10,
        );
        let orders = trusting(ORDERS_PUBLIC);
        assert_eq!(
            verify_identity(&orders, "orders", &HOP, &own, now()),
            Ok(Identity::service("orders"))
        );
        assert!(verify_identity(&orders, GATEWAY, &HOP, &own, now()).is_err());
    }

    /// A verifier holds public keys only: a token signed with HS256 and a
    /// public key as the secret (the classic algorithm confusion), or an
    /// access token, is refused.
    #[test]
    fn no_other_algorithm_or_kind_of_token_passes() {
        let public = URL_SAFE_NO_PAD.decode(GATEWAY_PUBLIC).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key_id(&public));
        let claims = Claims {
            registered: Registered::new(&root(), GATEWAY, HOP.audience(), now(), 60),
            htm: HOP.method.into(),
            htu: HOP.path.into(),
        };
        let confused =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
        let keys = trusting(GATEWAY_PUBLIC);
        assert!(verify_identity(&keys, GATEWAY, &HOP, &confused, now()).is_err());

        let secret = "a-secret-of-at-least-thirty-two-bytes";
        let access = crate::issue(
            &Keys::new("jwt_secret", secret, "").unwrap(),
            ACCESS_AUDIENCE,
            &root(),
            now(),
            60,
        );
        assert!(verify_identity(&keys, GATEWAY, &HOP, &access, now()).is_err());
    }

    #[test]
    fn a_rotation_lists_both_public_keys_until_the_old_one_goes() {
        let before = issue_identity(&signer(ORDERS_SEED), GATEWAY, &HOP, &alice(), now(), 10);
        let after = issue_identity(&signer(GATEWAY_SEED), GATEWAY, &HOP, &alice(), now(), 10);
        let rotating = trusting(&format!("{GATEWAY_PUBLIC}, {ORDERS_PUBLIC}"));
        assert_eq!(
            verify_identity(&rotating, GATEWAY, &HOP, &before, now()),
            Ok(alice())
        );
        assert_eq!(
            verify_identity(&rotating, GATEWAY, &HOP, &after, now()),
            Ok(alice())
        );
        let rotated = trusting(GATEWAY_PUBLIC);
        assert!(verify_identity(&rotated, GATEWAY, &HOP, &before, now()).is_err());
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_variable() {
        for bad in ["", "not base64!", "c2hvcnQ"] {
            let e = SigningKey::new("identity_key", bad).err().unwrap();
            assert!(e.contains("identity_key"), "{bad:?}: {e}");
        }
        let e = VerifyingKeys::new("orders_identity_public_keys", " , ")
            .err()
            .unwrap();
        assert!(
            e.contains("orders_identity_public_keys") && e.contains("no public key"),
            "{e}"
        );
        // Padding is tolerated, as JWK tools write it either way.
        assert!(VerifyingKeys::new("v", &format!("{GATEWAY_PUBLIC}=")).is_ok());
    }
}
