//! A test guest: each path exercises one host capability and reports what it
//! saw as JSON, so host tests can assert on real guest behaviour.
//!
//! The path is read from `spin-path-info`, so the same wasm can be mounted
//! under several routes and granted different stores in a test manifest.

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{EmptyBody, IntoResponse, Request, Response};
use spin_sdk::{http_service, key_value, redis, sqlite, variables};
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Distinguishes instances, so tests can see reuse.
fn instance_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u8))
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let served = REQUESTS.fetch_add(1, Ordering::SeqCst) + 1;
    let path_info = header(&req, "spin-path-info").unwrap_or_default();
    let query = req.uri().query().unwrap_or_default().to_string();
    let segments: Vec<String> = path_info
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().as_str().to_string();
    match (method.as_str(), segments.as_slice()) {
        ("GET", [""] | ["headers"]) => {
            let mut seen = serde_json::Map::new();
            for (name, value) in req.headers() {
                let value = value.to_str().unwrap_or_default().to_string();
                seen.insert(name.as_str().to_string(), value.into());
            }
            seen.insert("uri".into(), req.uri().to_string().into());
            let component = std::env::var("COMPONENT").unwrap_or_default();
            seen.insert("component".into(), component.into());
            json(200, serde_json::Value::Object(seen))
        }
        ("GET", ["instance"]) => json(
            200,
            serde_json::json!({ "instance": instance_id(), "served": served }),
        ),
        ("GET", ["sleep", ms]) => {
            spin_sdk::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            json(
                200,
                serde_json::json!({ "instance": instance_id(), "served": served }),
            )
        }
        ("GET", ["hold", kind, label, count]) => {
            // Opens up to `count` stores or connections, all held at once.
            let count: usize = count.parse().unwrap_or(0);
            let (mut stores, mut conns) = (Vec::new(), Vec::new());
            let mut error = None;
            for _ in 0..count {
                let opened = match *kind {
                    "kv" => key_value::Store::open(label)
                        .await
                        .map(|s| stores.push(s))
                        .map_err(|e| format!("{e:?}")),
                    _ => sqlite::Connection::open(label)
                        .await
                        .map(|c| conns.push(c))
                        .map_err(|e| format!("{e:?}")),
                };
                if let Err(e) = opened {
                    error = Some(e);
                    break;
                }
            }
            json(
                200,
                serde_json::json!({ "held": stores.len() + conns.len(), "error": error }),
            )
        }
        ("GET", ["print", lines]) => {
            // Numbered lines of 1 KiB, more than the host queues at once.
            let lines: usize = lines.parse().unwrap_or(0);
            let filler = "x".repeat(1000);
            for n in 0..lines {
                println!("{n:08} {filler}");
            }
            json(200, serde_json::json!({ "printed": lines }))
        }
        ("GET", ["log", text]) => {
            println!("stdout says {text}");
            eprintln!("stderr says {text}");
            json(200, serde_json::json!({ "logged": text }))
        }
        ("GET", ["trap"]) => panic!("probe asked to trap"),
        ("GET", ["loop"]) => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        ("GET", ["alloc", mib]) => {
            let bytes = mib.parse::<usize>().unwrap_or(0) * 1024 * 1024;
            let mut block: Vec<u8> = Vec::new();
            match block.try_reserve_exact(bytes) {
                Ok(()) => {
                    block.resize(bytes, 1);
                    json(
                        200,
                        serde_json::json!({ "allocated": std::hint::black_box(&block).len() }),
                    )
                }
                Err(e) => json(507, serde_json::json!({ "error": e.to_string() })),
            }
        }
        ("GET", ["var", name]) => match variables::get(*name).await {
            Ok(value) => json(200, serde_json::json!({ "value": value })),
            Err(e) => json(404, serde_json::json!({ "error": format!("{e:?}") })),
        },
        ("GET", ["env", name]) => json(
            200,
            serde_json::json!({ "value": std::env::var(name).ok() }),
        ),
        (_, ["kv", label, rest @ ..]) => kv(&method, label, rest, req).await,
        ("POST", ["sql", label]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            sql(label, &String::from_utf8_lossy(&body)).await
        }
        ("POST", ["sql-session", label]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            let statements: Vec<serde_json::Value> =
                serde_json::from_slice(&body).unwrap_or_default();
            sql_session(label, &statements).await
        }
        ("POST", ["sql-sync", label]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            let statements: Vec<String> = serde_json::from_slice(&body).unwrap_or_default();
            sql_sync(label, &statements)
        }
        (_, ["redis", rest @ ..]) => redis(&method, rest, &query, req).await,
        ("GET", ["fetch"]) => {
            let url = query.strip_prefix("url=").unwrap_or_default();
            fetch(url).await
        }
        _ => json(
            404,
            serde_json::json!({
                "error": format!("probe has no {method} {path_info}"),
                "component": std::env::var("COMPONENT").unwrap_or_default(),
            }),
        ),
    }
}

async fn kv(method: &str, label: &str, rest: &[&str], req: Request) -> Response<String> {
    let store = match key_value::Store::open(label).await {
        Ok(store) => store,
        Err(e) => return json(403, serde_json::json!({ "error": format!("{e:?}") })),
    };
    let outcome = match (method, rest) {
        ("GET", []) => store.get_keys().await.collect().await.map(|keys| serde_json::json!({ "keys": keys })),
        ("GET", [key]) => store.get(key).await.map(|value| {
            serde_json::json!({ "value": value.map(|v| String::from_utf8_lossy(&v).into_owned()) })
        }),
        ("PUT", [key]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            store.set(key, &body).await.map(|()| serde_json::json!({ "stored": key }))
        }
        ("DELETE", [key]) => store.delete(key).await.map(|()| serde_json::json!({ "deleted": key })),
        _ => return json(404, serde_json::json!({ "error": "unknown kv operation" })),
    };
    match outcome {
        Ok(body) => json(200, body),
        Err(e) => json(500, serde_json::json!({ "error": format!("{e:?}") })),
    }
}

/// Redis through the host, at the address in the `redis_url` variable (or
/// `?address=` for `open`).
async fn redis(method: &str, rest: &[&str], query: &str, req: Request) -> Response<String> {
    let address = match query.strip_prefix("address=") {
        Some(address) => address.to_string(),
        None => match variables::get("redis_url").await {
            Ok(address) => address,
            Err(e) => return json(500, serde_json::json!({ "error": format!("{e:?}") })),
        },
    };
    let conn = match redis::Connection::open(&address).await {
        Ok(conn) => conn,
        Err(e) => return json(403, serde_json::json!({ "error": format!("{e:?}") })),
    };
    let outcome = match (method, rest) {
        ("GET", ["open"]) => Ok(serde_json::json!({ "opened": address })),
        ("GET", ["get", key]) => conn
            .get(key)
            .await
            .map(|v| serde_json::json!({ "value": v })),
        // `[["SELECT", "1"], ["SET", "k", "v"]]`: commands in order on this
        // one connection; the results (as Debug text) or the first error.
        ("POST", ["execute"]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            let commands: Vec<Vec<String>> = match serde_json::from_slice(&body) {
                Ok(commands) => commands,
                Err(e) => return json(400, serde_json::json!({ "error": e.to_string() })),
            };
            let mut results = Vec::new();
            let mut failure = None;
            for command in commands {
                let Some((name, args)) = command.split_first() else {
                    continue;
                };
                let args = args
                    .iter()
                    .map(|a| redis::RedisParameter::Binary(a.as_bytes().to_vec()));
                match conn.execute(name, args).await {
                    Ok(result) => results.push(format!("{result:?}")),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                None => Ok(serde_json::json!({ "results": results })),
                Some(e) => Err(e),
            }
        }
        // `n` messages `m1` … `mn`, as fast as the host takes them.
        ("POST", ["publish-many", channel, n]) => {
            let n: u64 = n.parse().unwrap_or(0);
            let mut outcome = Ok(serde_json::json!({ "published": n }));
            for i in 1..=n {
                if let Err(e) = conn.publish(channel, format!("m{i}").as_bytes()).await {
                    outcome = Err(e);
                    break;
                }
            }
            outcome
        }
        ("POST", ["publish", channel]) => {
            let body = req.into_body().bytes().await.unwrap_or_default();
            conn.publish(channel, &body)
                .await
                .map(|()| serde_json::json!({ "published": body.len() }))
        }
        _ => {
            return json(
                404,
                serde_json::json!({ "error": "unknown redis operation" }),
            );
        }
    };
    match outcome {
        Ok(body) => json(200, body),
        Err(e) => json(500, serde_json::json!({ "error": format!("{e:?}") })),
    }
}

async fn sql(label: &str, statement: &str) -> Response<String> {
    let conn = match sqlite::Connection::open(label).await {
        Ok(conn) => conn,
        Err(e) => return json(403, serde_json::json!({ "error": format!("{e:?}") })),
    };
    // `at` says where the error arrived: from the call, or (as Spin
    // delivers a statement's failure) with the rows.
    let failed = |at: &str, e: sqlite::Error| {
        json(
            400,
            serde_json::json!({ "error": format!("{e:?}"), "at": at }),
        )
    };
    let result = match conn.execute(statement, []).await {
        Ok(result) => result,
        Err(e) => return failed("execute", e),
    };
    let columns = result.columns().to_vec();
    let rows = match result.collect().await {
        Ok(rows) => rows,
        Err(e) => return failed("rows", e),
    };
    let rows: Vec<Vec<serde_json::Value>> = rows
        .iter()
        .map(|row| row.values.iter().map(value_json).collect())
        .collect();
    json(200, serde_json::json!({ "columns": columns, "rows": rows }))
}

/// Runs `statements` in order on one connection, stopping at the first
/// error, and ends without committing whatever is still open: the host must
/// roll it back when the connection goes. A statement is its SQL, or an
/// array of its SQL and its parameters (`["SELECT ?", 1]`).
async fn sql_session(label: &str, statements: &[serde_json::Value]) -> Response<String> {
    let conn = match sqlite::Connection::open(label).await {
        Ok(conn) => conn,
        Err(e) => return json(403, serde_json::json!({ "error": format!("{e:?}") })),
    };
    let mut results = Results::default();
    for statement in statements {
        let (sql, params) = match statement {
            serde_json::Value::Array(parts) => (
                parts.first().and_then(|s| s.as_str()).unwrap_or_default(),
                parts.iter().skip(1).map(json_value).collect(),
            ),
            other => (other.as_str().unwrap_or_default(), Vec::new()),
        };
        let rows = match conn.execute(sql, params).await {
            Ok(result) => result.collect().await,
            Err(e) => Err(e),
        };
        if !results.record(rows) {
            break;
        }
    }
    results.report(conn.last_insert_rowid().await, conn.changes().await)
}

/// [`sql_session`] through the interface's synchronous functions (`open`,
/// `execute`), which guests built with SDKs before WASI 0.3 call; spin-sdk 7
/// reaches them only through its generated bindings.
fn sql_sync(label: &str, statements: &[String]) -> Response<String> {
    use sqlite::wit::sqlite::Connection;
    let conn = match Connection::open(label) {
        Ok(conn) => conn,
        Err(e) => return json(403, serde_json::json!({ "error": format!("{e:?}") })),
    };
    let mut results = Results::default();
    for statement in statements {
        if !results.record(conn.execute(statement, &[]).map(|result| result.rows)) {
            break;
        }
    }
    results.report(conn.last_insert_rowid(), conn.changes())
}

/// A session's outcome, statement by statement, up to the first error.
#[derive(Default)]
struct Results(Vec<serde_json::Value>);

impl Results {
    /// Records one statement's rows or error; `false` after an error.
    fn record(&mut self, rows: Result<Vec<sqlite::RowResult>, sqlite::Error>) -> bool {
        match rows {
            Ok(rows) => {
                self.0.push(serde_json::json!(
                    rows.iter()
                        .map(|row| row.values.iter().map(value_json).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                ));
                true
            }
            Err(e) => {
                self.0
                    .push(serde_json::json!({ "error": format!("{e:?}") }));
                false
            }
        }
    }

    fn report(self, last_insert_rowid: i64, changes: u64) -> Response<String> {
        json(
            200,
            serde_json::json!({
                "results": self.0,
                "last_insert_rowid": last_insert_rowid,
                "changes": changes,
            }),
        )
    }
}

/// A JSON parameter as SQL: strings as text, whole numbers as integers,
/// other numbers as reals, anything else as NULL.
fn json_value(value: &serde_json::Value) -> sqlite::Value {
    match value {
        serde_json::Value::String(s) => sqlite::Value::Text(s.clone()),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => sqlite::Value::Integer(i),
            None => sqlite::Value::Real(n.as_f64().unwrap_or_default()),
        },
        _ => sqlite::Value::Null,
    }
}

fn value_json(value: &sqlite::Value) -> serde_json::Value {
    match value {
        sqlite::Value::Integer(i) => (*i).into(),
        sqlite::Value::Real(r) => (*r).into(),
        sqlite::Value::Text(t) => t.clone().into(),
        sqlite::Value::Blob(b) => serde_json::json!({ "blob": b }),
        sqlite::Value::Null => serde_json::Value::Null,
    }
}

async fn fetch(url: &str) -> Response<String> {
    let request = match Request::get(url).body(EmptyBody::new()) {
        Ok(request) => request,
        Err(e) => return json(400, serde_json::json!({ "error": e.to_string() })),
    };
    match spin_sdk::http::send(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().bytes().await.unwrap_or_default();
            json(
                200,
                serde_json::json!({ "status": status, "body": String::from_utf8_lossy(&body) }),
            )
        }
        Err(e) => json(502, serde_json::json!({ "error": format!("{e:?}") })),
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn json(status: u16, body: serde_json::Value) -> Response<String> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .expect("valid status and header")
}
