//! `bazaar`: runs a Spin application (`spin.toml`) on wasmtime, with Spin's
//! semantics, so Bazaar can be developed and tested without the Spin CLI.

mod allocator;
mod app;
mod backends;
mod bindings;
mod build;
mod component;
mod factors;
mod redis_broker;
mod redis_url;
mod telemetry;
mod triggers;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::manifest::Manifest;
use crate::app::runtime_config::RuntimeConfigFile;
use crate::app::{AppOptions, Follow, LoadedApp};
use crate::component::Limits;
use crate::redis_broker::{EMBEDDED_ADDRESS, is_embedded};
use crate::redis_url::redact;
use crate::triggers::redis::RedisTrigger;
use std::collections::BTreeMap;

#[derive(Parser)]
#[command(name = "bazaar", version, about = "Run a Spin application on wasmtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build every component with its `[component.<id>.build] command`.
    Build(ManifestArg),
    /// Serve the application.
    Up(Box<UpArgs>),
}

#[derive(Args)]
struct ManifestArg {
    /// The application manifest.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    manifest: PathBuf,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// [Experimental] Serve only this component (repeatable), as `spin up
    /// -c`: only its triggers run, and it may not chain to a component left
    /// out. The default is all components.
    #[arg(short = 'c', long = "component-id", value_name = "COMPONENT")]
    components: Vec<String>,
    /// Address to serve HTTP on (port 0 picks a free port); as in Spin,
    /// `SPIN_HTTP_LISTEN_ADDR` sets it too (SpinKube and the container
    /// image do).
    #[arg(long, env = "SPIN_HTTP_LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Folder for default stores and logs [default: the runtime config's
    /// `state_dir`, else `.spin` beside the manifest].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Folder for the components' stdout and stderr files [default: the
    /// runtime config's `log_dir`, else `logs` in the state dir].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Spin runtime configuration file defining more key-value stores and databases.
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Folder of compiled components, so a restart does not recompile
    /// [default: `<state-dir>/cache`].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Run `bazaar build` first.
    #[arg(long)]
    build: bool,
    /// Echo this component's stdout and stderr to the terminal (repeatable).
    #[arg(long, value_name = "COMPONENT")]
    follow: Vec<String>,
    /// Echo every component's stdout and stderr to the terminal.
    #[arg(long)]
    follow_all: bool,
    /// Requests one instance serves before it is retired.
    #[arg(long, default_value_t = 128)]
    max_instance_reuse_count: usize,
    /// Client connections the HTTP listener holds open at once; one more
    /// is answered 503 (`Retry-After: 1`) and closed.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Requests one instance serves at the same time.
    #[arg(long, default_value_t = 16)]
    max_instance_concurrent_reuse_count: usize,
    /// How long an idle instance is kept for reuse.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    idle_instance_timeout: Duration,
    /// Longest a request may run before it gets 504 and its instance is discarded.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Linear memory limit of each component instance, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_limit_mib: usize,
    /// The Redis server for the application's `redis_url` variable: a
    /// `redis://` URL, or `embedded` for the in-process broker. `redis_url`
    /// given as a variable (--variable, SPIN_VARIABLE_REDIS_URL, .env) still
    /// wins; without either, it comes from the manifest's default, and only
    /// if there is none, from the embedded broker.
    #[arg(long, value_name = "embedded|URL")]
    redis: Option<String>,
    /// Redis messages handled at the same time, across all subscriptions
    /// (default: four per CPU core). `1` is Spin's behaviour: one message at
    /// a time. More than a few per core only adds contention: handlers share
    /// the cores and each service's one SQLite writer (see docs/redis.md).
    #[arg(long)]
    redis_max_concurrent_handlers: Option<usize>,
    /// POST to a component route periodically, in-process:
    /// `http://<component>.spin.internal/<path>@<interval>` (repeatable).
    #[arg(long, value_name = "URL@INTERVAL", value_parser = triggers::schedule::Schedule::parse)]
    schedule: Vec<triggers::schedule::Schedule>,
    /// Serve Prometheus metrics at `http://<address>/metrics` (off unless
    /// given; e.g. 127.0.0.1:9464). See docs/operations.md for the series.
    #[arg(long, value_name = "ADDRESS")]
    metrics_listen: Option<SocketAddr>,
    /// Export OpenTelemetry traces over OTLP/HTTP to this collector (its
    /// base address, e.g. http://127.0.0.1:4318; off unless given). While
    /// tracing, each instance serves one request at a time, so that every
    /// span it makes knows its request. See docs/operations.md.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Write `/tmp/perf-<pid>.map`, so that `perf report` names the guests'
    /// compiled functions instead of showing bare addresses.
    #[arg(long)]
    perfmap: bool,
    /// Behave as Spin does: no development defaults for variables and no
    /// default schedules (see below).
    #[arg(long)]
    no_dev_defaults: bool,
    /// Set application variables, as `spin up --variable`: `KEY=VALUE`,
    /// `KEY=@FILE` (the file's text), `@FILE.json` or `@FILE.toml` (string
    /// values). Repeatable; ranks above SPIN_VARIABLE_<NAME> and `.env`.
    #[arg(long = "variable", value_name = "KEY=VALUE|@FILE")]
    variables: Vec<String>,
    /// Pass an environment variable to every component (repeatable), as
    /// `spin up --env`.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

fn parse_env(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, found {arg:?}")),
    }
}

/// Scheduled calls `bazaar up` makes unless told otherwise, when the
/// application has the component they target: Bazaar's saga redrive, which
/// real Spin deployments run from a CronJob.
const DEV_SCHEDULES: &[&str] = &["http://gateway.spin.internal/internal/saga/redrive@2s"];

/// Values `bazaar up` gives an application's variables when nothing
/// configures them, so that the app runs with one command on a fresh
/// machine. Each use is announced, but for a public key's; `--no-dev-defaults`
/// turns them off.
const DEV_DEFAULTS: &[(&str, &str, Option<&str>)] = &[
    (
        "redis_url",
        EMBEDDED_ADDRESS,
        Some(
            "No Redis configured for `redis_url`: defaulting to the embedded broker (pass --redis URL or set SPIN_VARIABLE_REDIS_URL for a real one).",
        ),
    ),
    (
        "jwt_secret",
        "bazaar-INSECURE-development-jwt-secret",
        Some(
            "WARNING: `jwt_secret` is not set: using an INSECURE development secret. Set SPIN_VARIABLE_JWT_SECRET for anything but local development.",
        ),
    ),
    // Development key pairs, published here and so INSECURE: each private
    // key is announced; a public key alone is not (it cannot sign, and a
    // mismatched pair fails closed).
    (
        "gateway_identity_key",
        "RHTVqH12wQnoqdXKNSbjB_MIMPtZFrbNsgHKvIXMyxU",
        Some(
            "WARNING: `gateway_identity_key` is not set: using an INSECURE development key pair. Set SPIN_VARIABLE_GATEWAY_IDENTITY_KEY and SPIN_VARIABLE_GATEWAY_IDENTITY_PUBLIC_KEYS for anything but local development.",
        ),
    ),
    (
        "gateway_identity_public_keys",
        "LNYSSolZKo6fWzoGnolpIUf0noShIHD4JY1xsJZtOLU",
        None,
    ),
    (
        "orders_identity_key",
        "5uXu1KT33lCr8-FxEIUTE6sgWL7T-9Zejy56djtYJAY",
        Some(
            "WARNING: `orders_identity_key` is not set: using an INSECURE development key pair. Set SPIN_VARIABLE_ORDERS_IDENTITY_KEY and SPIN_VARIABLE_ORDERS_IDENTITY_PUBLIC_KEYS for anything but local development.",
        ),
    ),
    (
        "orders_identity_public_keys",
        "RFxfrWEPJ81Ck0d7hsxB9lp20XgQ_F5N5OBBMcpOX-c",
        None,
    ),
];

/// The application variable `--redis` provides.
const REDIS_VARIABLE: &str = "redis_url";

fn main() -> std::process::ExitCode {
    // Readable lines on a terminal; JSON lines (one object, fields at the
    // top level) anywhere else, for files and log shippers.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "bazaar=info,warn".into()),
        )
        .with_writer(std::io::stderr);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        logs.init();
    } else {
        logs.json().flatten_event(true).init();
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(args) => build::build_all(&Manifest::load(&args.manifest)?),
        Command::Up(args) => {
            // The exporter has its own thread and blocking HTTP client: it
            // is made before the async runtime and flushed after it.
            let traces = args
                .otlp_endpoint
                .as_deref()
                .map(telemetry::traces::export)
                .transpose()?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let result = runtime.block_on(up(*args));
            drop(runtime);
            drop(traces);
            result
        }
    }
}

async fn up(args: UpArgs) -> Result<()> {
    let mut manifest = Manifest::load(&args.manifest.manifest)?;
    if !args.follow.is_empty() {
        check_follow(&manifest, &args.follow)?;
    }
    app::selection::retain_components(&mut manifest, &args.components)?;
    if args.build {
        build::build_all(&manifest)?;
    }
    let runtime_config = RuntimeConfigFile::read(args.runtime_config_file.as_deref())?;
    let configured = runtime_config.directories();
    let state_dir = args
        .state_dir
        .clone()
        .or(configured.state_dir)
        .unwrap_or_else(|| manifest.dir.join(".spin"));
    let state_dir = std::path::absolute(&state_dir)
        .with_context(|| format!("invalid state dir {}", state_dir.display()))?;
    let log_dir = args
        .log_dir
        .clone()
        .or(configured.log_dir)
        .unwrap_or_else(|| state_dir.join("logs"));
    let log_dir = std::path::absolute(&log_dir)
        .with_context(|| format!("invalid log dir {}", log_dir.display()))?;
    let follow = if args.follow_all {
        Follow::All
    } else if args.follow.is_empty() {
        Follow::None
    } else {
        Follow::Some(args.follow.iter().cloned().collect())
    };
    let dev_defaults = if args.no_dev_defaults {
        &[][..]
    } else {
        DEV_DEFAULTS
    };
    let options = AppOptions {
        cache_dir: match &args.cache_dir {
            Some(dir) => std::path::absolute(dir)
                .with_context(|| format!("invalid --cache-dir {}", dir.display()))?,
            None => state_dir.join("cache"),
        },
        state_dir,
        log_dir,
        runtime_config,
        perfmap: args.perfmap,
        follow,
        limits: Limits {
            max_requests_per_instance: args.max_instance_reuse_count.max(1),
            max_concurrent_per_instance: if telemetry::traces::enabled() {
                1
            } else {
                args.max_instance_concurrent_reuse_count.max(1)
            },
            idle_instance_timeout: args.idle_instance_timeout,
            request_timeout: args.request_timeout,
            memory_bytes: args.memory_limit_mib.saturating_mul(1024 * 1024),
        },
        variable_flags: app::variable_sources::from_flags(&args.variables)?,
        // Spin reads `.env` from the current directory, as a fallback
        // after the process environment.
        dotenv: app::variable_sources::dotenv(std::path::Path::new(".env"))?,
        component_env: args.env.clone(),
        variable_overrides: match &args.redis {
            Some(redis) => BTreeMap::from([(REDIS_VARIABLE.to_string(), redis_address(redis))]),
            None => BTreeMap::new(),
        },
        variable_fallbacks: dev_defaults
            .iter()
            .map(|(n, v, _)| (n.to_string(), v.to_string()))
            .collect(),
        fallback_warnings: dev_defaults
            .iter()
            .filter_map(|(n, _, w)| Some((n.to_string(), (*w)?.to_string())))
            .collect(),
    };
    if let Some(addr) = args.metrics_listen {
        telemetry::metrics::serve(addr)?;
    }
    let engine = app::engine(&options)?;
    let app = app::load(&manifest, &options, &engine).await?;
    allocator::release_startup_heap();
    let listener = match &app.http {
        Some(_) => Some(bind(args.listen)?),
        None => None,
    };
    print_banner(&manifest, listener.as_ref(), &app);
    let _epoch = EpochTicker::start(engine.clone());
    let redis = RedisTrigger::start(
        app.redis,
        app.redis_clients,
        args.redis_max_concurrent_handlers.unwrap_or_else(|| {
            4 * std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        }),
    );
    let schedules = schedules(&args, &manifest)?;
    let _scheduled = app
        .http
        .as_ref()
        .map(|http| triggers::schedule::start(http, schedules));
    match (app.http, listener) {
        (Some(http), Some(listener)) => {
            triggers::http::serve(
                http,
                listener,
                args.max_connections as usize,
                shutdown_signal(),
            )
            .await?
        }
        _ => shutdown_signal().await,
    }
    redis.shutdown().await;
    Ok(())
}

/// The schedules to run: those given, else (with dev defaults) the default
/// ones whose component exists.
fn schedules(args: &UpArgs, manifest: &Manifest) -> Result<Vec<triggers::schedule::Schedule>> {
    if !args.schedule.is_empty() || args.no_dev_defaults {
        check_schedules(manifest, &args.schedule)?;
        return Ok(args.schedule.clone());
    }
    let defaults = DEV_SCHEDULES
        .iter()
        .map(|s| triggers::schedule::Schedule::parse(s))
        .collect::<Result<Vec<_>>>()?;
    Ok(defaults
        .into_iter()
        .filter(|s| manifest.components.contains_key(&s.component))
        .collect())
}

/// A schedule must call a component that serves HTTP: anything else would
/// only log a failure at every tick.
fn check_schedules(manifest: &Manifest, schedules: &[triggers::schedule::Schedule]) -> Result<()> {
    let http: Vec<&str> = manifest
        .http_triggers
        .iter()
        .map(|t| t.component.as_str())
        .collect();
    for schedule in schedules {
        if !http.contains(&schedule.component.as_str()) {
            anyhow::bail!(
                "--schedule calls `{}`, which is not a component with an HTTP trigger in {} (those are: {})",
                schedule.component,
                manifest.path.display(),
                http.join(", ")
            );
        }
    }
    Ok(())
}

fn redis_address(flag: &str) -> String {
    if flag == "embedded" {
        EMBEDDED_ADDRESS.to_string()
    } else {
        flag.to_string()
    }
}

fn check_follow(manifest: &Manifest, follow: &[String]) -> Result<()> {
    let unknown: Vec<&String> = follow
        .iter()
        .filter(|id| !manifest.components.contains_key(*id))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "--follow names components that are not in {}: {:?} (components: {})",
            manifest.path.display(),
            unknown,
            manifest.component_ids()
        );
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::anyhow!(
                "{addr} is already in use: stop what is using it, or pass another --listen address"
            )
        }
        _ => anyhow::anyhow!("cannot listen on {addr}: {e}"),
    })?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

fn print_banner(manifest: &Manifest, listener: Option<&tokio::net::TcpListener>, app: &LoadedApp) {
    if let (Some(http), Some(listener)) = (&app.http, listener) {
        let base = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(_) => "http://?".into(),
        };
        println!("\nServing {base}");
        println!("Available Routes:");
        for (route, component) in http.router().routes() {
            println!("  {component}: {base}{route}");
            let description = manifest
                .components
                .get(component)
                .and_then(|c| c.description.as_deref());
            if let Some(description) = description {
                println!("    {description}");
            }
        }
        for (replaced, route, winner) in http.router().duplicates() {
            tracing::error!(
                "route {route} of component `{replaced}` is a duplicate of `{winner}`'s and will never be used"
            );
        }
    }
    if !app.redis.is_empty() {
        println!("Redis subscriptions:");
        for sub in &app.redis {
            let components: Vec<&str> = sub.handlers.iter().map(|h| &*h.runtime.id).collect();
            println!(
                "  {} {}: {}",
                redact(&sub.address),
                sub.channel,
                components.join(", ")
            );
        }
        if app.redis.iter().any(|sub| is_embedded(&sub.address)) {
            eprintln!(
                "Using the embedded Redis broker ({EMBEDDED_ADDRESS}): in-process, in memory, for local runs only"
            );
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!("cannot listen for SIGTERM: {error}");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Advances wasmtime's epoch so guests yield regularly (see
/// `ComponentRuntime::new_store`); stops with the server.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// How often running guests yield to the host.
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
