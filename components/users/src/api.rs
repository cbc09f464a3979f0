//! The users service's HTTP routes (reached from the gateway only: every
//! route demands the gateway's identity token, anonymous for sign-up and
//! login).

use bazaar_api::{ApiResult, Conflict, Method, Problem, StatusCode, json};
use bazaar_auth::{ACCESS_AUDIENCE, Identity};
use bazaar_service::{caller, json_body, now_rfc3339, setting, setting_as, through_gateway};
use serde::{Deserialize, Serialize};
use spin_sdk::http::Request;

use crate::domain::{self, Registration, User};
use crate::store::{Store, StoredUser};

/// This service's name: the audience of the identity tokens it accepts.
const SERVICE: &str = "users";

pub async fn route(req: Request) -> ApiResult {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let local = bazaar_api::local_path(SERVICE, &path)?;
    match (method, bazaar_api::segments(local).as_slice()) {
        (Method::GET, ["health"]) => health().await,
        (Method::POST, ["api", "v1", "users"]) => register(req).await,
        (Method::POST, ["api", "v1", "auth", "token"]) => token(req).await,
        (Method::GET, ["api", "v1", "users", "me"]) => me(&req).await,
        (_, ["api", "v1", "users"] | ["api", "v1", "auth", "token"]) => {
            Err(Problem::method_not_allowed("POST"))
        }
        (_, ["api", "v1", "users", "me"]) => Err(Problem::method_not_allowed("GET")),
        _ => Err(Problem::not_found(format!("no route for {path}"))),
    }
}

async fn health() -> ApiResult {
    Store::open().await?.ping().await?;
    Ok(bazaar_api::healthy("users"))
}

/// Header a registration presents the admin bootstrap token in.
const BOOTSTRAP_HEADER: &str = "x-admin-bootstrap-token";

async fn register(req: Request) -> ApiResult {
    through_gateway(&req, SERVICE).await?;
    let presented = bazaar_service::header(&req, BOOTSTRAP_HEADER);
    let registration: Registration = json_body(req).await?;
    let valid = registration.validate()?;
    let admin = match presented {
        None => false,
        Some(presented) => {
            let configured = setting("admin_bootstrap_token").await?;
            if configured.is_empty() {
                return Err(Problem::bad_request(format!(
                    "{BOOTSTRAP_HEADER}: no admin bootstrap token is configured"
                )));
            }
            if !domain::bootstrap_token_matches(&configured, &presented) {
                return Err(Problem::forbidden(format!(
                    "{BOOTSTRAP_HEADER}: not the admin bootstrap token"
                )));
            }
            true
        }
    };
    let user = StoredUser {
        id: uuid::Uuid::now_v7().to_string(),
        email: valid.email,
        name: valid.name,
        password_hash: domain::hash_password(&valid.password, hash_cost().await?)?,
        created_at: now_rfc3339(),
        admin,
    };
    let store = Store::open().await?;
    if !store.insert(&user, &valid.email_key).await? {
        return Err(Problem::conflict(
            Conflict::EmailTaken,
            "a user with this email already exists",
        ));
    }
    Ok(json(StatusCode::CREATED, &public(&user, &admins().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct AccessToken {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Exchanges credentials for an access token. A wrong password and an
/// unknown email get the same answer, after the same work: one Argon2id
/// computation at the configured cost.
async fn token(req: Request) -> ApiResult {
    through_gateway(&req, SERVICE).await?;
    let credentials: Credentials = json_body(req).await?;
    let cost = hash_cost().await?;
    let store = Store::open().await?;
    let user = store
        .by_email_key(&domain::email_key(&credentials.email))
        .await?;
    let user = match user {
        Some(user) if domain::password_matches(&credentials.password, &user.password_hash) => {
            if !domain::hashed_at(&user.password_hash, cost) {
                rehash(&store, &user, &credentials.password, cost).await;
            }
            user
        }
        Some(user) => {
            // A hash made at an older cost took its own time to check: add
            // the current cost's, so the answer is never quicker than for
            // an unknown email.
            if !domain::hashed_at(&user.password_hash, cost) {
                domain::check_against_nobody(&credentials.password, cost)?;
            }
            return Err(Problem::unauthorized("invalid email or password"));
        }
        None => {
            domain::check_against_nobody(&credentials.password, cost)?;
            return Err(Problem::unauthorized("invalid email or password"));
        }
    };
    let identity = Identity {
        sub: user.id.clone(),
        email: user.email.clone(),
        roles: admins().await?.roles(&user.email, user.admin),
    };
    let ttl = setting("access_token_ttl_seconds")
        .await?
        .parse::<u64>()
        .map_err(|_| Problem::internal("access_token_ttl_seconds is not a number of seconds"))?;
    let token = bazaar_auth::issue(
        &bazaar_service::signing_keys("jwt_secret").await?,
        ACCESS_AUDIENCE,
        &identity,
        bazaar_auth::now(),
        ttl,
    );
    Ok(json(
        StatusCode::OK,
        &AccessToken {
            access_token: token,
            token_type: "Bearer",
            expires_in: ttl,
        },
    ))
}

/// Stores the password hashed at the current cost. A failure costs this
/// login nothing (it is logged; the next login tries again).
async fn rehash(store: &Store, user: &StoredUser, password: &str, cost: domain::HashCost) {
    let outcome = match domain::hash_password(password, cost) {
        Ok(rehashed) => store.set_password_hash(&user.id, &rehashed).await,
        Err(problem) => Err(problem),
    };
    if let Err(problem) = outcome {
        eprintln!(
            "{}",
            serde_json::json!({ "level": "warn", "msg": "password rehash failed", "user_id": user.id, "error": problem.detail })
        );
    }
}

/// Argon2id's cost, from the `argon2_*` variables.
async fn hash_cost() -> Result<domain::HashCost, Problem> {
    Ok(domain::HashCost {
        memory_kib: setting_as("argon2_memory_kib").await?,
        iterations: setting_as("argon2_iterations").await?,
        parallelism: setting_as("argon2_parallelism").await?,
    })
}

async fn me(req: &Request) -> ApiResult {
    let identity = caller(req, SERVICE).await?;
    let store = Store::open().await?;
    let user = store
        .by_id(&identity.sub)
        .await?
        .ok_or_else(|| Problem::unauthorized("the token's user no longer exists"))?;
    Ok(json(StatusCode::OK, &public(&user, &admins().await?)))
}

/// Who is an administrator, as the variables say.
async fn admins() -> Result<domain::Admins, Problem> {
    Ok(domain::Admins::from_settings(
        &setting("admin_emails").await?,
        &setting("admin_bootstrap_token").await?,
    ))
}

fn public(user: &StoredUser, admins: &domain::Admins) -> User {
    User {
        id: user.id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        roles: admins.roles(&user.email, user.admin),
        created_at: user.created_at.clone(),
    }
}
