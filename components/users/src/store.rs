//! The users service's own SQLite database (label `users`).

use bazaar_api::Problem;
use bazaar_database::{Database, Migration};
use spin_sdk::sqlite::{RowResult, Value};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &["CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        email         TEXT NOT NULL,
        email_key     TEXT NOT NULL UNIQUE,
        name          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at    TEXT NOT NULL
    )"],
    },
    Migration {
        version: 2,
        // Granted at registration with the admin bootstrap token.
        statements: &["ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0"],
    },
];

/// A stored user, with what the API never shows.
pub struct StoredUser {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: String,
    /// Granted the administrator role (see `domain::Admins`).
    pub admin: bool,
}

pub struct Store(Database);

impl Store {
    pub async fn open() -> Result<Store, Problem> {
        Database::open("users", "users", MIGRATIONS)
            .await
            .map(Store)
    }

    /// Inserts the user; `Ok(false)` when the email is already registered.
    pub async fn insert(&self, user: &StoredUser, email_key: &str) -> Result<bool, Problem> {
        self.0
            .rows(
                "INSERT INTO users (id, email, email_key, name, password_hash, created_at, admin)
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (email_key) DO NOTHING",
                vec![
                    Value::Text(user.id.clone()),
                    Value::Text(user.email.clone()),
                    Value::Text(email_key.to_string()),
                    Value::Text(user.name.clone()),
                    Value::Text(user.password_hash.clone()),
                    Value::Text(user.created_at.clone()),
                    Value::Integer(i64::from(user.admin)),
                ],
            )
            .await?;
        Ok(self.0.changes().await == 1)
    }

    /// Replaces a user's password hash (after a login, with the current
    /// cost).
    pub async fn set_password_hash(&self, id: &str, password_hash: &str) -> Result<(), Problem> {
        self.0
            .rows(
                "UPDATE users SET password_hash = ? WHERE id = ?",
                vec![
                    Value::Text(password_hash.to_string()),
                    Value::Text(id.to_string()),
                ],
            )
            .await
            .map(drop)
    }

    pub async fn by_email_key(&self, email_key: &str) -> Result<Option<StoredUser>, Problem> {
        self.one("email_key", email_key).await
    }

    pub async fn by_id(&self, id: &str) -> Result<Option<StoredUser>, Problem> {
        self.one("id", id).await
    }

    async fn one(&self, column: &str, value: &str) -> Result<Option<StoredUser>, Problem> {
        let sql = format!(
            "SELECT id, email, name, password_hash, created_at, admin FROM users WHERE {column} = ?"
        );
        let rows = self
            .0
            .rows(&sql, vec![Value::Text(value.to_string())])
            .await?;
        Ok(rows.first().map(row_to_user))
    }

    pub async fn ping(&self) -> Result<(), Problem> {
        self.0.ping().await
    }
}

fn row_to_user(row: &RowResult) -> StoredUser {
    let text = |i: usize| row.get::<&str>(i).unwrap_or_default().to_string();
    StoredUser {
        id: text(0),
        email: text(1),
        name: text(2),
        password_hash: text(3),
        created_at: text(4),
        admin: row.get::<i64>(5).unwrap_or_default() == 1,
    }
}
