//! Application variables: Spin's providers consulted in Spin's order — the
//! `env` lookup (`--variable` flags, `SPIN_VARIABLE_<NAME>`, then `.env`; see
//! `variable_sources`), then `bazaar up`'s own flags, then the manifest
//! `default`. Everything is resolved at start-up, so a missing
//! required variable stops `bazaar up` with a clear message instead of
//! failing a request later. Values of `secret` variables are never formatted
//! into logs or errors.

use anyhow::{Result, bail};
use std::collections::BTreeMap;

use crate::app::manifest::Manifest;
use crate::app::template::Template;

/// Resolved application variables.
pub struct AppVariables {
    values: BTreeMap<String, String>,
    /// Variables whose value came from a fallback, for a warning.
    from_fallback: Vec<String>,
}

impl AppVariables {
    /// Resolves every declared variable: from `env` (normally the process
    /// environment), then `overrides`, then the manifest default, then
    /// `fallbacks` (which also replace an empty value).
    pub fn resolve(
        manifest: &Manifest,
        env: impl Fn(&str) -> Option<String>,
        overrides: &BTreeMap<String, String>,
        fallbacks: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        let mut from_fallback = Vec::new();
        for (name, decl) in &manifest.variables {
            let env_name = env_var_name(name);
            let configured = env(&env_name)
                .or_else(|| overrides.get(name).cloned())
                .or_else(|| decl.default.clone());
            // An empty value takes a fallback too: a secret that the
            // manifest leaves empty (see spin.toml) is one nobody set.
            let configured = configured.filter(|v| !v.is_empty() || !fallbacks.contains_key(name));
            let value = configured.or_else(|| {
                let fallback = fallbacks.get(name).cloned();
                if fallback.is_some() {
                    from_fallback.push(name.clone());
                }
                fallback
            });
            match value {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None if decl.required => missing.push(format!("`{name}` (set {env_name})")),
                None => {}
            }
        }
        if !missing.is_empty() {
            bail!(
                "{}: required variables have no value: {}",
                manifest.path.display(),
                missing.join(", ")
            );
        }
        Ok(AppVariables {
            values,
            from_fallback,
        })
    }

    /// The variables that got a fallback value rather than a configured one.
    pub fn fallbacks_used(&self) -> &[String] {
        &self.from_fallback
    }

    /// Renders an expression such as `"redis://{{ host }}:6379"`.
    pub fn render(&self, template: &Template) -> Result<String> {
        template.render(|name| match self.values.get(name) {
            Some(value) => Ok(value.clone()),
            None => bail!(
                "variable `{name}` has no value: give it a `default` or set {}",
                env_var_name(name)
            ),
        })
    }
}

/// Spin's environment provider name for a variable.
pub fn env_var_name(name: &str) -> String {
    format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A manifest declaring `vars` (lines of its `[variables]` table).
    pub(crate) fn manifest(vars: &str) -> Manifest {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"a\"\n[variables]\n{vars}\n"
        );
        Manifest::parse(Path::new("spin.toml"), &text).unwrap()
    }

    #[test]
    fn environment_overrides_default() {
        let m = manifest("greeting = { default = \"hi\" }");
        let defaults = AppVariables::resolve(&m, |_| None, &none(), &none()).unwrap();
        let t = Template::parse("{{ greeting }}").unwrap();
        assert_eq!(defaults.render(&t).unwrap(), "hi");
        let env = AppVariables::resolve(
            &m,
            |k| (k == "SPIN_VARIABLE_GREETING").then(|| "hello".to_string()),
            &none(),
            &none(),
        )
        .unwrap();
        assert_eq!(env.render(&t).unwrap(), "hello");
    }

    pub(crate) fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn overrides_rank_after_environment_and_fallbacks_last() {
        let m = manifest("url = { required = true }\nmode = { default = \"d\" }");
        let over = BTreeMap::from([("mode".to_string(), "o".to_string())]);
        let fall = BTreeMap::from([
            ("url".to_string(), "f".to_string()),
            ("mode".to_string(), "x".to_string()),
        ]);
        let vars = AppVariables::resolve(&m, |_| None, &over, &fall).unwrap();
        assert_eq!(vars.fallbacks_used(), ["url"]);
        let get = |n: &str| {
            vars.render(&Template::parse(&format!("{{{{ {n} }}}}")).unwrap())
                .unwrap()
        };
        assert_eq!(
            (get("url"), get("mode")),
            ("f".to_string(), "o".to_string())
        );
        let env = |k: &str| (k == "SPIN_VARIABLE_MODE").then(|| "e".to_string());
        let vars = AppVariables::resolve(&m, env, &over, &fall).unwrap();
        assert_eq!(
            vars.render(&Template::parse("{{ mode }}").unwrap())
                .unwrap(),
            "e"
        );
    }

    /// A secret the manifest leaves empty takes its development fallback,
    /// unless something sets it; with no fallback it stays empty.
    #[test]
    fn an_empty_value_takes_a_fallback() {
        let m = manifest("key = { default = \"\", secret = true }\nother = { default = \"\" }");
        let fall = BTreeMap::from([("key".to_string(), "dev".to_string())]);
        let vars = AppVariables::resolve(&m, |_| None, &none(), &fall).unwrap();
        assert_eq!(vars.fallbacks_used(), ["key"]);
        let get = |vars: &AppVariables, n: &str| {
            vars.render(&Template::parse(&format!("{{{{ {n} }}}}")).unwrap())
                .unwrap()
        };
        assert_eq!(
            (get(&vars, "key"), get(&vars, "other")),
            ("dev".into(), String::new())
        );
        let env = |k: &str| (k == "SPIN_VARIABLE_KEY").then(|| "set".to_string());
        let vars = AppVariables::resolve(&m, env, &none(), &fall).unwrap();
        assert_eq!(get(&vars, "key"), "set");
        assert!(vars.fallbacks_used().is_empty());
    }

    #[test]
    fn missing_required_names_the_environment_variable() {
        let m = manifest("api_key = { required = true, secret = true }");
        let msg = format!(
            "{:#}",
            AppVariables::resolve(&m, |_| None, &none(), &none())
                .err()
                .unwrap()
        );
        assert!(msg.contains("SPIN_VARIABLE_API_KEY"), "{msg}");
    }
}
