//! Who is calling, and how this component speaks for itself.
//!
//! A service believes a caller only from an identity token
//! ([`bazaar_auth::identity`]) in the identity header, checked against the
//! public keys of the signer the route trusts: the gateway's for clients
//! and administrators ([`caller`], [`admin`]), another service's for that
//! service's own calls ([`calling_service`]). A component that calls a
//! service signs with its own `identity_key` ([`identity_token`]).
//! Access-token secrets (`jwt_secret`) are read here too, for the users
//! service that signs them and the gateway that verifies them.

use bazaar_api::Problem;
use bazaar_auth::{GATEWAY, Hop, IDENTITY_HEADER, Identity, Keys, SigningKey, VerifyingKeys};
use spin_sdk::http::Request;
use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{header, setting};

/// The variable holding this component's own private identity key.
const IDENTITY_KEY: &str = "identity_key";

/// The key that signs access tokens (`jwt_secret`). A secret under 32
/// bytes is the operator's mistake: logged, and 500.
pub async fn signing_keys(variable: &str) -> Result<Keys, Problem> {
    keys(variable, "").await
}

/// The keys that verify access tokens: the current one, and
/// `<variable>_previous` during a rotation.
pub async fn verifying_keys(variable: &str) -> Result<Keys, Problem> {
    let previous = setting(&format!("{variable}_previous")).await?;
    keys(variable, &previous).await
}

async fn keys(variable: &str, previous: &str) -> Result<Keys, Problem> {
    Keys::new(variable, &setting(variable).await?, previous).map_err(misconfigured)
}

fn misconfigured(e: String) -> Problem {
    eprintln!("{e}");
    Problem::internal("the service is misconfigured")
}

thread_local! {
    /// Identity keys this instance has parsed (its own, and each signer's
    /// public keys by variable): deriving a public key or decoding a list
    /// on every request would cost more than the signature itself.
    /// Variables do not change under a running instance.
    static OWN_KEY: RefCell<Option<SigningKey>> = const { RefCell::new(None) };
    static VERIFYING: RefCell<BTreeMap<String, VerifyingKeys>> = const { RefCell::new(BTreeMap::new()) };
}

async fn own_key() -> Result<SigningKey, Problem> {
    if let Some(key) = OWN_KEY.with_borrow(Clone::clone) {
        return Ok(key);
    }
    let key =
        SigningKey::new(IDENTITY_KEY, &setting(IDENTITY_KEY).await?).map_err(misconfigured)?;
    OWN_KEY.set(Some(key.clone()));
    Ok(key)
}

/// The public keys of `signer` (`gateway`, `orders`), from the component's
/// `<signer>_identity_public_keys` variable.
async fn public_keys(signer: &str) -> Result<VerifyingKeys, Problem> {
    let variable = format!("{signer}_identity_public_keys");
    if let Some(keys) = VERIFYING.with_borrow(|keys| keys.get(&variable).cloned()) {
        return Ok(keys);
    }
    let keys = VerifyingKeys::new(&variable, &setting(&variable).await?).map_err(misconfigured)?;
    VERIFYING.with_borrow_mut(|known| known.insert(variable, keys.clone()));
    Ok(keys)
}

/// The hop this request is: `service`, its method, and its path and query.
fn hop<'a>(req: &'a Request, service: &'a str) -> Hop<'a> {
    Hop {
        service,
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
    }
}

/// The identity token `issuer` vouches with, or 401.
async fn verified(
    req: &Request,
    service: &str,
    signer: &str,
    issuer: &str,
) -> Result<Identity, Problem> {
    let token = header(req, IDENTITY_HEADER).ok_or_else(|| {
        Problem::unauthorized(
            "no identity token: clients call this API through the gateway, with a Bearer access token where one is needed",
        )
    })?;
    bazaar_auth::verify_identity(
        &public_keys(signer).await?,
        issuer,
        &hop(req, service),
        &token,
        bazaar_auth::now(),
    )
    .map_err(|e| Problem::unauthorized(format!("the caller's identity could not be verified: {e}")))
}

/// The caller, as the gateway vouches for it in the identity header: a
/// token the gateway signed for `service` and for this request's method
/// and path. An anonymous caller ([`Identity::anonymous`]) is refused: the
/// route needs a user.
pub async fn caller(req: &Request, service: &str) -> Result<Identity, Problem> {
    let identity = through_gateway(req, service).await?;
    if identity.is_anonymous() {
        return Err(Problem::unauthorized(
            "authentication required: send a Bearer access token",
        ));
    }
    Ok(identity)
}

/// The caller of a route that serves anyone who comes through the gateway
/// (sign-up, login), anonymous or not. A request that reached the service
/// another way (its own route, `/services/<name>/...`) bypassed the
/// gateway's checks and rate limits, and is refused (401).
pub async fn through_gateway(req: &Request, service: &str) -> Result<Identity, Problem> {
    verified(req, service, "gateway", GATEWAY).await
}

/// The caller, who must be an administrator (the gateway's own calls to
/// internal routes carry [`bazaar_auth::Identity::gateway`]): "only
/// administrators may `what`" otherwise.
pub async fn admin(req: &Request, service: &str, what: &str) -> Result<Identity, Problem> {
    let identity = caller(req, service).await?;
    if identity.is_admin() {
        Ok(identity)
    } else {
        Err(Problem::forbidden(format!(
            "only administrators may {what}"
        )))
    }
}

/// Refuses (401) a call that does not come from the service `signer` on its
/// own account, as its identity token, signed with its key, says.
pub async fn calling_service(req: &Request, service: &str, signer: &str) -> Result<(), Problem> {
    let identity = verified(req, service, signer, signer).await?;
    if identity != Identity::service(signer) {
        return Err(Problem::unauthorized(format!(
            "only the {signer} service may call this route"
        )));
    }
    Ok(())
}

/// An identity token by which this component, the service `me`, calls
/// `hop` on its own account, good for `deadline_seconds` plus a margin.
pub async fn identity_token(
    me: &str,
    hop: &Hop<'_>,
    deadline_seconds: u64,
) -> Result<String, Problem> {
    sign_identity(me, &Identity::service(me), hop, deadline_seconds).await
}

/// An identity token in which this component, as `issuer`, vouches for
/// `identity` on `hop` (the gateway, for the client it forwards), signed
/// with its own `identity_key`.
pub async fn sign_identity(
    issuer: &str,
    identity: &Identity,
    hop: &Hop<'_>,
    deadline_seconds: u64,
) -> Result<String, Problem> {
    Ok(bazaar_auth::issue_identity(
        &own_key().await?,
        issuer,
        hop,
        identity,
        bazaar_auth::now(),
        deadline_seconds,
    ))
}
