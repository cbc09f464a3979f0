//! Users and their rules, free of I/O: what a valid registration is, how
//! passwords are hashed, who is an admin.

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};
use bazaar_api::Problem;
use bazaar_auth::{ADMIN_ROLE, CUSTOMER_ROLE};
use serde::{Deserialize, Serialize};

pub const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_CHARS: usize = 1024;
const MAX_NAME_CHARS: usize = 200;

/// `POST /api/v1/users` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub name: String,
}

/// A registration that passed validation.
#[derive(Debug)]
pub struct ValidRegistration {
    pub email: String,
    /// The case-folded email: uniqueness is case-insensitive.
    pub email_key: String,
    pub name: String,
    pub password: String,
}

impl Registration {
    pub fn validate(self) -> Result<ValidRegistration, Problem> {
        let email = self.email.trim().to_string();
        let mut invalid = Vec::new();
        if !is_plausible_email(&email) {
            invalid.push((
                "email",
                "must be an email address such as ada@example.com".to_string(),
            ));
        }
        let password_chars = self.password.chars().count();
        if password_chars < MIN_PASSWORD_CHARS {
            invalid.push((
                "password",
                format!("must be at least {MIN_PASSWORD_CHARS} characters"),
            ));
        } else if password_chars > MAX_PASSWORD_CHARS {
            invalid.push((
                "password",
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            invalid.push(("name", format!("must be 1 to {MAX_NAME_CHARS} characters")));
        }
        if let Some((field, why)) = invalid.first() {
            let fields: serde_json::Map<String, serde_json::Value> = invalid
                .iter()
                .map(|(f, w)| (f.to_string(), w.clone().into()))
                .collect();
            return Err(Problem::unprocessable(format!("`{field}` {why}")).with("fields", fields));
        }
        Ok(ValidRegistration {
            email_key: email_key(&email),
            email,
            name,
            password: self.password,
        })
    }
}

/// The lookup key for an email: trimmed and lower-cased.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A deliberately loose check (one `@`, a dotted domain, no spaces): the only
/// real test of an address is mail reaching it.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && email.len() <= 254
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

/// Who is an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admins {
    /// Development and tests: whoever has an email in `admin_emails` (read
    /// at the time of asking, so a change needs no data migration). Whoever
    /// registers such an address first is admin: fine on a laptop, not on
    /// the internet.
    ByEmail(String),
    /// Production (`admin_bootstrap_token` set): only users granted the
    /// role when they registered, by presenting the token.
    Granted,
}

impl Admins {
    /// `admin_bootstrap_token` set means production: emails grant nothing.
    pub fn from_settings(admin_emails: &str, bootstrap_token: &str) -> Admins {
        if bootstrap_token.is_empty() {
            Admins::ByEmail(admin_emails.to_string())
        } else {
            Admins::Granted
        }
    }

    pub fn roles(&self, email: &str, granted_admin: bool) -> Vec<String> {
        let by_email = match self {
            Admins::ByEmail(list) => {
                let key = email_key(email);
                list.split(',')
                    .map(email_key)
                    .any(|admin| !admin.is_empty() && admin == key)
            }
            Admins::Granted => false,
        };
        let mut roles = vec![CUSTOMER_ROLE.to_string()];
        if granted_admin || by_email {
            roles.push(ADMIN_ROLE.to_string());
        }
        roles
    }
}

/// Whether a registration's `presented` bootstrap token is the configured
/// one, compared in constant time. An empty configuration matches nothing.
pub fn bootstrap_token_matches(configured: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    !configured.is_empty() && bool::from(configured.as_bytes().ct_eq(presented.as_bytes()))
}

/// Argon2id's cost (the `argon2_*` variables). The defaults are OWASP's
/// Password Storage Cheat Sheet's first configuration for Argon2id: 19 MiB
/// of memory, 2 passes, 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashCost {
    fn argon2(&self) -> Result<Argon2<'static>, Problem> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| {
                eprintln!(
                    "variables argon2_memory_kib, argon2_iterations, argon2_parallelism: {e}"
                );
                Problem::internal("the service is misconfigured")
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Argon2id at `cost` with a random salt, as a PHC string that records its
/// own parameters (so changing the cost does not lock anyone out).
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, Problem> {
    cost.argon2()?
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| Problem::internal(format!("cannot hash the password: {e}")))
}

/// Whether `phc` was made at `cost` (else a login rehashes the password,
/// so that every account's check costs the same as an unknown email's).
pub fn hashed_at(phc: &str, cost: HashCost) -> bool {
    PasswordHash::new(phc)
        .ok()
        .and_then(|hash| Params::try_from(&hash).ok())
        .is_some_and(|params| {
            (params.m_cost(), params.t_cost(), params.p_cost())
                == (cost.memory_kib, cost.iterations, cost.parallelism)
        })
}

/// The work of checking `password` against a hash made at `cost`, for a
/// login whose email nobody registered: one Argon2id computation with the
/// same parameters, under a fixed salt, whose result is thrown away. So
/// the answer for an unknown email takes as long as for a wrong password,
/// on every request (no per-instance decoy to compute first).
pub fn check_against_nobody(password: &str, cost: HashCost) -> Result<(), Problem> {
    const SALT: &[u8] = b"bazaar-unknown-email-salt";
    let mut output = [0u8; 32];
    cost.argon2()?
        .hash_password_into(password.as_bytes(), SALT, &mut output)
        .map_err(|e| Problem::internal(format!("cannot hash the password: {e}")))
}

pub fn password_matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(email: &str, password: &str, name: &str) -> Registration {
        Registration {
            email: email.into(),
            password: password.into(),
            name: name.into(),
        }
    }

    #[test]
    fn valid_registration_normalises_email() {
        let valid = registration(" Ada@Example.COM ", "correct horse", "Ada")
            .validate()
            .unwrap();
        assert_eq!(valid.email, "Ada@Example.COM");
        assert_eq!(valid.email_key, "ada@example.com");
    }

    #[test]
    fn invalid_fields_are_named() {
        let e = registration("ada", "short", "").validate().unwrap_err();
        assert_eq!(e.status, 422);
        let fields = &e.extensions["fields"];
        assert!(
            fields["email"].is_string()
                && fields["password"].is_string()
                && fields["name"].is_string()
        );
        for bad in ["a@b", "@b.c", "a b@c.d", "a@.c", "a@c."] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }

    #[test]
    fn admins_come_from_the_emails_or_from_a_grant() {
        let by_email = Admins::from_settings(" root@shop.test ,x@y.z", "");
        assert_eq!(
            by_email.roles("Root@Shop.test", false),
            ["customer", "admin"]
        );
        assert_eq!(by_email.roles("ada@shop.test", false), ["customer"]);
        let granted = Admins::from_settings("root@shop.test", "a-bootstrap-token");
        assert_eq!(granted, Admins::Granted);
        assert_eq!(granted.roles("root@shop.test", false), ["customer"]);
        assert_eq!(granted.roles("ada@shop.test", true), ["customer", "admin"]);
    }

    #[test]
    fn bootstrap_tokens_match_exactly_and_never_when_unset() {
        assert!(bootstrap_token_matches("t0ken", "t0ken"));
        assert!(!bootstrap_token_matches("t0ken", "t0ke"));
        assert!(!bootstrap_token_matches("t0ken", "t0ken "));
        assert!(!bootstrap_token_matches("", ""));
    }

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let phc = hash_password("correct horse", CHEAP).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(password_matches("correct horse", &phc));
        assert!(!password_matches("wrong horse", &phc));
        assert!(!password_matches("correct horse", "not a hash"));
    }

    #[test]
    fn a_hash_knows_its_cost() {
        let phc = hash_password("correct horse", CHEAP).unwrap();
        assert!(hashed_at(&phc, CHEAP));
        let dearer = HashCost {
            iterations: 2,
            ..CHEAP
        };
        assert!(!hashed_at(&phc, dearer));
        assert!(!hashed_at("not a hash", CHEAP));
    }

    #[test]
    fn an_unknown_email_costs_one_hash_at_the_current_cost() {
        assert!(check_against_nobody("anything", CHEAP).is_ok());
        let impossible = HashCost {
            memory_kib: 1,
            ..CHEAP
        };
        assert_eq!(
            check_against_nobody("anything", impossible)
                .unwrap_err()
                .status,
            500
        );
    }
}
