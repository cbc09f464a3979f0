//! The Spin application manifest (`spin.toml`, manifest version 2).
//!
//! Only the keys Spin 4 itself accepts are accepted here, so a manifest that
//! `bazaar` runs also runs on `spin up` and SpinKube. Parsing is strict: an
//! unknown or mistyped key is an error naming the file, the key and what was
//! expected, because a silently ignored key (say `key_value_store` instead of
//! `key_value_stores`) turns into a confusing runtime denial much later.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::app::template::Template;

/// A parsed and validated manifest, with the folder its relative paths are
/// resolved against.
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub application: Application,
    pub variables: BTreeMap<String, VariableDecl>,
    pub http_triggers: Vec<HttpTrigger>,
    pub redis_triggers: Vec<RedisTrigger>,
    pub components: BTreeMap<String, Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Accepted for Spin compatibility; `bazaar` has no use for it.
    #[serde(default, rename = "authors")]
    _authors: Vec<String>,
    /// Accepted for Spin compatibility: the environments (`spin-up:3.2`, …)
    /// Spin checks the app against at build time.
    #[serde(default, rename = "targets")]
    _targets: Vec<String>,
    #[serde(default)]
    pub trigger: ApplicationTriggers,
}

/// `[application.trigger.<type>]`: settings shared by a trigger type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationTriggers {
    #[serde(default)]
    pub redis: Option<RedisDefaults>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisDefaults {
    /// The server every `[[trigger.redis]]` without its own `address` uses;
    /// may be a `{{ variable }}` expression.
    pub address: String,
}

/// `[variables]` entry: a value comes from a provider, else `default`;
/// `required` forbids a default; `secret` keeps the value out of logs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// `bazaar` never prints variable values, secret or not, so this needs
    /// no behaviour of its own.
    #[serde(default, rename = "secret")]
    _secret: bool,
    /// Spin accepts a description for people reading the manifest; so
    /// does `bazaar`, and does nothing with it.
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Triggers {
    #[serde(default)]
    http: Vec<HttpTrigger>,
    #[serde(default)]
    redis: Vec<RedisTrigger>,
}

/// `[[trigger.redis]]`: run `component` for every message on `channel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTrigger {
    /// Accepted for Spin compatibility; triggers are identified by component.
    #[serde(default, rename = "id")]
    _id: Option<String>,
    pub channel: String,
    pub component: String,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// Accepted for Spin compatibility; triggers are identified by component.
    #[serde(default, rename = "id")]
    _id: Option<String>,
    pub route: RouteSpec,
    pub component: String,
    /// Only the Spin executor exists; the type rejects any other.
    #[serde(default, rename = "executor")]
    _executor: Option<Executor>,
}

/// `route = "/path"` or `route = { private = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSpec {
    Public(String),
    Private,
}

impl<'de> Deserialize<'de> for RouteSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Private {
            private: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Path(String),
            Private(Private),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a route string such as \"/api/...\" or `{ private = true }`",
            )
        })? {
            Raw::Path(path) => Ok(RouteSpec::Public(path)),
            Raw::Private(Private { private: true }) => Ok(RouteSpec::Private),
            Raw::Private(Private { private: false }) => Err(serde::de::Error::custom(
                "`{ private = false }` is not a route: give a path or `{ private = true }`",
            )),
        }
    }
}

/// Spin's HTTP executor: only the Spin (wasi:http) executor is supported,
/// `type = "http"` as Spin spells it, or its alias `"spin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum Executor {
    #[serde(alias = "spin")]
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub build: Option<BuildConfig>,
    /// Accepted for Spin compatibility: settings for other tools
    /// (`[component.<id>.tool.<tool>]`, e.g. `spin-test`).
    #[serde(default, rename = "tool")]
    _tool: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    pub command: String,
    #[serde(default)]
    pub workdir: Option<String>,
    /// For `spin watch`; `bazaar` has no watch mode.
    #[serde(default, rename = "watch")]
    _watch: Vec<String>,
}

impl Manifest {
    /// Reads and validates a manifest; every error names `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file = path.display();
        if raw.spin_manifest_version != 2 {
            bail!(
                "{file}: key `spin_manifest_version`: expected 2, found {}",
                raw.spin_manifest_version
            );
        }
        for (name, decl) in &raw.variables {
            validate_variable_name(name)
                .with_context(|| format!("{file}: key `variables.{name}`"))?;
            if decl.required == decl.default.is_some() {
                bail!("{file}: key `variables.{name}`: must be `required` OR have a `default`");
            }
        }
        for (id, component) in &raw.component {
            validate_component_id(id).with_context(|| format!("{file}: key `component.{id}`"))?;
            validate_component(&raw.variables, component)
                .with_context(|| format!("{file}: component `{id}`"))?;
        }
        for (index, trigger) in raw.trigger.http.iter().enumerate() {
            if !raw.component.contains_key(&trigger.component) {
                bail!(
                    "{file}: key `trigger.http[{index}].component`: no component named `{}` (expected one of: {})",
                    trigger.component,
                    raw.component.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            if let RouteSpec::Public(route) = &trigger.route
                && !route.starts_with('/')
            {
                bail!(
                    "{file}: key `trigger.http[{index}].route`: expected a path starting with `/`, found {route:?}"
                );
            }
        }
        let default_redis = raw.application.trigger.redis.as_ref().map(|r| &r.address);
        for (index, trigger) in raw.trigger.redis.iter().enumerate() {
            let key = format!("trigger.redis[{index}]");
            if !raw.component.contains_key(&trigger.component) {
                bail!(
                    "{file}: key `{key}.component`: no component named `{}`",
                    trigger.component
                );
            }
            let Some(address) = trigger.address.as_ref().or(default_redis) else {
                bail!(
                    "{file}: key `{key}.address`: no Redis address; set it here or in `[application.trigger.redis] address`"
                );
            };
            for (field, value) in [("address", address), ("channel", &trigger.channel)] {
                let template = Template::parse(value)
                    .with_context(|| format!("{file}: key `{key}.{field}`"))?;
                check_references(&template, &raw.variables)
                    .with_context(|| format!("{file}: key `{key}.{field}`"))?;
            }
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            application: raw.application,
            variables: raw.variables,
            http_triggers: raw.trigger.http,
            redis_triggers: raw.trigger.redis,
            components: raw.component,
        })
    }

    /// The components' ids, comma-separated, for messages that list what
    /// a name could have been.
    pub fn component_ids(&self) -> String {
        let ids: Vec<&str> = self.components.keys().map(String::as_str).collect();
        ids.join(", ")
    }

    /// Where a component's `.wasm` is, resolved against the manifest folder.
    pub fn source_path(&self, component: &Component) -> PathBuf {
        self.dir.join(&component.source)
    }
}

/// Fails if `template` refers to a variable the application does not
/// declare: no setting could give it a value.
fn check_references(template: &Template, declared: &BTreeMap<String, VariableDecl>) -> Result<()> {
    match template
        .references()
        .find(|name| !declared.contains_key(*name))
    {
        Some(name) => {
            bail!("refers to `{name}`, which is not declared in the application's `[variables]`")
        }
        None => Ok(()),
    }
}

fn validate_component(
    app_variables: &BTreeMap<String, VariableDecl>,
    component: &Component,
) -> Result<()> {
    for (name, value) in &component.variables {
        validate_variable_name(name).with_context(|| format!("key `variables.{name}`"))?;
        let template = Template::parse(value).with_context(|| format!("key `variables.{name}`"))?;
        check_references(&template, app_variables)
            .with_context(|| format!("key `variables.{name}`"))?;
    }
    for host in &component.allowed_outbound_hosts {
        // Entries with `{{ variable }}` are checked once resolved, at start-up.
        let template = Template::parse(host)
            .with_context(|| format!("key `allowed_outbound_hosts`: {host:?}"))?;
        check_references(&template, app_variables)
            .with_context(|| format!("key `allowed_outbound_hosts`: {host:?}"))?;
        if template.is_literal() {
            crate::app::allowed_hosts::AllowedHost::parse(host)
                .with_context(|| format!("key `allowed_outbound_hosts`: {host:?}"))?;
        }
    }
    for (key, labels) in [
        ("key_value_stores", &component.key_value_stores),
        ("sqlite_databases", &component.sqlite_databases),
    ] {
        for label in labels {
            validate_label(label).with_context(|| format!("key `{key}`: {label:?}"))?;
        }
    }
    Ok(())
}

/// Spin's rule for component ids (its `KebabId`): words joined by single
/// hyphens, each all lowercase or all UPPERCASE letters and digits (`:`
/// allowed inside a word), the first starting with a letter and the others
/// with a letter or a digit.
fn validate_component_id(id: &str) -> Result<()> {
    if id.contains('_') {
        bail!("expected a component id with words separated by `-`, not `_`");
    }
    for (index, word) in id.split('-').enumerate() {
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            bail!("expected a component id of non-empty words separated by single `-`");
        };
        if !(first.is_ascii_alphabetic() || (index > 0 && first.is_ascii_digit())) {
            bail!(
                "expected a component id whose first word starts with a letter, and others with a letter or a digit; {word:?} does not"
            );
        }
        let upper = first.is_ascii_uppercase();
        for c in chars {
            if !(c.is_ascii_digit() || c == ':' || c.is_ascii_alphabetic()) {
                bail!("expected a component id of letters, digits and `-`; found {c:?}");
            }
            if c.is_ascii_alphabetic() && c.is_ascii_uppercase() != upper {
                bail!(
                    "expected each word of a component id to be all lowercase or all UPPERCASE; {word:?} is not"
                );
            }
        }
    }
    Ok(())
}

/// Spin's rule for variable names: lowercase letters, digits and
/// underscores, starting with a letter (they map to `SPIN_VARIABLE_<NAME>`).
pub fn validate_variable_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let starts_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if starts_ok
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__")
    {
        Ok(())
    } else {
        bail!(
            "invalid variable name {name:?}: expected lowercase letters, digits and single underscores, starting with a letter"
        )
    }
}

/// Store and database labels are kebab-case or snake_case.
fn validate_label(label: &str) -> Result<()> {
    let word_ok = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_alphabetic())
            && w.chars().all(|c| c.is_ascii_alphanumeric())
    };
    let separator = if label.contains('_') { '_' } else { '-' };
    if label.split(separator).all(word_ok) {
        Ok(())
    } else {
        bail!("expected kebab-case or snake_case")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(Path::new("spin.toml"), text)
    }

    const MINIMAL: &str = r#"
spin_manifest_version = 2
[application]
name = "app"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "web.wasm"
"#;

    #[test]
    fn minimal_manifest_parses() {
        let m = parse(MINIMAL).unwrap();
        assert_eq!(m.http_triggers[0].route, RouteSpec::Public("/...".into()));
        assert_eq!(m.components["web"].source, "web.wasm");
    }

    #[test]
    fn bare_file_name_resolves_against_the_current_folder() {
        assert_eq!(parse(MINIMAL).unwrap().dir, PathBuf::from("."));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse(&MINIMAL.replace("source =", "sourc =")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("spin.toml"), "{msg}");
        assert!(msg.contains("unknown field `sourc`"), "{msg}");
        assert!(msg.contains("`source`"), "{msg}");
    }

    #[test]
    fn private_route_parses_and_false_is_rejected() {
        let m = parse(&MINIMAL.replace("route = \"/...\"", "route = { private = true }")).unwrap();
        assert_eq!(m.http_triggers[0].route, RouteSpec::Private);
        let err =
            parse(&MINIMAL.replace("route = \"/...\"", "route = { private = false }")).unwrap_err();
        assert!(format!("{err:#}").contains("private = false"));
    }

    #[test]
    fn trigger_must_name_a_component() {
        let err =
            parse(&MINIMAL.replace("component = \"web\"", "component = \"api\"")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("trigger.http[0].component"), "{msg}");
        assert!(msg.contains("`api`"), "{msg}");
    }

    #[test]
    fn component_variable_must_reference_declared_variable() {
        let text =
            format!("{MINIMAL}[component.web.variables]\ntoken = \"{{{{ secret_token }}}}\"\n");
        let msg = format!("{:#}", parse(&text).unwrap_err());
        assert!(msg.contains("secret_token"), "{msg}");
        assert!(msg.contains("not declared"), "{msg}");
    }

    #[test]
    fn allowed_hosts_must_reference_declared_variables() {
        let text = MINIMAL.replace(
            "source = \"web.wasm\"",
            "source = \"web.wasm\"\nallowed_outbound_hosts = [\"https://{{ api_host }}\"]",
        );
        let msg = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            msg.contains("component `web`")
                && msg.contains("key `allowed_outbound_hosts`")
                && msg.contains("refers to `api_host`, which is not declared"),
            "{msg}"
        );
    }

    #[test]
    fn spins_executor_spellings_targets_and_tool_tables_are_accepted() {
        for executor in ["http", "spin"] {
            let text = MINIMAL.replace(
                "component = \"web\"",
                &format!("component = \"web\"\nexecutor = {{ type = \"{executor}\" }}"),
            );
            parse(&text).unwrap_or_else(|e| panic!("{executor}: {e:#}"));
        }
        let text = MINIMAL.replace(
            "name = \"app\"",
            "name = \"app\"\ntargets = [\"spin-up:3.2\"]",
        ) + "[component.web.tool.spin-test]\nsource = \"tests.wasm\"\n";
        parse(&text).unwrap();
        let wagi = MINIMAL.replace(
            "component = \"web\"",
            "component = \"web\"\nexecutor = { type = \"wagi\" }",
        );
        assert!(parse(&wagi).is_err());
    }

    #[test]
    fn required_with_default_is_rejected() {
        for decl in ["{ required = true, default = \"a\" }", "{ secret = true }"] {
            let text = format!("{MINIMAL}[variables]\nx = {decl}\n");
            assert!(
                format!("{:#}", parse(&text).unwrap_err()).contains("variables.x"),
                "{decl}"
            );
        }
    }

    #[test]
    fn variables_may_carry_a_description() {
        let text = format!(
            "{MINIMAL}[variables]\nx = {{ default = \"a\", description = \"what x is for\" }}\n"
        );
        let m = parse(&text).unwrap();
        assert_eq!(m.variables["x"].default.as_deref(), Some("a"));
    }

    #[test]
    fn ids_and_names_follow_spin_rules() {
        for good in ["order-saga2", "api-2", "API-gateway", "v1:beta"] {
            assert!(validate_component_id(good).is_ok(), "{good}");
        }
        for bad in ["Order", "order_saga", "-x", "x--y", "2x", "", "a.b", "x-"] {
            assert!(validate_component_id(bad).is_err(), "{bad}");
        }
        assert!(validate_variable_name("jwt_secret").is_ok());
        for bad in ["JWT", "_x", "x__y", "x-y", "1x", ""] {
            assert!(validate_variable_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_labels_cannot_name_paths() {
        for good in ["default", "orders", "key-value", "sqlite_db", "v2"] {
            assert!(validate_label(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "../orders",
            "a/b",
            "/etc",
            "a.b",
            "a b",
            "_x",
            "x-",
            "2x",
        ] {
            assert!(validate_label(bad).is_err(), "{bad}");
        }
        let text = MINIMAL.replace(
            "[component.web]",
            "[component.web]\nsqlite_databases = [\"../orders\"]",
        );
        let msg = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            msg.contains("sqlite_databases") && msg.contains("\"../orders\""),
            "{msg}"
        );
    }

    #[test]
    fn redis_triggers_need_an_address_and_declared_variables() {
        let redis = "[[trigger.redis]]\nchannel = \"orders\"\ncomponent = \"web\"\n";
        let text = format!("{MINIMAL}{redis}");
        let msg = format!("{:#}", parse(&text).unwrap_err());
        assert!(msg.contains("trigger.redis[0].address"), "{msg}");

        let text = MINIMAL.replace(
            "name = \"app\"",
            "name = \"app\"\n[application.trigger.redis]\naddress = \"{{ redis_url }}\"",
        );
        let msg = format!("{:#}", parse(&format!("{text}{redis}")).unwrap_err());
        assert!(msg.contains("redis_url"), "{msg}");

        let text = format!("{text}[variables]\nredis_url = {{ required = true }}\n{redis}");
        let m = parse(&text).unwrap();
        assert_eq!(m.redis_triggers[0].channel, "orders");
        assert_eq!(
            m.application.trigger.redis.as_ref().unwrap().address,
            "{{ redis_url }}"
        );
    }

    #[test]
    fn wrong_version_is_rejected() {
        let err = parse(&MINIMAL.replace("= 2", "= 1")).unwrap_err();
        assert!(format!("{err:#}").contains("spin_manifest_version"));
    }
}
