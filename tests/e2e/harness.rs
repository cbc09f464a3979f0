//! Starts Bazaar for one test (own state, stores and embedded Redis) and
//! gives the tests a small client for its API.

use crate::common::{self, Host, Sqld};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub const ADMIN_EMAIL: &str = "admin@bazaar.test";
pub const PASSWORD: &str = "correct horse battery";
pub const JWT_SECRET: &str = "e2e-jwt-secret-of-at-least-32-bytes";
/// The tests' identity key pairs (made with `deploy/identity-keys`): the
/// gateway's, and the orders service's for its calls to products.
pub const GATEWAY_IDENTITY_KEY: &str = "7Ik08HiQg1cehrxFvLX9V60Nbl7bSrLPWyluK98ztnE";
pub const GATEWAY_IDENTITY_PUBLIC_KEY: &str = "O1WKu4fpTusRSL4UToiFYiGEJA8tyDMdSBxmW0TRxBg";
pub const ORDERS_IDENTITY_KEY: &str = "o2AmwRz_alOhwrUkLacGJtVOdGsLK7eLbySUoNHgQuw";
pub const ORDERS_IDENTITY_PUBLIC_KEY: &str = "ndmRNhiy2345LNRXADTS7BDtwV_tLacmE-n8OBmtVE4";

/// The body of `POST /api/v1/orders` for one line: `quantity` of
/// `product` (an id, as a string or a JSON value), paid with `card`.
pub fn order_body(
    product: &impl serde::Serialize,
    quantity: impl serde::Serialize,
    card: &str,
) -> Value {
    json!({
        "items": [{ "product_id": product, "quantity": quantity }],
        "payment": { "card_token": card },
    })
}

/// Builds the application's components once per test binary.
pub fn built_manifest() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = common::workspace_root().join("spin.toml");
            let status = Command::new(env!("CARGO_BIN_EXE_bazaar"))
                .args(["build", "--from"])
                .arg(&manifest)
                .status()
                .expect("run bazaar build");
            assert!(status.success(), "bazaar build failed");
            manifest
        })
        .clone()
}

pub struct App {
    pub host: Host,
    pub client: reqwest::Client,
    state: tempfile::TempDir,
    /// Where the stores are: a replica shares it.
    config_file: PathBuf,
    /// The libSQL servers holding the databases, when the suite runs on
    /// libSQL (`BAZAAR_E2E_SQLITE=libsql`).
    servers: Vec<Sqld>,
}

/// A response: status, JSON body (or the text as a JSON string), headers.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status`.
    pub fn assert_problem(&self, status: u16) -> &Reply {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["title"].is_string() && self.body["detail"].is_string(),
            "{}",
            self.body
        );
        self
    }

    /// Asserts a 409 problem of the kind `kind` (its `type` is
    /// `urn:bazaar:problem:<kind>`), so that clients can tell conflicts apart.
    pub fn assert_conflict(&self, kind: &str) -> &Reply {
        self.assert_problem(409);
        assert_eq!(
            self.body["type"],
            format!("urn:bazaar:problem:{kind}"),
            "{}",
            self.body
        );
        self
    }
}

/// The SQLite database labels of spin.toml, one per service.
pub const SERVICE_DATABASES: [&str; 4] = ["users", "products", "orders", "payments"];

/// The channels spin.toml subscribes to: saga replies, inventory and
/// payment commands.
pub const REDIS_CHANNELS: usize = 3;

/// Where a service's SQLite file lives in an app's state directory.
fn database_file(state: &std::path::Path, label: &str) -> PathBuf {
    state.join(format!("{label}.db"))
}

/// The runtime config entry putting database `label` in a SQLite file in
/// `dir`.
fn file_database(dir: &std::path::Path, label: &str) -> String {
    format!(
        "[sqlite_database.{label}]\ntype = \"spin\"\npath = {:?}\n",
        database_file(dir, label)
    )
}

/// A runtime config putting every service's database in a SQLite file in
/// `dir`.
pub fn file_databases(dir: &std::path::Path) -> String {
    SERVICE_DATABASES
        .iter()
        .map(|label| file_database(dir, label))
        .collect()
}

impl App {
    pub fn start() -> App {
        Self::start_with(&[])
    }

    /// Starts the app; `env` adds or overrides environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> App {
        Self::start_with_args(env, &[])
    }

    /// Starts the app with extra `bazaar up` flags too.
    ///
    /// Each service's database is a SQLite file of the test's own, or, with
    /// `BAZAAR_E2E_SQLITE=libsql`, a database on a libSQL server of its own
    /// (the whole suite then runs on Spin's libSQL provider).
    pub fn start_with_args(env: &[(&str, &str)], args: &[&str]) -> App {
        let state = tempfile::tempdir().unwrap();
        let on_libsql = std::env::var("BAZAAR_E2E_SQLITE").is_ok_and(|v| v == "libsql");
        let servers: Vec<Sqld> = if on_libsql {
            SERVICE_DATABASES.iter().map(|_| Sqld::start()).collect()
        } else {
            Vec::new()
        };
        let mut config = String::new();
        for (i, label) in SERVICE_DATABASES.iter().enumerate() {
            match servers.get(i) {
                Some(server) => config.push_str(&format!(
                    "[sqlite_database.{label}]\ntype = \"libsql\"\nurl = \"{}\"\ntoken = \"unused\"\n",
                    server.url()
                )),
                None => config.push_str(&file_database(state.path(), label)),
            }
        }
        let config_file = state.path().join("runtime-config.toml");
        std::fs::write(&config_file, config).unwrap();
        let mut app = Self::launch(state, config_file, env, args);
        app.servers = servers;
        app
    }

    /// Starts the app with each service's database a SQLite file in its
    /// state directory, whatever `BAZAAR_E2E_SQLITE` says, for tests that
    /// read the files themselves ([`App::database`]); `env` as for
    /// [`App::start_with`].
    pub fn start_on_files(env: &[(&str, &str)]) -> App {
        Self::start_on_files_with_args(env, &[])
    }

    /// [`App::start_on_files`] with extra `bazaar up` flags.
    pub fn start_on_files_with_args(env: &[(&str, &str)], args: &[&str]) -> App {
        let state = tempfile::tempdir().unwrap();
        let config_file = state.path().join("runtime-config.toml");
        std::fs::write(&config_file, file_databases(state.path())).unwrap();
        Self::launch(state, config_file, env, args)
    }

    /// A read-only connection to a service's database file (see
    /// [`App::start_on_files`]).
    pub fn database(&self, label: &str) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            database_file(self.state.path(), label),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the service's database file")
    }

    /// A connection that may write to a service's database file, beside
    /// the running app, for tests that put it in a state the app would not
    /// (a view of an older shape).
    pub fn database_for_writing(&self, label: &str) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(database_file(self.state.path(), label))
            .expect("the service's database file");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn
    }

    /// Starts the app with its stores where `runtime_config` (Spin's
    /// runtime configuration) puts them.
    pub fn start_with_config(runtime_config: &str, env: &[(&str, &str)], args: &[&str]) -> App {
        let state = tempfile::tempdir().unwrap();
        let config_file = state.path().join("runtime-config.toml");
        std::fs::write(&config_file, runtime_config).unwrap();
        Self::launch(state, config_file, env, args)
    }

    /// A second `bazaar up` process serving the same application from the
    /// same stores (this app's runtime config), with its own state dir for
    /// logs: a replica, as two pods of one deployment would be.
    pub fn replica(&self, env: &[(&str, &str)], args: &[&str]) -> App {
        Self::launch(
            tempfile::tempdir().unwrap(),
            self.config_file.clone(),
            env,
            args,
        )
    }

    fn launch(
        state: tempfile::TempDir,
        config_file: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> App {
        Self::launch_part(
            state,
            config_file,
            env,
            args,
            Some("127.0.0.1:0"),
            REDIS_CHANNELS,
        )
    }

    /// One process of a split application (`args` selects its components
    /// with `-c`), with its own state dir for logs and the stores in
    /// `config_file`: serving HTTP on `listen`, or, without, Redis
    /// messages only (a saga worker). Returns once it has subscribed to
    /// `subscriptions` channels.
    pub fn start_part(
        config_file: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
        listen: Option<&str>,
        subscriptions: usize,
    ) -> App {
        Self::launch_part(
            tempfile::tempdir().unwrap(),
            config_file,
            env,
            args,
            listen,
            subscriptions,
        )
    }

    fn launch_part(
        state: tempfile::TempDir,
        config_file: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
        listen: Option<&str>,
        subscriptions: usize,
    ) -> App {
        let manifest = built_manifest();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazaar"));
        cmd.arg("up").arg("--from").arg(&manifest);
        if let Some(listen) = listen {
            cmd.args(["--listen", listen]);
        }
        cmd.args(["--redis", "embedded", "--state-dir"])
            .arg(state.path().join(".spin"))
            .arg("--runtime-config-file")
            .arg(&config_file)
            .arg("--cache-dir")
            .arg(common::workspace_root().join("target/bazaar-test-cache"))
            .args(args)
            .env("RUST_LOG", "bazaar=info,warn")
            .env("SPIN_VARIABLE_JWT_SECRET", JWT_SECRET)
            .env("SPIN_VARIABLE_GATEWAY_IDENTITY_KEY", GATEWAY_IDENTITY_KEY)
            .env(
                "SPIN_VARIABLE_GATEWAY_IDENTITY_PUBLIC_KEYS",
                GATEWAY_IDENTITY_PUBLIC_KEY,
            )
            .env("SPIN_VARIABLE_ORDERS_IDENTITY_KEY", ORDERS_IDENTITY_KEY)
            .env(
                "SPIN_VARIABLE_ORDERS_IDENTITY_PUBLIC_KEYS",
                ORDERS_IDENTITY_PUBLIC_KEY,
            )
            .env("SPIN_VARIABLE_ADMIN_EMAILS", ADMIN_EMAIL)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let host = match listen {
            Some(_) => common::start(cmd),
            None => common::start_worker(cmd),
        };
        // Messages published before the trigger subscribes are lost (pub/sub):
        // no test may place an order before every channel is subscribed.
        if subscriptions > 0 {
            host.wait_for_stderr(
                "subscribed",
                subscriptions,
                std::time::Duration::from_secs(60),
            );
        }
        App {
            host,
            client: reqwest::Client::new(),
            state,
            config_file,
            servers: Vec::new(),
        }
    }

    /// A component log file in this app's state dir.
    pub fn host_log(&self, file: &str) -> PathBuf {
        self.logs_dir().join(file)
    }

    fn logs_dir(&self) -> PathBuf {
        self.state.path().join(".spin/logs")
    }

    /// Waits (up to 10 s: the log writer may trail the response) until the
    /// component log `file` contains `text`.
    pub async fn wait_for_log(&self, file: &str, text: &str) {
        self.wait_for_log_count(file, text, 1).await;
    }

    /// Waits (up to 10 s) until `text` appears at least `count` times in
    /// the component log `file`.
    pub async fn wait_for_log_count(&self, file: &str, text: &str, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.log_count(file, text) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{file} said {text:?} {} times, not {count}:\n{}",
                self.log_count(file, text),
                std::fs::read_to_string(self.host_log(file)).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Every component log line that mentions `text`, each after its
    /// file's name: the story of one order or message across the app.
    pub fn log_lines_mentioning(&self, text: &str) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.logs_dir())
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        let mut out = String::new();
        for file in files {
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
                if line.contains(text) {
                    out.push_str(&format!("{name}: {line}\n"));
                }
            }
        }
        out
    }

    /// How many times `text` appears in the component log `file` so far.
    pub fn log_count(&self, file: &str, text: &str) -> usize {
        std::fs::read_to_string(self.host_log(file))
            .unwrap_or_default()
            .matches(text)
            .count()
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request reached bazaar");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            headers,
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.host.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(self.request(reqwest::Method::GET, path, token))
            .await
    }

    /// Every item of the list at `path`, following `next_cursor` page by
    /// page (100 at a time); each page must be a 200 list object.
    pub async fn all(&self, path: &str, token: Option<&str>) -> Vec<Value> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match &cursor {
                None => format!("{path}{separator}limit=100"),
                Some(c) => format!("{path}{separator}limit=100&cursor={c}"),
            };
            let reply = self.get(&page, token).await;
            assert_eq!(reply.status, 200, "{page}: {}", reply.body);
            items.extend(
                reply.body["items"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{page}: not a list object: {}", reply.body))
                    .iter()
                    .cloned(),
            );
            match reply.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return items,
            }
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path, token).json(&body))
            .await
    }

    /// Asserts that the gateway's `GET /metrics`, scraped with `token`,
    /// has each of `lines` (a series and its value) as a line of its own.
    pub async fn assert_app_metrics(&self, token: &str, lines: &[&str]) {
        let reply = self.get("/metrics", Some(token)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let text = reply.body.as_str().unwrap();
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "no `{line}` in:\n{text}");
        }
    }

    pub async fn register(&self, email: &str, name: &str) -> Reply {
        self.post(
            "/api/v1/users",
            None,
            json!({ "email": email, "password": PASSWORD, "name": name }),
        )
        .await
    }

    pub async fn login(&self, email: &str) -> String {
        let reply = self
            .post(
                "/api/v1/auth/token",
                None,
                json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["access_token"].as_str().unwrap().to_string()
    }

    /// Registers a user and returns an access token for them.
    pub async fn user(&self, email: &str) -> String {
        let reply = self.register(email, "Test User").await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        self.login(email).await
    }

    pub async fn admin(&self) -> String {
        self.user(ADMIN_EMAIL).await
    }

    /// Changes product `id` as `admin`, as a client that reads before it
    /// writes does: with the ETag of a fresh read, and again with the
    /// current one (which a 412 names) when something moved it in between
    /// (a reservation by the saga).
    pub async fn patch_product(&self, admin: &str, id: &str, body: Value) -> Reply {
        let path = format!("/api/v1/products/{id}");
        let read = self.get(&path, None).await;
        let mut etag = read.header("etag").expect("a product's ETag").to_string();
        for _ in 0..20 {
            let patch = self
                .request(reqwest::Method::PATCH, &path, Some(admin))
                .header("if-match", &etag)
                .json(&body);
            let reply = self.send(patch).await;
            if reply.status != 412 {
                return reply;
            }
            etag = reply
                .header("etag")
                .expect("a 412 names the current ETag")
                .to_string();
        }
        panic!("product {id} changed under 20 edits in a row")
    }

    /// Creates a product as `admin`, returning its JSON.
    pub async fn product(&self, admin: &str, sku: &str, price_cents: i64, stock: i64) -> Value {
        let body = json!({ "sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "EUR", "stock": stock });
        let reply = self.post("/api/v1/products", Some(admin), body).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body
    }
}
