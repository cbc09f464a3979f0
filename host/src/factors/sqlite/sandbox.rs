//! What a guest's SQL may not do: reach outside its database file, or
//! change the shared connections it runs on.
//!
//! Installed as SQLite's authorizer on every connection of a guest's
//! database, so it judges each statement when it is prepared (and `VACUUM
//! INTO`'s attach when it runs), whatever its spelling. Denied:
//!
//! - `ATTACH` of any file (and so `VACUUM INTO` a path): only a private
//!   temporary database (`''`, `':memory:'`) may be attached, which plain
//!   `VACUUM` uses;
//! - `load_extension()`;
//! - every `PRAGMA` but those that only describe the database (the schema
//!   lists, integrity checks) and `user_version` / `application_id`.
//!   Pragmas that touch the file system (`temp_store_directory`), the
//!   file's durability or format (`journal_mode`, `synchronous`,
//!   `writable_schema`, …) or a connection's settings (`foreign_keys`, …)
//!   would change what every other session shares: connections are pooled.
//!
//! A denied statement fails with SQLite's "not authorized"; the host logs
//! what it refused.

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Pragmas a guest may run, with or without an argument: they describe the
/// database, or set the application's own version numbers.
const ALLOWED_PRAGMAS: &[&str] = &[
    "application_id",
    "collation_list",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "optimize",
    "pragma_list",
    "quick_check",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

/// Pragmas a guest may read but not set.
const READABLE_PRAGMAS: &[&str] = &[
    "data_version",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "journal_mode",
    "page_count",
    "page_size",
    "schema_version",
];

pub fn install(conn: &Connection) {
    conn.authorizer(Some(judge));
}

fn judge(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Attach { filename } if !matches!(filename, "" | ":memory:") => {
            deny("ATTACH of a file", filename)
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            deny("load_extension()", "")
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = ALLOWED_PRAGMAS.contains(&name.as_str())
                || (pragma_value.is_none() && READABLE_PRAGMAS.contains(&name.as_str()));
            if allowed {
                Authorization::Allow
            } else {
                deny("PRAGMA", pragma_name)
            }
        }
        _ => Authorization::Allow,
    }
}

fn deny(what: &str, detail: &str) -> Authorization {
    tracing::warn!(what, detail, "a guest's SQL statement was refused");
    Authorization::Deny
}
