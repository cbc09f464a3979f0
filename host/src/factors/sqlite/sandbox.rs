//! What a guest's SQL may not do: reach outside its database file, or
//! leave anything on the pooled connections it runs on for the next guest
//! to find.
//!
//! Installed as SQLite's authorizer on every connection of a guest's
//! database, so it judges each statement when it is prepared (and `VACUUM
//! INTO`'s attach when it runs), whatever its spelling. It **allows only
//! what it knows**: reading and changing the database's own tables, views,
//! triggers and indexes, transactions, and the functions SQLite is built
//! with. Everything else is refused, in particular:
//!
//! - `ATTACH` of any file (and so `VACUUM INTO` a path): only a private
//!   temporary database (`''`, `':memory:'`) may be attached, which plain
//!   `VACUUM` uses. SQLite names the file to the authorizer only when it is
//!   a plain string literal; for an expression or a parameter it names
//!   none, and rusqlite reports an action it cannot name as unknown: that
//!   is refused like every action not listed here;
//! - `load_extension()`, and `fts3_tokenizer()` (which takes a pointer);
//! - virtual tables of modules other than SQLite's full-text and R-tree
//!   indexes;
//! - every `PRAGMA` but those that only describe the database (the schema
//!   lists, integrity checks) and `user_version` / `application_id` of the
//!   main database. Pragmas that touch the file system
//!   (`temp_store_directory`), the file's durability or format
//!   (`journal_mode`, `synchronous`, `writable_schema`, …) or a
//!   connection's settings (`foreign_keys`, …) would change what every
//!   other session shares: connections are pooled.
//!
//! SQLite's defensive mode is on as well, so nothing a guest writes can
//! corrupt the file's structure (shadow tables, the schema table).
//!
//! What a guest may create that lives on the connection rather than in the
//! file (`TEMP` tables, views, triggers and indexes, an attached private
//! database) lasts only while its lease does: such a statement marks the
//! connection, and [`reset`] drops it all before the connection is leased
//! again. Within a transaction that is the whole transaction; outside one,
//! the statement.
//!
//! A denied statement fails with SQLite's "not authorized"; the host logs
//! what it refused.

use anyhow::{Context as _, bail};
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use crate::backends::sqlite_pool::{Guard, Tainted};

/// The sandbox as the pool fits it to each connection.
pub const GUARD: Guard = Guard { install, reset };

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

/// Functions a guest may not call: `load_extension` loads native code,
/// `fts3_tokenizer` reads and writes a pointer.
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer"];

/// Virtual table modules a guest may create tables with: the full-text and
/// R-tree indexes, which keep their data in ordinary tables of the file.
const ALLOWED_MODULES: &[&str] = &["fts3", "fts4", "fts5", "rtree", "rtree_i32", "geopoly"];

fn install(conn: &Connection, tainted: Tainted) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.authorizer(Some(move |context: AuthContext<'_>| {
        if leaves_state_on_the_connection(&context) {
            tainted.set();
        }
        judge(context)
    }));
    Ok(())
}

/// Whether an action puts something on the connection that outlives the
/// statement: an attached database, or an object in the `temp` schema (or
/// in an attached one).
fn leaves_state_on_the_connection(context: &AuthContext<'_>) -> bool {
    matches!(
        context.action,
        AuthAction::Attach { .. }
            | AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. }
    ) || context.database_name.is_some_and(|db| db != "main")
}

fn judge(context: AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Insert { .. }
        | AuthAction::Update { .. }
        | AuthAction::Delete { .. }
        | AuthAction::Recursive
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateIndex { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::AlterTable { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::Analyze { .. }
        | AuthAction::Detach { .. } => Authorization::Allow,
        AuthAction::Attach { filename } => {
            if matches!(filename, "" | ":memory:") {
                Authorization::Allow
            } else {
                deny("ATTACH of a file", filename)
            }
        }
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS
                .iter()
                .any(|f| function_name.eq_ignore_ascii_case(f))
            {
                deny("a function", function_name)
            } else {
                Authorization::Allow
            }
        }
        AuthAction::CreateVtable { module_name, .. }
        | AuthAction::DropVtable { module_name, .. } => {
            if ALLOWED_MODULES
                .iter()
                .any(|m| module_name.eq_ignore_ascii_case(m))
            {
                Authorization::Allow
            } else {
                deny("a virtual table module", module_name)
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let sets = pragma_value.is_some();
            let on_main = context.database_name.is_none_or(|db| db == "main");
            let allowed = (ALLOWED_PRAGMAS.contains(&name.as_str()) && (on_main || !sets))
                || (!sets && READABLE_PRAGMAS.contains(&name.as_str()));
            if allowed {
                Authorization::Allow
            } else {
                deny("PRAGMA", pragma_name)
            }
        }
        other => deny("an action the sandbox does not know", &format!("{other:?}")),
    }
}

fn deny(what: &str, detail: &str) -> Authorization {
    tracing::warn!(what, detail, "a guest's SQL statement was refused");
    Authorization::Deny
}

/// Puts a connection back as it was opened: every database but `main` and
/// `temp` detached, every object of the `temp` schema dropped (triggers and
/// views first, then virtual tables, whose own tables go with them, then
/// the rest). Checked afterwards: anything left is an error, and the pool
/// closes the connection instead.
fn reset(conn: &Connection) -> anyhow::Result<()> {
    for name in attached(conn)? {
        conn.execute_batch(&format!("DETACH DATABASE {}", quoted(&name)))
            .with_context(|| format!("cannot detach {name}"))?;
    }
    const TEMP_OBJECTS: &str = "SELECT type, name FROM temp.sqlite_schema \
         WHERE type IN ('trigger', 'view', 'table') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY CASE type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1 ELSE 2 END, \
         sql LIKE 'CREATE VIRTUAL%' DESC";
    let objects: Vec<(String, String)> = conn
        .prepare(TEMP_OBJECTS)?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, name) in objects {
        conn.execute_batch(&format!(
            "DROP {} IF EXISTS temp.{}",
            kind.to_ascii_uppercase(),
            quoted(&name)
        ))
        .with_context(|| format!("cannot drop the temporary {kind} {name}"))?;
    }
    let objects: i64 = conn.query_row("SELECT count(*) FROM temp.sqlite_schema", [], |row| {
        row.get(0)
    })?;
    let databases = attached(conn)?.len();
    if objects != 0 || databases != 0 {
        bail!("{objects} temporary objects and {databases} attached databases remain");
    }
    Ok(())
}

/// The databases attached to `conn`, by name: `PRAGMA database_list`
/// without `main` and `temp` (its `seq` 0 and 1).
fn attached(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut names = Vec::new();
    conn.pragma_query(None, "database_list", |row| {
        if row.get::<_, i64>(0)? > 1 {
            names.push(row.get(1)?);
        }
        Ok(())
    })?;
    Ok(names)
}

/// `name` as an SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    //! The sandbox on a real database file, through the pool that leases
    //! its connections to guests.

    use super::GUARD;
    use crate::app::runtime_config::Location;
    use crate::backends::sqlite_pool::SqliteFile;
    use rusqlite::types::Value;
    use std::path::Path;
    use std::sync::Arc;

    fn open(dir: &Path) -> Arc<SqliteFile> {
        SqliteFile::open(&Location::File(dir.join("guest.db")), "", Some(GUARD)).unwrap()
    }

    /// Runs `sql` with `params` on the file's writer, as a guest's
    /// statement runs: prepared, then stepped to the end.
    async fn run(file: &SqliteFile, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Value>> {
        let writer = file.writer().await.unwrap();
        let mut stmt = writer.prepare(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(row.get(0)?);
        }
        Ok(out)
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    /// Every way of naming a file to `ATTACH` and `VACUUM INTO` that SQLite
    /// accepts (a literal, an expression, a parameter, a subquery), and
    /// the functions and pragmas that reach past the database: all
    /// refused, and no file appears.
    #[tokio::test]
    async fn no_spelling_of_an_escape_gets_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let file = open(dir.path());
        let escape = outside.join("escape.db").display().to_string();
        let folder = format!("{}/", outside.display());
        let lib = "/usr/lib/x86_64-linux-gnu/libm.so.6".to_string();
        let attempts: Vec<(String, Vec<Value>)> = vec![
            (format!("ATTACH DATABASE '{escape}' AS x"), vec![]),
            (format!("ATTACH 'file:{escape}?mode=rwc' AS x"), vec![]),
            (format!("ATTACH DATABASE '{folder}' || 'a.db' AS x"), vec![]),
            ("ATTACH DATABASE ? AS x".into(), vec![text(&escape)]),
            (
                "ATTACH DATABASE ?1 || ?2 AS x".into(),
                vec![text(&folder), text("b.db")],
            ),
            (format!("ATTACH printf('%s', '{escape}') AS x"), vec![]),
            (format!("ATTACH (SELECT '{escape}') AS x"), vec![]),
            ("ATTACH ':memory' || '' AS x".into(), vec![]),
            (format!("VACUUM INTO '{escape}'"), vec![]),
            (format!("VACUUM INTO '{folder}' || 'c.db'"), vec![]),
            ("VACUUM INTO ?".into(), vec![text(&escape)]),
            (format!("SELECT load_extension('{lib}')"), vec![]),
            ("SELECT load_extension(?)".into(), vec![text(&lib)]),
            ("SELECT LOAD_EXTENSION(? || '')".into(), vec![text(&lib)]),
            ("SELECT fts3_tokenizer('simple')".into(), vec![]),
            (format!("PRAGMA temp_store_directory = '{folder}'"), vec![]),
            ("PRAGMA journal_mode = DELETE".into(), vec![]),
            ("PRAGMA synchronous = OFF".into(), vec![]),
            ("PRAGMA writable_schema = ON".into(), vec![]),
            ("PRAGMA foreign_keys = ON".into(), vec![]),
            ("PRAGMA schema_version = 1".into(), vec![]),
            ("PRAGMA temp.user_version = 1".into(), vec![]),
            ("CREATE VIRTUAL TABLE x USING dbstat".into(), vec![]),
        ];
        for (sql, params) in &attempts {
            let error = run(&file, sql, params)
                .await
                .expect_err(&format!("{sql} {params:?} ran"));
            assert!(
                error.to_string().contains("authoriz"),
                "{sql} {params:?}: {error}"
            );
        }
        let created: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(
            created.is_empty(),
            "files outside the database: {created:?}"
        );
    }

    /// What a guest may do with its own database still works: describe
    /// and version it, vacuum it, index text, use a temporary table in a
    /// transaction.
    #[tokio::test]
    async fn the_database_itself_stays_usable() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(dir.path());
        let writer = file.writer().await.unwrap();
        writer
            .execute_batch(
                "CREATE TABLE notes (body TEXT);
                 CREATE VIRTUAL TABLE search USING fts5(body);
                 INSERT INTO search VALUES ('sandboxed sqlite');
                 PRAGMA user_version = 7;
                 PRAGMA main.application_id = 9;
                 VACUUM;
                 BEGIN;
                 CREATE TEMP TABLE scratch (n);
                 INSERT INTO scratch VALUES (1);
                 INSERT INTO notes SELECT 'n' || n FROM scratch;
                 COMMIT;",
            )
            .unwrap();
        let version: i64 = writer
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7);
        let found: String = writer
            .query_row(
                "SELECT body FROM search WHERE search MATCH 'sqlite'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, "sandboxed sqlite");
        let notes: String = writer
            .query_row("SELECT body FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(notes, "n1");
    }

    /// A `TEMP` trigger on a main table, a temporary table, view and
    /// virtual table, and an attached private database, made under one
    /// lease, are gone when the connection is leased again: the trigger
    /// no longer acts on the next guest's inserts.
    #[tokio::test]
    async fn nothing_of_one_lease_reaches_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let file = open(dir.path());
        {
            let writer = file.writer().await.unwrap();
            writer
                .execute_batch(
                    "CREATE TABLE processed (id TEXT PRIMARY KEY);
                     CREATE TEMP TRIGGER wipe AFTER INSERT ON main.processed
                         BEGIN DELETE FROM processed; END;
                     CREATE TEMP TABLE kept (a);
                     CREATE TEMP VIEW seen AS SELECT * FROM kept;
                     CREATE VIRTUAL TABLE temp.words USING fts5(body);
                     ATTACH ':memory:' AS scratch;
                     CREATE TABLE scratch.t (a);",
                )
                .unwrap();
            writer
                .execute("INSERT INTO processed VALUES ('a')", [])
                .unwrap();
            let kept: i64 = writer
                .query_row("SELECT count(*) FROM processed", [], |r| r.get(0))
                .unwrap();
            assert_eq!(kept, 0, "the trigger acts within its own lease");
        }
        let writer = file.writer().await.unwrap();
        writer
            .execute("INSERT INTO processed VALUES ('b')", [])
            .unwrap();
        let kept: i64 = writer
            .query_row("SELECT count(*) FROM processed", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            kept, 1,
            "a trigger of the last lease deleted this one's row"
        );
        let temp: i64 = writer
            .query_row("SELECT count(*) FROM temp.sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(temp, 0);
        let databases = writer
            .prepare("PRAGMA database_list")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(1))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        assert_eq!(databases, ["main", "temp"]);
    }

    /// The same on a private in-memory database, which cannot be reopened
    /// and so must be cleaned in place.
    #[tokio::test]
    async fn an_in_memory_database_is_cleaned_in_place() {
        let file = SqliteFile::open(&Location::Memory, "", Some(GUARD)).unwrap();
        {
            let writer = file.writer().await.unwrap();
            writer
                .execute_batch(
                    "CREATE TABLE t (a);
                     INSERT INTO t VALUES (1);
                     CREATE TEMP TRIGGER wipe AFTER INSERT ON main.t BEGIN DELETE FROM t; END;",
                )
                .unwrap();
        }
        let writer = file.writer().await.unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "the data stays, the trigger goes");
    }
}
