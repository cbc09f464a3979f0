//! Key-value, SQLite and variables as guests see them: grants, persistence
//! across restarts, and Spin's error cases.

mod common;

use common::{AppDir, send};

const STORES: &str = r#"
spin_manifest_version = 2
[application]
name = "stores"

[variables]
greeting = { default = "hello" }
api_token = { required = true, secret = true }

[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/bare/..."
component = "bare"

[component.granted]
source = "{probe}"
key_value_stores = ["default", "cache"]
sqlite_databases = ["default"]
[component.granted.variables]
message = "{{ greeting }}, world"
token = "{{ api_token }}"

[component.bare]
source = "{probe}"
"#;

const RUNTIME_CONFIG: &str = r#"
[key_value_store.cache]
type = "spin"
path = "cache/kv.db"
[key_value_store.unused]
type = "spin"
"#;

fn start(app: &AppDir) -> common::Host {
    start_timing_out_after(app, "30s")
}

/// [`start`] with `timeout` as the request timeout.
fn start_timing_out_after(app: &AppDir, timeout: &str) -> common::Host {
    let config = app.write("runtime-config.toml", RUNTIME_CONFIG);
    let mut cmd = app.command(&[
        "--runtime-config-file",
        config.to_str().unwrap(),
        "--request-timeout",
        timeout,
    ]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "s3cr3t-t0ken");
    app.start_with(cmd)
}

async fn put(host: &common::Host, path: &str, body: &'static str) -> (u16, serde_json::Value) {
    send(reqwest::Client::new().put(host.url(path)).body(body)).await
}

async fn sql(host: &common::Host, statement: &'static str) -> (u16, serde_json::Value) {
    send(
        reqwest::Client::new()
            .post(host.url("/granted/sql/default"))
            .body(statement),
    )
    .await
}

#[tokio::test]
async fn key_value_persists_across_restarts() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    assert_eq!(
        put(&host, "/granted/kv/default/colour", "teal").await.0,
        200
    );
    assert_eq!(put(&host, "/granted/kv/cache/size", "42").await.0, 200);
    // Stopped with its instances still warm: they end quietly.
    let stopped = host.stop();
    assert_eq!(stopped.status.code(), Some(0), "graceful stop exits 0");
    assert!(
        !stopped.stderr.contains("\"level\":\"ERROR\""),
        "a graceful stop logged an error:\n{}",
        stopped.stderr
    );

    assert!(app.path().join(".spin/sqlite_key_value.db").exists());
    assert!(
        app.path().join("cache/kv.db").exists(),
        "relative to the runtime config file"
    );

    let host = start(&app);
    let (_, body) = host.get("/granted/kv/default/colour").await;
    assert_eq!(body["value"], "teal");
    let (_, body) = host.get("/granted/kv/cache/size").await;
    assert_eq!(body["value"], "42");
    let (_, body) = host.get("/granted/kv/default").await;
    assert_eq!(
        body["keys"],
        serde_json::json!(["colour"]),
        "labels do not share keys"
    );
    assert_eq!(
        send(reqwest::Client::new().delete(host.url("/granted/kv/default/colour")))
            .await
            .0,
        200
    );
    let deleted = host.get("/granted/kv/default/colour").await;
    assert_eq!(deleted, (200, serde_json::json!({ "value": null })));
}

#[tokio::test]
async fn key_value_grants_are_enforced() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    let (status, body) = host.get("/bare/kv/default/x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("Error::AccessDenied")),
        "{body}"
    );
    let (_, body) = host.get("/granted/kv/unused/x").await;
    assert_eq!(
        body["error"], "Error::AccessDenied",
        "defined but not granted: {body}"
    );
    // As Spin: a label the component does not declare is denied before
    // anyone looks for it.
    let (_, body) = host.get("/granted/kv/nowhere/x").await;
    assert_eq!(body["error"], "Error::AccessDenied", "{body}");
}

/// Spin's `type = "redis"` provider: what one host writes is in the Redis
/// database under the key itself, where any other process (a replica,
/// `spin up`) reads it, and the store rides over a server restart.
#[tokio::test]
async fn key_value_on_redis_is_shared_through_the_server() {
    let mut redis = common::RedisServer::start();
    let app = AppDir::new(STORES);
    let config = app.write(
        "runtime-config.toml",
        &format!(
            "[key_value_store.cache]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    );
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "x");
    let host = app.start_with(cmd);

    assert_eq!(put(&host, "/granted/kv/cache/size", "42").await.0, 200);
    let mut direct = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Option<String> = ::redis::cmd("GET")
        .arg("size")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("42"),
        "stored under the key itself, as Spin does"
    );

    // Written by someone else (another replica), read through the host.
    ::redis::cmd("SET")
        .arg("colour")
        .arg("teal")
        .query_async::<()>(&mut direct)
        .await
        .unwrap();
    let (_, body) = host.get("/granted/kv/cache/colour").await;
    assert_eq!(body["value"], "teal", "{body}");
    let (_, body) = host.get("/granted/kv/cache").await;
    assert_eq!(
        body["keys"],
        serde_json::json!(["colour", "size"]),
        "{body}"
    );
    // The SQLite-backed label beside it is untouched.
    let (_, body) = host.get("/granted/kv/default").await;
    assert_eq!(body["keys"], serde_json::json!([]), "{body}");

    assert_eq!(
        send(reqwest::Client::new().delete(host.url("/granted/kv/cache/size")))
            .await
            .0,
        200
    );
    let exists: bool = ::redis::cmd("EXISTS")
        .arg("size")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(!exists, "deleted in the server");

    // The test server keeps nothing on disk, so a restart empties it; what
    // matters is that the host's connection comes back by itself.
    redis.restart();
    let (status, body) = put(&host, "/granted/kv/cache/after", "restart").await;
    assert_eq!(status, 200, "the store reconnects after a restart: {body}");
    let (_, body) = host.get("/granted/kv/cache/after").await;
    assert_eq!(body["value"], "restart", "{body}");
}

#[test]
fn unreachable_or_misconfigured_key_value_server_stops_start_up() {
    let app = AppDir::new(STORES);
    // A port nothing listens on: bind one, note it, release it.
    let port = common::free_port();
    let config = app.write(
        "runtime-config.toml",
        &format!("[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n"),
    );
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "x");
    let stderr = app.fail_with(cmd);
    assert!(
        stderr.contains("key-value store `cache` (redis://127.0.0.1:")
            && stderr.contains("cannot reach the Redis server"),
        "{stderr}"
    );

    let config = app.write(
        "runtime-config.toml",
        "[key_value_store.cache]\ntype = \"redis\"\n",
    );
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "x");
    let stderr = app.fail_with(cmd);
    assert!(
        stderr.contains("runtime-config.toml: key `key_value_store.cache.url`: missing"),
        "{stderr}"
    );
}

async fn create_notes(host: &common::Host) {
    let (status, body) = sql(
        host,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sqlite_persists_and_uses_wal() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    create_notes(&host).await;
    assert_eq!(
        sql(
            &host,
            "INSERT INTO notes (body) VALUES ('first'), ('second')"
        )
        .await
        .0,
        200
    );
    // As in Spin, a statement's failure arrives with its (no) rows, not
    // from the call that started it.
    let (status, body) = sql(&host, "SELECT nonsense FROM").await;
    assert_eq!(
        (status, &body["at"]),
        (400, &serde_json::json!("rows")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("Io"), "{body}");
    drop(host);

    let host = start(&app);
    let (status, body) = sql(&host, "SELECT id, body FROM notes ORDER BY id").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["columns"], serde_json::json!(["id", "body"]));
    assert_eq!(
        body["rows"],
        serde_json::json!([[1, "first"], [2, "second"]])
    );
    let (_, body) = sql(&host, "PRAGMA journal_mode").await;
    assert_eq!(body["rows"], serde_json::json!([["wal"]]));
    assert!(app.path().join(".spin/sqlite_db.db").exists());

    let (status, body) = send(
        reqwest::Client::new()
            .post(host.url("/bare/sql/default"))
            .body("SELECT 1"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("Error::AccessDenied")),
        "{body}"
    );
}

/// Reads run on the async worker within a budget of SQLite instructions; a
/// longer one is interrupted there and must still answer in full (re-run on
/// the blocking pool), and a statement that looks like a read but writes
/// must reach the writer with its parameters intact.
#[tokio::test]
async fn sqlite_long_reads_and_writes_that_look_like_reads() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    let (status, body) = sql(
        &host,
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 200000) \
         SELECT count(*), sum(x) FROM n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], serde_json::json!([[200000, 20000100000_i64]]));

    create_notes(&host).await;
    let (status, body) = sql(
        &host,
        "WITH picked(body) AS (VALUES ('looked like a read')) \
         INSERT INTO notes (body) SELECT body FROM picked",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = sql(&host, "SELECT id, body FROM notes").await;
    assert_eq!(body["rows"], serde_json::json!([[1, "looked like a read"]]));
}

/// One guest connection's statements, as the probe runs them.
async fn session(host: &common::Host, statements: &[&str]) -> serde_json::Value {
    host.sql_session("/granted/sql-session/default", statements)
        .await
}

#[tokio::test]
async fn sqlite_sessions_keep_transactions_to_themselves() {
    let app = AppDir::new(STORES);
    // A guest waiting on a write lock that is never released would run into
    // this deadline and answer 504 instead of 200.
    let host = start_timing_out_after(&app, "10s");
    let body = session(
        &host,
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
            "INSERT INTO items (name) VALUES ('a'), ('b')",
        ],
    )
    .await;
    assert_eq!(body["last_insert_rowid"], 2, "{body}");
    assert_eq!(body["changes"], 2, "{body}");

    // Inside a transaction, a session reads its own writes; a read after
    // the write does not lose the write's counters.
    let body = session(
        &host,
        &[
            "BEGIN",
            "INSERT INTO items (name) VALUES ('c')",
            "SELECT count(*) FROM items",
            "COMMIT",
        ],
    )
    .await;
    assert_eq!(body["results"][2], serde_json::json!([[3]]), "{body}");
    assert_eq!(body["last_insert_rowid"], 3, "{body}");
    assert_eq!(body["changes"], 1, "{body}");

    // A guest that goes away inside a transaction leaves nothing behind and
    // does not keep the database locked: the next writer gets in (the write
    // lease would otherwise be held past the request deadline).
    let body = session(
        &host,
        &[
            "BEGIN IMMEDIATE",
            "INSERT INTO items (name) VALUES ('lost')",
        ],
    )
    .await;
    assert_eq!(body["results"][1], serde_json::json!([]), "{body}");
    let body = session(
        &host,
        &[
            "INSERT INTO items (name) VALUES ('d')",
            "SELECT name FROM items ORDER BY id",
        ],
    )
    .await;
    assert_eq!(
        body["results"][1],
        serde_json::json!([["a"], ["b"], ["c"], ["d"]]),
        "{body}"
    );

    // Statements that write are refused nothing by the read path: a
    // `WITH … INSERT` starts like a query but must still write.
    let body = session(
        &host,
        &[
            "WITH n(x) AS (SELECT 'e') INSERT INTO items (name) SELECT x FROM n",
            "SELECT count(*) FROM items",
        ],
    )
    .await;
    assert_eq!(body["results"][1], serde_json::json!([[5]]), "{body}");
}

/// The synchronous `execute` (SDKs before WASI 0.3): a short read answers
/// at once; a write (which waits for the writer or a group commit) and a
/// read too long for the worker (re-run on the blocking pool) are waited
/// for; a transaction spans the connection's statements.
#[tokio::test]
async fn sqlite_synchronous_statements_wait_for_what_they_need() {
    let app = AppDir::new(STORES);
    let host = start_timing_out_after(&app, "10s");
    let body = host
        .sql_session(
            "/granted/sql-sync/default",
            &[
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
                "INSERT INTO items (name) VALUES ('a'), ('b')",
                "SELECT name FROM items ORDER BY id",
                "BEGIN",
                "INSERT INTO items (name) VALUES ('c')",
                "SELECT count(*) FROM items",
                "COMMIT",
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 200000) \
                 SELECT count(*), sum(x) FROM n",
                "SELECT name FROM nowhere",
            ],
        )
        .await;
    let results = &body["results"];
    assert_eq!(results[2], serde_json::json!([["a"], ["b"]]), "{body}");
    assert_eq!(results[5], serde_json::json!([[3]]), "{body}");
    assert_eq!(
        results[7],
        serde_json::json!([[200000, 20000100000_i64]]),
        "{body}"
    );
    assert!(
        results[8]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such table: nowhere")),
        "{body}"
    );
    assert_eq!(body["last_insert_rowid"], 3, "{body}");
    let (_, body) = sql(&host, "SELECT name FROM items ORDER BY id").await;
    assert_eq!(body["rows"], serde_json::json!([["a"], ["b"], ["c"]]));
}

/// Autocommit writes from many sessions at once may commit together (one
/// sync for several); each still applies on its own: a failing one reports
/// its own error and takes no other with it.
#[tokio::test]
async fn concurrent_autocommit_writes_commit_together_each_on_its_own() {
    let app = AppDir::new(STORES);
    let config = app.write("runtime-config.toml", RUNTIME_CONFIG);
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "s3cr3t-t0ken");
    cmd.env("RUST_LOG", "bazaar=debug,warn");
    let host = app.start_with(cmd);
    session(&host, &["CREATE TABLE tags (name TEXT PRIMARY KEY)"]).await;
    // Each name twice: one insert of each pair must fail, alone. Some use
    // `OR ROLLBACK`, which rolls back the whole group it runs in: the
    // others in it must still apply (and say so) as if each ran alone.
    let inserts: Vec<String> = (0..60)
        .map(|i| {
            let or_rollback = if i >= 30 && i % 3 == 0 {
                " OR ROLLBACK"
            } else {
                ""
            };
            format!(
                "INSERT{or_rollback} INTO tags (name) VALUES ('t{}')",
                i % 30
            )
        })
        .collect();
    let statements: Vec<[&str; 1]> = inserts.iter().map(|i| [i.as_str()]).collect();
    let replies = futures::future::join_all(statements.iter().map(|one| session(&host, one))).await;
    let mut applied = std::collections::BTreeMap::<String, usize>::new();
    for (insert, reply) in inserts.iter().zip(&replies) {
        let result = &reply["results"][0];
        if result == &serde_json::json!([]) {
            assert_eq!(reply["changes"], 1, "{reply}");
            *applied.entry(insert.clone()).or_default() += 1;
        } else {
            let error = result["error"].as_str().unwrap_or_default();
            assert!(error.contains("UNIQUE constraint failed"), "{reply}");
        }
    }
    assert_eq!(applied.len(), 30, "{applied:?}");
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    let body = session(&host, &["SELECT count(*) FROM tags"]).await;
    assert_eq!(body["results"][0], serde_json::json!([[30]]), "{body}");
    host.wait_for_stderr(
        "autocommit writes committed together",
        1,
        std::time::Duration::from_secs(10),
    );
}

/// An instance holds at most 256 stores and 256 connections at once, as in
/// Spin; closing them makes room again.
#[tokio::test]
async fn open_stores_and_connections_are_capped_per_instance() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    for (kind, error) in [
        ("kv", "StoreTableFull"),
        ("sql", "too many connections opened"),
    ] {
        for _ in 0..2 {
            let (status, body) = host.get(&format!("/granted/hold/{kind}/default/300")).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["held"], 256, "{kind}: {body}");
            let said = body["error"].as_str().unwrap_or_default();
            assert!(said.contains(error), "{kind}: {body}");
        }
    }
}

/// A statement that would never end is interrupted at the request timeout,
/// wherever it runs (a reader, the writer, a group of autocommit writes, a
/// transaction), so it neither keeps the database's writer nor a thread.
#[tokio::test]
async fn endless_statements_stop_at_the_request_timeout() {
    let app = AppDir::new(STORES);
    let host = start_timing_out_after(&app, "3s");
    session(
        &host,
        &[
            "CREATE TABLE items (name TEXT)",
            "INSERT INTO items VALUES ('a')",
        ],
    )
    .await;
    const ENDLESS: &str =
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c)";
    let read = format!("SELECT {ENDLESS}");
    let write = format!("UPDATE items SET name = name WHERE {ENDLESS} > 0");
    let runaways: [&[&str]; 4] = [&[&read], &[&write], &["BEGIN", &read], &["BEGIN", &write]];
    let replies = futures::future::join_all(runaways.iter().map(|statements| {
        send(
            reqwest::Client::new()
                .post(host.url("/granted/sql-session/default"))
                .json(statements),
        )
    }))
    .await;
    for (statements, (status, body)) in runaways.iter().zip(&replies) {
        // Either the request's deadline answered (504), or the guest heard
        // of the interruption first and said so.
        let interrupted = body["results"]
            .as_array()
            .and_then(|r| r.last())
            .and_then(|r| r["error"].as_str())
            .is_some_and(|e| e.contains("interrupted"));
        assert!(
            *status == 504 || (*status == 200 && interrupted),
            "{statements:?}: {status} {body}"
        );
    }
    // The writer is free again: a write gets in within the request timeout.
    let body = session(
        &host,
        &[
            "INSERT INTO items VALUES ('b')",
            "SELECT count(*) FROM items",
        ],
    )
    .await;
    assert_eq!(body["results"], serde_json::json!([[], [[2]]]), "{body}");
}

/// A guest's SQL cannot reach files outside its database, load code, or
/// change the pooled connections' settings; describing its own schema and
/// versioning it still work.
#[tokio::test]
async fn guest_sql_stays_inside_its_database() {
    let app = AppDir::new(STORES);
    let config = app.write("runtime-config.toml", RUNTIME_CONFIG);
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "s3cr3t-t0ken");
    let host = app.start_with(cmd);
    session(&host, &["CREATE TABLE notes (body TEXT)"]).await;
    let outside = app.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let escape = outside.join("escape.db");
    let copy = outside.join("copy.db");
    for statement in [
        format!("ATTACH DATABASE '{}' AS x", escape.display()),
        format!("ATTACH 'file:{}?mode=rwc' AS x", escape.display()),
        format!("VACUUM INTO '{}'", copy.display()),
        "SELECT load_extension('/usr/lib/libm.so.6')".to_string(),
        format!("PRAGMA temp_store_directory = '{}'", outside.display()),
        "PRAGMA journal_mode = DELETE".to_string(),
        "PRAGMA synchronous = OFF".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "PRAGMA foreign_keys = ON".to_string(),
        "PRAGMA schema_version = 1".to_string(),
    ] {
        let body = session(&host, &[statement.as_str()]).await;
        let error = body["results"][0]["error"].as_str().unwrap_or_default();
        // "not authorized" when prepared; "authorization denied" when run.
        assert!(error.contains("authoriz"), "{statement}: {body}");
    }
    // The same, named by an expression or a parameter: SQLite gives the
    // authorizer no file name then.
    let folder = format!("{}/", outside.display());
    let spelled = [
        serde_json::json!(format!("ATTACH DATABASE '{folder}' || 'a.db' AS x")),
        serde_json::json!(["ATTACH DATABASE ? AS x", escape.display().to_string()]),
        serde_json::json!(["VACUUM INTO ?1 || ?2", folder, "b.db"]),
        serde_json::json!(["SELECT load_extension(?)", "/usr/lib/libm.so.6"]),
    ];
    for statement in spelled {
        let body = session_with_params(
            &host,
            &[statement.clone(), "CREATE TABLE x.stolen (a)".into()],
        )
        .await;
        let error = body["results"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("authoriz"), "{statement}: {body}");
    }
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "a file was created outside the database"
    );
    let body = session(
        &host,
        &[
            "PRAGMA user_version = 7",
            "PRAGMA user_version",
            "PRAGMA table_info(notes)",
            "PRAGMA journal_mode",
            "VACUUM",
            "SELECT count(*) FROM notes",
        ],
    )
    .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "{body}");
    assert!(results.iter().all(|r| r.get("error").is_none()), "{body}");
    assert_eq!(results[1], serde_json::json!([[7]]), "{body}");
    assert_eq!(results[2][0][1], "body", "{body}");
    assert_eq!(results[3], serde_json::json!([["wal"]]), "{body}");
}

/// A guest's `TEMP` trigger lives no longer than its own connection: it
/// never acts on another request's writes (which it could use to switch
/// off a service's duplicate detection).
#[tokio::test]
async fn temporary_sql_objects_do_not_outlive_their_request() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    session(&host, &["CREATE TABLE processed (id TEXT PRIMARY KEY)"]).await;
    let body = session(
        &host,
        &[
            "CREATE TEMP TRIGGER wipe AFTER INSERT ON main.processed BEGIN DELETE FROM processed; END",
            "CREATE TEMP TABLE kept (a)",
            "ATTACH ':memory:' AS scratch",
        ],
    )
    .await;
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("error").is_none()),
        "{body}"
    );
    // Many requests, so that every pooled connection is leased.
    for id in 0..40 {
        let body = session(
            &host,
            &[
                &format!("INSERT INTO processed VALUES ('{id}')"),
                "SELECT count(*) FROM processed",
                "SELECT count(*) FROM temp.sqlite_schema",
                "SELECT count(*) FROM pragma_database_list",
            ],
        )
        .await;
        assert_eq!(
            body["results"],
            serde_json::json!([[], [[id + 1]], [[0]], [[2]]]),
            "{body}"
        );
    }
}

/// [`session`] with statements that may carry parameters:
/// `["SELECT ?", 1]`.
async fn session_with_params(
    host: &common::Host,
    statements: &[serde_json::Value],
) -> serde_json::Value {
    let (status, body) = send(
        reqwest::Client::new()
            .post(host.url("/granted/sql-session/default"))
            .json(statements),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn variables_resolve_from_environment_and_defaults() {
    let app = AppDir::new(STORES);
    let host = start(&app);
    let (_, body) = host.get("/granted/var/message").await;
    assert_eq!(body["value"], "hello, world");
    let (_, body) = host.get("/granted/var/token").await;
    assert_eq!(body["value"], "s3cr3t-t0ken");
    let (_, body) = host.get("/granted/var/nope").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Error::Undefined"),
        "{body}"
    );
    let (_, body) = host.get("/granted/var/Not-Valid").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Error::InvalidName"),
        "{body}"
    );
    let (_, body) = host.get("/bare/var/message").await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Error::Undefined"),
        "{body}"
    );
    assert!(
        !host.stderr().contains("s3cr3t"),
        "a secret leaked into the logs"
    );

    // The environment overrides a default.
    let config = app.path().join("runtime-config.toml");
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "t")
        .env("SPIN_VARIABLE_GREETING", "hi");
    let host = app.start_with(cmd);
    let (_, body) = host.get("/granted/var/message").await;
    assert_eq!(body["value"], "hi, world");
}

/// Spin's other sources: `--variable` (above everything), a `.env` file in
/// the current directory (after the environment), and `--env` for every
/// component's environment.
#[tokio::test]
async fn variables_from_flags_and_dotenv_env_from_flags() {
    let app = AppDir::new(STORES);
    let config = app.write("runtime-config.toml", RUNTIME_CONFIG);
    app.write(
        ".env",
        "SPIN_VARIABLE_API_TOKEN=from-dotenv\nSPIN_VARIABLE_GREETING=dotenv\n",
    );
    let greeting = app.write("greeting.txt", "flag-file");
    let mut cmd = app.command(&[
        "--runtime-config-file",
        config.to_str().unwrap(),
        "--variable",
        &format!("greeting=@{}", greeting.display()),
        "--env",
        "REGION=eu-west",
    ]);
    cmd.current_dir(app.path())
        .env_remove("SPIN_VARIABLE_API_TOKEN")
        .env("SPIN_VARIABLE_GREETING", "environment");
    let host = app.start_with(cmd);
    let (_, body) = host.get("/granted/var/message").await;
    assert_eq!(
        body["value"], "flag-file, world",
        "--variable outranks the environment"
    );
    let (_, body) = host.get("/granted/var/token").await;
    assert_eq!(
        body["value"], "from-dotenv",
        "a required variable from .env"
    );
    let (_, body) = host.get("/bare/env/REGION").await;
    assert_eq!(body["value"], "eu-west", "--env reaches every component");
    drop(host);

    // The environment outranks .env.
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.current_dir(app.path())
        .env("SPIN_VARIABLE_API_TOKEN", "t")
        .env("SPIN_VARIABLE_GREETING", "environment");
    let host = app.start_with(cmd);
    let (_, body) = host.get("/granted/var/message").await;
    assert_eq!(body["value"], "environment, world");
    drop(host);

    // A flag for a variable the manifest does not declare is a mistake.
    let mut cmd = app.command(&["--variable", "greting=hi"]);
    cmd.current_dir(app.path());
    let stderr = app.fail_with(cmd);
    assert!(
        stderr.contains("--variable names variables") && stderr.contains("\"greting\""),
        "{stderr}"
    );
}

#[test]
fn missing_required_variable_stops_start_up() {
    let app = AppDir::new(STORES);
    let config = app.write("runtime-config.toml", RUNTIME_CONFIG);
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env_remove("SPIN_VARIABLE_API_TOKEN");
    let stderr = app.fail_with(cmd);
    assert!(stderr.contains("SPIN_VARIABLE_API_TOKEN"), "{stderr}");
}

#[test]
fn undefined_store_label_stops_start_up() {
    let app = AppDir::new(STORES);
    let mut cmd = app.command(&[]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "x");
    let stderr = app.fail_with(cmd);
    assert!(
        stderr.contains("component `granted` uses key-value store `cache`"),
        "{stderr}"
    );
}

/// #9 item 6: Spin's `state_dir` and `log_dir` runtime-config keys put the
/// default stores and the component logs elsewhere (relative to the file);
/// `--log-dir` wins over the key.
#[tokio::test]
async fn the_runtime_config_may_move_the_state_and_the_logs() {
    let app = AppDir::new(STORES);
    std::fs::create_dir_all(app.path().join("conf")).unwrap();
    let config = app.write(
        "conf/runtime-config.toml",
        &format!("state_dir = \"../var/state\"\nlog_dir = \"../var/logs\"\n{RUNTIME_CONFIG}"),
    );
    let mut cmd = app.command(&["--runtime-config-file", config.to_str().unwrap()]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "s3cr3t-t0ken");
    let host = app.start_with(cmd);
    assert_eq!(
        put(&host, "/granted/kv/default/colour", "teal").await.0,
        200
    );
    host.stop();
    let var = app.path().join("var");
    assert!(var.join("state/sqlite_key_value.db").exists());
    assert!(var.join("logs/granted_stdout.txt").exists());
    assert!(!app.path().join(".spin/sqlite_key_value.db").exists());

    let elsewhere = app.path().join("flag-logs");
    let mut cmd = app.command(&[
        "--runtime-config-file",
        config.to_str().unwrap(),
        "--log-dir",
        elsewhere.to_str().unwrap(),
    ]);
    cmd.env("SPIN_VARIABLE_API_TOKEN", "s3cr3t-t0ken");
    let host = app.start_with(cmd);
    let (_, body) = host.get("/granted/kv/default/colour").await;
    assert_eq!(body["value"], "teal", "the same state dir: {body}");
    host.stop();
    assert!(elsewhere.join("granted_stdout.txt").exists());
}
