//! Spin's `type = "libsql"` SQLite provider against a real libSQL server
//! (`sqld`): statements, transactions and their clean-up, all on the server.

mod common;

use common::{AppDir, Sqld, send};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "remote-sql"

[[trigger.http]]
route = "/..."
component = "probe"

[component.probe]
source = "{probe}"
sqlite_databases = ["default"]
"#;

async fn session(host: &common::Host, statements: &[&str]) -> serde_json::Value {
    host.sql_session("/sql-session/default", statements).await
}

fn start(app: &AppDir, server: &Sqld) -> common::Host {
    let config = app.write(
        "runtime-config.toml",
        &format!(
            "[sqlite_database.default]\ntype = \"libsql\"\nurl = \"{}\"\ntoken = \"unused\"\n",
            server.url()
        ),
    );
    // A statement waiting on a write lock nobody releases would run into
    // this deadline (504) instead of answering.
    app.start(&[
        "--runtime-config-file",
        config.to_str().unwrap(),
        "--request-timeout",
        "10s",
    ])
}

#[tokio::test]
async fn sqlite_on_a_libsql_server() {
    let server = Sqld::start();
    let app = AppDir::new(APP);
    let host = start(&app, &server);

    let body = session(
        &host,
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB)",
            "INSERT INTO items (name, price, data) VALUES ('a', 1.5, x'00ff'), ('b', NULL, NULL)",
        ],
    )
    .await;
    assert_eq!(body["last_insert_rowid"], 2, "{body}");
    assert_eq!(body["changes"], 2, "{body}");

    // Every value type comes back as it went in.
    let body = session(
        &host,
        &["SELECT id, name, price, data FROM items ORDER BY id"],
    )
    .await;
    assert_eq!(
        body["results"][0],
        serde_json::json!([[1, "a", 1.5, { "blob": [0, 255] }], [2, "b", null, null]]),
        "{body}"
    );

    // A session's transaction spans its statements, on the server.
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

    // A guest that goes away inside a transaction leaves nothing behind and
    // no lock: the next writer gets in well before the request deadline.
    let body = session(
        &host,
        &[
            "BEGIN IMMEDIATE",
            "INSERT INTO items (name) VALUES ('lost')",
        ],
    )
    .await;
    assert_eq!(body["results"], serde_json::json!([[], []]), "{body}");
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

    // The rows are the server's: read directly over its own API.
    let rows = server.query("SELECT name FROM items ORDER BY id").await;
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);

    // SQL errors reach the guest as errors, the connection stays usable.
    let (status, body) = send(
        reqwest::Client::new()
            .post(host.url("/sql/default"))
            .body("SELECT * FROM nowhere"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no such table"), "{body}");
    let body = session(&host, &["SELECT count(*) FROM items"]).await;
    assert_eq!(body["results"], serde_json::json!([[[4]]]), "{body}");
}

#[test]
fn an_unreachable_libsql_server_stops_start_up() {
    let app = AppDir::new(APP);
    let port = common::free_port();
    let config = app.write(
        "runtime-config.toml",
        &format!(
            "[sqlite_database.default]\ntype = \"libsql\"\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"t\"\n"
        ),
    );
    let stderr = app.fail(&["--runtime-config-file", config.to_str().unwrap()]);
    assert!(
        stderr.contains("SQLite database `default` (libsql, http://127.0.0.1:"),
        "{stderr}"
    );
}
