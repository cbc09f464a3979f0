//! Turning a manifest into a running application: resolve variables and
//! stores, compile and link every triggered component, build the router.
//!
//! Everything that can be checked is checked here, before the listener
//! opens, so configuration mistakes stop `bazaar up` with one clear message
//! rather than surfacing as failed requests.

pub mod allowed_hosts;
pub mod manifest;
pub mod runtime_config;
pub mod selection;
pub mod template;
pub mod variable_sources;
pub mod variables;

#[cfg(test)]
mod properties;

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Component;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::app::allowed_hosts::{AllowList, AllowedHost};
use crate::app::manifest::{Manifest, RouteSpec};
use crate::app::runtime_config::{
    DbLocation, KvLocation, Location, RuntimeConfig, RuntimeConfigFile,
};
use crate::app::template::Template;
use crate::app::variables::AppVariables;
use crate::bindings::redis_trigger::RedisTriggerPre;
use crate::component::{ComponentRuntime, Limits};
use crate::factors::key_value::{KvGrants, KvStores};
use crate::factors::outbound_http::{AppRequests, HttpClients, HttpGrants};
use crate::factors::outbound_redis::{RedisClients, RedisGrants};
use crate::factors::sqlite::{Databases, SqliteGrants};
use crate::factors::variables::ComponentVariables;
use crate::factors::wasi::ComponentLogs;
use crate::factors::{self, Capabilities};
use crate::triggers::http::HttpApp;
use crate::triggers::http::pool::ComponentPool;
use crate::triggers::http::router::Router;
use crate::triggers::redis::{self, RedisHandler, Subscription};

pub struct AppOptions {
    pub state_dir: PathBuf,
    /// Where each component's stdout and stderr files go.
    pub log_dir: PathBuf,
    /// `--runtime-config-file`, read once (its directories are in the
    /// fields above already).
    pub runtime_config: RuntimeConfigFile,
    pub cache_dir: PathBuf,
    /// Tell `perf` where guest code is (`--perfmap`).
    pub perfmap: bool,
    /// Components whose stdio is echoed to the terminal.
    pub follow: Follow,
    pub limits: Limits,
    /// `--variable` values, by variable name: above everything else.
    pub variable_flags: BTreeMap<String, String>,
    /// The `.env` file's entries, consulted after the process environment.
    pub dotenv: BTreeMap<String, String>,
    /// `--env` values, given to every component over its `environment`.
    pub component_env: Vec<(String, String)>,
    /// Variable values from `bazaar up`'s own flags, ranked after the
    /// environment and before manifest defaults.
    pub variable_overrides: BTreeMap<String, String>,
    /// Values for variables that would otherwise have none.
    pub variable_fallbacks: BTreeMap<String, String>,
    /// What to tell the user when a fallback is used.
    pub fallback_warnings: BTreeMap<String, String>,
}

pub enum Follow {
    None,
    All,
    Some(BTreeSet<String>),
}

impl Follow {
    fn includes(&self, id: &str) -> bool {
        match self {
            Follow::None => false,
            Follow::All => true,
            Follow::Some(ids) => ids.contains(id),
        }
    }
}

pub fn engine(options: &AppOptions) -> Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true)
        .concurrency_support(true)
        .epoch_interruption(true);
    if options.perfmap {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::default();
    pool.max_memory_size(options.limits.memory_bytes);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let mut cache = CacheConfig::new();
    cache.with_directory(&options.cache_dir);
    let cache = Cache::new(cache).map_err(anyhow::Error::from);
    config.cache(Some(
        cache.context("cannot set up the compiled-component cache")?,
    ));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot create the wasmtime engine")
}

/// A loaded application, ready to serve.
pub struct LoadedApp {
    /// `None` when the manifest has no HTTP trigger.
    pub http: Option<Arc<HttpApp>>,
    pub redis: Vec<Subscription>,
    pub redis_clients: Arc<RedisClients>,
}

/// Loads the application: every check that can fail fails here.
pub async fn load(manifest: &Manifest, options: &AppOptions, engine: &Engine) -> Result<LoadedApp> {
    let undeclared: Vec<&String> = options
        .variable_flags
        .keys()
        .filter(|name| !manifest.variables.contains_key(*name))
        .collect();
    if !undeclared.is_empty() {
        bail!(
            "--variable names variables {} does not declare: {undeclared:?} (declared: {})",
            manifest.path.display(),
            manifest
                .variables
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let flags: BTreeMap<String, &String> = options
        .variable_flags
        .iter()
        .map(|(name, value)| (variables::env_var_name(name), value))
        .collect();
    let variables = AppVariables::resolve(
        manifest,
        |name| {
            flags
                .get(name)
                .map(|v| v.to_string())
                .or_else(|| std::env::var(name).ok())
                .or_else(|| options.dotenv.get(name).cloned())
        },
        &options.variable_overrides,
        &options.variable_fallbacks,
    )?;
    for name in variables.fallbacks_used() {
        if let Some(warning) = options.fallback_warnings.get(name) {
            eprintln!("{warning}");
        }
    }
    let runtime_config = RuntimeConfig::resolve(&options.runtime_config, &options.state_dir)?;
    check_labels_defined(manifest, &runtime_config)?;
    let redis_targets = redis::resolve_targets(manifest, &variables)?;

    // Components some trigger runs, each with the trigger kinds that run it.
    let mut triggered: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for t in &manifest.http_triggers {
        triggered.entry(&t.component).or_default().0 = true;
    }
    for (_, _, component) in &redis_targets {
        triggered.entry(component).or_default().1 = true;
    }
    let used = |pick: fn(&crate::app::manifest::Component) -> &Vec<String>| -> BTreeSet<String> {
        triggered
            .keys()
            .flat_map(|id| pick(&manifest.components[*id]).iter().cloned())
            .collect()
    };
    let kv_used = used(|c| &c.key_value_stores);
    let sqlite_used = used(|c| &c.sqlite_databases);
    announce_defaults(&runtime_config, &kv_used, &sqlite_used);
    let kv_stores =
        Arc::new(KvStores::open(only(&runtime_config.key_value_stores, &kv_used)).await?);
    let databases = Arc::new(
        Databases::open(
            only(&runtime_config.sqlite_databases, &sqlite_used),
            options.limits.request_timeout,
        )
        .await?,
    );
    let redis_clients = Arc::new(RedisClients::default());

    let logs_dir = &options.log_dir;
    eprintln!("Logging component stdio to \"{}/\"", logs_dir.display());
    let linker = factors::linker(engine)?;
    let http_clients = Arc::new(HttpClients::new());
    let mut http_pools = Vec::new();
    let mut redis_handlers = BTreeMap::new();
    for (id, (http, redis)) in triggered {
        let component = &manifest.components[id];
        let context = || format!("component `{id}`");
        let wasm = compile(engine, &manifest.source_path(component)).with_context(context)?;
        let pre = linker
            .instantiate_pre(&wasm)
            .map_err(anyhow::Error::from)
            .with_context(context)?;
        let allowed = Arc::new(
            allow_list(&variables, &component.allowed_outbound_hosts).with_context(context)?,
        );
        let capabilities = Arc::new(Capabilities {
            http: HttpGrants {
                clients: Arc::clone(&http_clients),
                allowed: Arc::clone(&allowed),
            },
            key_value: KvGrants {
                stores: Arc::clone(&kv_stores),
                granted: component.key_value_stores.iter().cloned().collect(),
            },
            sqlite: SqliteGrants {
                databases: Arc::clone(&databases),
                granted: component.sqlite_databases.iter().cloned().collect(),
            },
            redis: RedisGrants {
                component: id.into(),
                clients: Arc::clone(&redis_clients),
                allowed,
            },
            variables: ComponentVariables::resolve(&variables, &component.variables)
                .with_context(context)?,
        });
        let runtime = Arc::new(ComponentRuntime::new(
            id,
            capabilities,
            component
                .environment
                .clone()
                .into_iter()
                .filter(|(key, _)| !options.component_env.iter().any(|(k, _)| k == key))
                .chain(options.component_env.iter().cloned())
                .collect(),
            ComponentLogs::open(logs_dir, id, options.follow.includes(id))?,
            options.limits.clone(),
        ));
        if http {
            let pre = ServicePre::new(pre.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "component `{id}` has an HTTP trigger but does not export `wasi:http/handler@0.3.0` \
                     (build it with spin-sdk 7's #[http_service]): {e}"
                )
            })?;
            http_pools.push(ComponentPool {
                runtime: Arc::clone(&runtime),
                pre,
            });
        }
        if redis {
            let pre = RedisTriggerPre::new(pre).map_err(|e| {
                anyhow::anyhow!(
                    "component `{id}` has a Redis trigger but does not export `spin:redis/inbound-redis@3.0.0` \
                     (build it with spin-sdk 7's #[redis_subscriber]): {e}"
                )
            })?;
            redis_handlers.insert(id.to_string(), Arc::new(RedisHandler::new(runtime, pre)));
        }
    }

    let http =
        (!manifest.http_triggers.is_empty()).then(|| {
            let router = Router::new(manifest.http_triggers.iter().filter_map(
                |t| match &t.route {
                    RouteSpec::Public(route) => Some((route.as_str(), t.component.as_str())),
                    RouteSpec::Private => None,
                },
            ));
            let application = &manifest.application;
            let info = serde_json::json!({
                "name": application.name,
                "version": application.version,
                "description": application.description,
                "runtime": concat!("bazaar ", env!("CARGO_PKG_VERSION")),
            });
            Arc::new(HttpApp::new(info, router, http_pools))
        });
    if let Some(http) = &http {
        let http: Arc<dyn AppRequests> = Arc::clone(http) as _;
        http_clients
            .app
            .set(Arc::downgrade(&http))
            .map_err(|_| anyhow::anyhow!("application linked twice"))?;
    }
    let redis = redis::subscriptions(
        redis_targets
            .into_iter()
            .map(|(address, channel, component)| {
                (address, channel, Arc::clone(&redis_handlers[&component]))
            })
            .collect(),
    );
    Ok(LoadedApp {
        http,
        redis,
        redis_clients,
    })
}

fn compile(engine: &Engine, path: &Path) -> Result<Component> {
    if !path.exists() {
        bail!(
            "{} does not exist: run `bazaar build` first",
            path.display()
        );
    }
    Component::from_file(engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot load {}", path.display()))
}

/// Spin refuses to start when a component names a store nobody defined.
fn check_labels_defined(manifest: &Manifest, config: &RuntimeConfig) -> Result<()> {
    let mut problems = Vec::new();
    for (id, component) in &manifest.components {
        for label in &component.key_value_stores {
            if !config.key_value_stores.contains_key(label) {
                problems.push(format!("component `{id}` uses key-value store `{label}`"));
            }
        }
        for label in &component.sqlite_databases {
            if !config.sqlite_databases.contains_key(label) {
                problems.push(format!("component `{id}` uses SQLite database `{label}`"));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}: stores are used but not defined; only `default` exists without a runtime config file \
             (--runtime-config-file) defining `[key_value_store.<label>]` or `[sqlite_database.<label>]`:\n  - {}",
            manifest.path.display(),
            problems.join("\n  - ")
        );
    }
    Ok(())
}

fn only<L: Clone>(all: &BTreeMap<String, L>, used: &BTreeSet<String>) -> BTreeMap<String, L> {
    all.iter()
        .filter(|(label, _)| used.contains(*label))
        .map(|(l, loc)| (l.clone(), loc.clone()))
        .collect()
}

fn announce_defaults(
    config: &RuntimeConfig,
    kv_used: &BTreeSet<String>,
    sqlite_used: &BTreeSet<String>,
) {
    if kv_used.contains("default")
        && let Some(KvLocation::Sqlite(Location::File(path))) =
            config.key_value_stores.get("default")
    {
        eprintln!("Storing default key-value data to \"{}\".", path.display());
    }
    if sqlite_used.contains("default")
        && let Some(DbLocation::Local(Location::File(path))) =
            config.sqlite_databases.get("default")
    {
        eprintln!("Storing default SQLite data to \"{}\".", path.display());
    }
}

fn allow_list(variables: &AppVariables, entries: &[String]) -> Result<AllowList> {
    let hosts = entries
        .iter()
        .map(|entry| {
            let resolved = variables.render(&Template::parse(entry)?)?;
            AllowedHost::parse(&resolved)
                .with_context(|| format!("allowed_outbound_hosts entry {entry:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AllowList::new(hosts))
}
