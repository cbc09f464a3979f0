//! The runtime configuration file (`--runtime-config-file`): where each
//! key-value store and SQLite database label lives.
//!
//! This is Spin's format with three of its providers: `type = "spin"` (a
//! SQLite file, for both kinds of store), `type = "redis"` for key-value
//! stores and `type = "libsql"` for SQLite databases on a libSQL server, so
//! replicas on different machines can share them. Relative paths resolve as Spin resolves them:
//! key-value paths against the runtime config file's folder, SQLite paths
//! against the current directory. An entry without `path` is in memory, gone
//! when the host stops.

use crate::redis_url::{is_redis_url, redact};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File names Spin uses for the `default` labels inside the state dir.
pub const DEFAULT_KV_FILE: &str = "sqlite_key_value.db";
pub const DEFAULT_SQLITE_FILE: &str = "sqlite_db.db";

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntimeConfig {
    /// Spin's `state_dir` and `log_dir` keys (see [`Directories`]).
    state_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreConfig>,
    #[serde(default)]
    sqlite_database: BTreeMap<String, StoreConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
    token: Option<String>,
}

/// Where one store's data lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    File(PathBuf),
    Memory,
}

/// Where one key-value store lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KvLocation {
    /// Spin's `type = "spin"`: the `spin_key_value` table of a SQLite file.
    Sqlite(Location),
    /// Spin's `type = "redis"`: keys stored as they are in a Redis database.
    Redis(String),
}

/// Where one SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// Spin's `type = "spin"`: a file (or memory) this host opens.
    Local(Location),
    /// Spin's `type = "libsql"`: a database on a libSQL server (sqld,
    /// Turso), reached over HTTP.
    Libsql { url: String, token: String },
}

/// Where the state (default stores) and the component logs go, as a
/// runtime config file may say with Spin's top-level `state_dir` and
/// `log_dir` keys (relative to the file's folder). `--state-dir` and
/// `--log-dir` win over them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directories {
    pub state_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
}

/// A runtime config file, read and parsed once: its directories decide the
/// state dir, which the labels' locations then resolve against.
#[derive(Debug, Default)]
pub struct RuntimeConfigFile {
    path: Option<PathBuf>,
    raw: RawRuntimeConfig,
}

impl RuntimeConfigFile {
    /// The file at `path`, or none (Spin's defaults).
    pub fn read(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(RuntimeConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read runtime config {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// The file `path`, whose text is `text`; a syntax error names `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw = toml::from_str::<RawRuntimeConfig>(text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(RuntimeConfigFile {
            path: Some(path.to_path_buf()),
            raw,
        })
    }

    pub fn directories(&self) -> Directories {
        let base = self
            .path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        Directories {
            state_dir: self.raw.state_dir.as_ref().map(|dir| base.join(dir)),
            log_dir: self.raw.log_dir.as_ref().map(|dir| base.join(dir)),
        }
    }
}

/// Resolved locations for every label.
#[derive(Debug)]
pub struct RuntimeConfig {
    pub key_value_stores: BTreeMap<String, KvLocation>,
    pub sqlite_databases: BTreeMap<String, DbLocation>,
}

impl RuntimeConfig {
    /// `default` labels live in `state_dir`; a runtime config file may move
    /// them and add more labels.
    pub fn resolve(file: &RuntimeConfigFile, state_dir: &Path) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Self::resolve_in(file, state_dir, &cwd)
    }

    /// What `file` says; relative paths resolve against the file's folder
    /// (key-value) and `cwd` (SQLite), as in Spin. Every error names the
    /// file and the key.
    pub fn resolve_in(file: &RuntimeConfigFile, state_dir: &Path, cwd: &Path) -> Result<Self> {
        Self::from_raw(file.raw.clone(), file.path.as_deref(), state_dir, cwd)
    }

    fn from_raw(
        raw: RawRuntimeConfig,
        file: Option<&Path>,
        state_dir: &Path,
        cwd: &Path,
    ) -> Result<Self> {
        let config_dir = file
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let name = file.map(|p| p.display().to_string()).unwrap_or_default();

        let mut key_value_stores = BTreeMap::from([(
            "default".to_string(),
            KvLocation::Sqlite(Location::File(state_dir.join(DEFAULT_KV_FILE))),
        )]);
        for (label, config) in raw.key_value_store {
            let key = format!("{name}: key `key_value_store.{label}");
            let location = match config.kind.as_str() {
                "spin" => {
                    config.refuse(&key, &["url", "token"])?;
                    KvLocation::Sqlite(config.location(&config_dir))
                }
                "redis" => {
                    config.refuse(&key, &["path", "token"])?;
                    KvLocation::Redis(redis_url(&key, config.url)?)
                }
                other => bail!(
                    "{key}.type`: expected \"spin\" (a SQLite file) or \"redis\", found {other:?}"
                ),
            };
            key_value_stores.insert(label, location);
        }

        let mut sqlite_databases = BTreeMap::from([(
            "default".to_string(),
            DbLocation::Local(Location::File(state_dir.join(DEFAULT_SQLITE_FILE))),
        )]);
        for (label, config) in raw.sqlite_database {
            let key = format!("{name}: key `sqlite_database.{label}");
            let location = match config.kind.as_str() {
                "spin" => {
                    config.refuse(&key, &["url", "token"])?;
                    DbLocation::Local(config.location(cwd))
                }
                "libsql" => {
                    config.refuse(&key, &["path"])?;
                    let url = libsql_url(&key, config.url)?;
                    let Some(token) = config.token else {
                        bail!(
                            "{key}.token`: missing; type \"libsql\" needs the database's auth token \
                             (any string for a server without authentication)"
                        );
                    };
                    DbLocation::Libsql { url, token }
                }
                other => bail!(
                    "{key}.type`: expected \"spin\" (a SQLite file) or \"libsql\", found {other:?}"
                ),
            };
            sqlite_databases.insert(label, location);
        }
        Ok(RuntimeConfig {
            key_value_stores,
            sqlite_databases,
        })
    }
}

impl StoreConfig {
    /// A key this `type` does not read is a mistake worth naming, not
    /// something to ignore.
    fn refuse(&self, key: &str, fields: &[&str]) -> Result<()> {
        for field in fields {
            let given = match *field {
                "path" => self.path.is_some(),
                "url" => self.url.is_some(),
                _ => self.token.is_some(),
            };
            if given {
                bail!(
                    "{key}.{field}`: not used by type {:?}; remove it",
                    self.kind
                );
            }
        }
        Ok(())
    }

    fn location(&self, base: &Path) -> Location {
        match &self.path {
            Some(path) => Location::File(base.join(path)),
            None => Location::Memory,
        }
    }
}

/// A libSQL server's address, as Spin's provider takes it: `libsql://`
/// (TLS), `https://` or `http://`.
fn libsql_url(key: &str, url: Option<String>) -> Result<String> {
    let Some(url) = url else {
        bail!(
            "{key}.url`: missing; type \"libsql\" needs the database's URL, e.g. \"libsql://db-org.turso.io\""
        );
    };
    match url::Url::parse(&url) {
        Ok(parsed)
            if matches!(parsed.scheme(), "libsql" | "https" | "http") && parsed.has_host() =>
        {
            Ok(url)
        }
        _ => bail!(
            "{key}.url`: expected a libsql://, https:// or http:// URL with a host, found {url:?}"
        ),
    }
}

/// A `redis://` or `rediss://` URL the `redis` crate accepts; the check
/// here names the key, the connection at start-up says whether it answers.
fn redis_url(key: &str, url: Option<String>) -> Result<String> {
    let Some(url) = url else {
        bail!(
            "{key}.url`: missing; type \"redis\" needs the server's address, e.g. \"redis://localhost:6379\""
        );
    };
    if !is_redis_url(&url) {
        bail!(
            "{key}.url`: expected a redis:// or rediss:// URL with a host, found {:?}",
            redact(&url)
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RuntimeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runtime-config.toml");
        std::fs::write(&file, text).unwrap();
        RuntimeConfig::resolve(&RuntimeConfigFile::read(Some(&file))?, Path::new("/state"))
            .inspect(|c| {
                let default =
                    KvLocation::Sqlite(Location::File(Path::new("/state").join(DEFAULT_KV_FILE)));
                assert_eq!(c.key_value_stores["default"], default);
            })
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let c =
            load("[key_value_store.cache]\ntype = \"spin\"\npath = \"data/cache.db\"\n").unwrap();
        let KvLocation::Sqlite(Location::File(path)) = &c.key_value_stores["cache"] else {
            panic!("not a file")
        };
        assert!(
            path.ends_with("data/cache.db") && path.is_absolute(),
            "{path:?}"
        );
        let c = load("[sqlite_database.scratch]\ntype = \"spin\"\n").unwrap();
        assert_eq!(
            c.sqlite_databases["scratch"],
            DbLocation::Local(Location::Memory)
        );
    }

    /// Spin's rules: a key-value file's relative path is relative to the
    /// runtime config file, a SQLite file's to the working directory; `..`
    /// and absolute paths are the operator's to choose and are kept.
    #[test]
    fn paths_resolve_as_spin_resolves_them() {
        let text = "[key_value_store.up]\ntype = \"spin\"\npath = \"../kv/up.db\"\n\
                    [key_value_store.abs]\ntype = \"spin\"\npath = \"/var/lib/kv.db\"\n\
                    [sqlite_database.rel]\ntype = \"spin\"\npath = \"data/rel.db\"\n\
                    [sqlite_database.abs]\ntype = \"spin\"\npath = \"/var/lib/abs.db\"\n";
        let file =
            RuntimeConfigFile::parse(Path::new("/etc/bazaar/runtime-config.toml"), text).unwrap();
        let c =
            RuntimeConfig::resolve_in(&file, Path::new("/state"), Path::new("/work/app")).unwrap();
        let kv = |label: &str| match &c.key_value_stores[label] {
            KvLocation::Sqlite(Location::File(path)) => path.clone(),
            other => panic!("{label}: {other:?}"),
        };
        let db = |label: &str| match &c.sqlite_databases[label] {
            DbLocation::Local(Location::File(path)) => path.clone(),
            other => panic!("{label}: {other:?}"),
        };
        assert_eq!(kv("up"), Path::new("/etc/bazaar/../kv/up.db"));
        assert_eq!(kv("abs"), Path::new("/var/lib/kv.db"));
        assert_eq!(db("rel"), Path::new("/work/app/data/rel.db"));
        assert_eq!(db("abs"), Path::new("/var/lib/abs.db"));
        assert_eq!(db("default"), Path::new("/state").join(DEFAULT_SQLITE_FILE));
    }

    #[test]
    fn unsupported_type_and_unknown_key_are_named() {
        let msg = load("[sqlite_database.main]\ntype = \"postgres\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("sqlite_database.main.type`: expected"),
            "{msg}"
        );
        let msg = load("[key_value_store.cache]\ntype = \"memcached\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("key_value_store.cache.type`: expected \"spin\" (a SQLite file) or \"redis\", found \"memcached\""),
            "{msg}"
        );
        let msg = load("[variables_provider]\n").unwrap_err().to_string();
        assert!(msg.contains("unknown field `variables_provider`"), "{msg}");
    }

    #[test]
    fn redis_stores_need_a_redis_url() {
        let c = load("[key_value_store.shared]\ntype = \"redis\"\nurl = \"redis://cache:6379\"\n")
            .unwrap();
        assert_eq!(
            c.key_value_stores["shared"],
            KvLocation::Redis("redis://cache:6379".into())
        );
        let msg = load("[key_value_store.shared]\ntype = \"redis\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("key_value_store.shared.url`: missing"),
            "{msg}"
        );
        let msg = load(
            "[key_value_store.shared]\ntype = \"redis\"\nurl = \"http://user:hunter2@cache\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("expected a redis:// or rediss:// URL"),
            "{msg}"
        );
        // A word that cannot turn up in the temporary file's random name.
        assert!(
            !msg.contains("hunter2"),
            "the password must not be printed: {msg}"
        );
        let msg = load(
            "[key_value_store.shared]\ntype = \"redis\"\nurl = \"redis://x\"\npath = \"a.db\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("key_value_store.shared.path`: not used by type \"redis\""),
            "{msg}"
        );
    }

    #[test]
    fn libsql_databases_need_a_url_and_a_token() {
        let c = load(
            "[sqlite_database.orders]\ntype = \"libsql\"\nurl = \"libsql://orders-acme.turso.io\"\ntoken = \"t\"\n",
        )
        .unwrap();
        assert_eq!(
            c.sqlite_databases["orders"],
            DbLocation::Libsql {
                url: "libsql://orders-acme.turso.io".into(),
                token: "t".into()
            }
        );
        let msg =
            load("[sqlite_database.orders]\ntype = \"libsql\"\nurl = \"http://127.0.0.1:8080\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            msg.contains("sqlite_database.orders.token`: missing"),
            "{msg}"
        );
        let msg = load("[sqlite_database.orders]\ntype = \"libsql\"\nurl = \"file:orders.db\"\ntoken = \"t\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("expected a libsql://, https:// or http:// URL"),
            "{msg}"
        );
    }
}
