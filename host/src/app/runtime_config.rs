//! The runtime configuration file (`--runtime-config-file`): where each
//! key-value store and SQLite database label lives.
//!
//! This is Spin's format, limited to the `type = "spin"` (SQLite file)
//! backends. Relative paths resolve as Spin resolves them: key-value paths
//! against the runtime config file's folder, SQLite paths against the current
//! directory. An entry without `path` is in memory, gone when the host stops.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File names Spin uses for the `default` labels inside the state dir.
pub const DEFAULT_KV_FILE: &str = "sqlite_key_value.db";
pub const DEFAULT_SQLITE_FILE: &str = "sqlite_db.db";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntimeConfig {
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreConfig>,
    #[serde(default)]
    sqlite_database: BTreeMap<String, StoreConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
}

/// Where one store's data lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    File(PathBuf),
    Memory,
}

/// Resolved locations for every label.
#[derive(Debug)]
pub struct RuntimeConfig {
    pub key_value_stores: BTreeMap<String, Location>,
    pub sqlite_databases: BTreeMap<String, Location>,
}

impl RuntimeConfig {
    /// `default` labels live in `state_dir`; a runtime config file may move
    /// them and add more labels.
    pub fn load(file: Option<&Path>, state_dir: &Path) -> Result<Self> {
        let raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read runtime config {}", path.display()))?;
                toml::from_str::<RawRuntimeConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => RawRuntimeConfig::default(),
        };
        let config_dir = file
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let name = file.map(|p| p.display().to_string()).unwrap_or_default();
        let resolve = |section: &str,
                       entries: BTreeMap<String, StoreConfig>,
                       default_file: &str,
                       base: &Path| {
            let mut out = BTreeMap::from([(
                "default".to_string(),
                Location::File(state_dir.join(default_file)),
            )]);
            for (label, config) in entries {
                if config.kind != "spin" {
                    bail!(
                        "{name}: key `{section}.{label}.type`: expected \"spin\" (a SQLite file), found {:?}; bazaar supports no other backend yet",
                        config.kind
                    );
                }
                let location = match config.path {
                    Some(path) => Location::File(base.join(path)),
                    None => Location::Memory,
                };
                out.insert(label, location);
            }
            Ok(out)
        };
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(RuntimeConfig {
            key_value_stores: resolve(
                "key_value_store",
                raw.key_value_store,
                DEFAULT_KV_FILE,
                &config_dir,
            )?,
            sqlite_databases: resolve(
                "sqlite_database",
                raw.sqlite_database,
                DEFAULT_SQLITE_FILE,
                &cwd,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RuntimeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runtime-config.toml");
        std::fs::write(&file, text).unwrap();
        RuntimeConfig::load(Some(&file), Path::new("/state"))
            .inspect(|c| {
                let default = Location::File(Path::new("/state").join(DEFAULT_KV_FILE));
                assert_eq!(c.key_value_stores["default"], default);
            })
            .map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let c =
            load("[key_value_store.cache]\ntype = \"spin\"\npath = \"data/cache.db\"\n").unwrap();
        let Location::File(path) = &c.key_value_stores["cache"] else {
            panic!("not a file")
        };
        assert!(
            path.ends_with("data/cache.db") && path.is_absolute(),
            "{path:?}"
        );
        let c = load("[sqlite_database.scratch]\ntype = \"spin\"\n").unwrap();
        assert_eq!(c.sqlite_databases["scratch"], Location::Memory);
    }

    #[test]
    fn unsupported_type_and_unknown_key_are_named() {
        let msg = load("[sqlite_database.main]\ntype = \"libsql\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("sqlite_database.main.type"), "{msg}");
        let msg = load("[variables_provider]\n").unwrap_err().to_string();
        assert!(msg.contains("unknown field `variables_provider`"), "{msg}");
    }
}
