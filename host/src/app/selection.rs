//! Selective deployment: `bazaar up -c <component>` (repeatable) serves
//! only some of an application's components, with the rules of Spin's
//! `spin up -c` (Spin's `App::retain_components` and
//! `validate_service_chaining_for_components`), so that one `spin.toml`
//! runs whole on a laptop and one process per service elsewhere.
//!
//! - Every selected id must be a component of the application.
//! - A selected component may not chain (`http://<id>.spin.internal` in its
//!   `allowed_outbound_hosts`) to an unselected one, nor to every component
//!   (`*.spin.internal`): its calls would fail at request time. As in Spin,
//!   entries that are templates (`{{ products_url }}`) are not judged: their
//!   value is not known yet, which is how a split service names another by
//!   URL.
//! - Only the triggers of selected components are kept (HTTP routes, Redis
//!   subscriptions), and only components some kept trigger runs: nothing
//!   else is compiled, and no store only they use is opened.
//! - An application left with no trigger is refused.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeSet;

use crate::app::allowed_hosts::CHAINING_SUFFIX;
use crate::app::manifest::Manifest;

/// Keeps only the components `selected` names (all of them when it is
/// empty), and their triggers, or says why the selection cannot run.
pub fn retain_components(manifest: &mut Manifest, selected: &[String]) -> Result<()> {
    if selected.is_empty() {
        return Ok(());
    }
    // Spin's words for what follows.
    retain(manifest, selected)
        .context("failed to resolve application with only components selected with --component")
}

/// [`retain_components`] for a non-empty selection.
fn retain(manifest: &mut Manifest, selected: &[String]) -> Result<()> {
    for id in selected {
        if !manifest.components.contains_key(id) {
            bail!(
                "Specified component \"{id}\" not found in application {} (components: {})",
                manifest.path.display(),
                manifest.component_ids()
            );
        }
    }
    let selected: BTreeSet<&str> = selected.iter().map(String::as_str).collect();
    let triggered = manifest
        .http_triggers
        .iter()
        .map(|t| &t.component)
        .chain(manifest.redis_triggers.iter().map(|t| &t.component))
        .filter(|id| selected.contains(id.as_str()));
    for id in triggered {
        check_chaining(
            id,
            &manifest.components[id].allowed_outbound_hosts,
            &selected,
        )?;
    }
    manifest
        .http_triggers
        .retain(|t| selected.contains(t.component.as_str()));
    manifest
        .redis_triggers
        .retain(|t| selected.contains(t.component.as_str()));
    let kept: BTreeSet<String> = manifest
        .http_triggers
        .iter()
        .map(|t| t.component.clone())
        .chain(manifest.redis_triggers.iter().map(|t| t.component.clone()))
        .collect();
    manifest.components.retain(|id, _| kept.contains(id));
    if kept.is_empty() {
        bail!(
            "No triggers in app (no trigger of {} runs {})",
            manifest.path.display(),
            selected.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Spin's check of one selected component's chaining hosts, with its words.
fn check_chaining(id: &str, allowed: &[String], selected: &BTreeSet<&str>) -> Result<()> {
    for entry in allowed {
        let Some(target) = chaining_target(entry) else {
            continue;
        };
        if target == "*" {
            bail!(
                "Selected component '{id}' cannot use wildcard service chaining: \
                 allowed_outbound_hosts = [\"http://*{CHAINING_SUFFIX}\"]"
            );
        }
        if !selected.contains(target) {
            bail!(
                "Selected component '{id}' cannot use service chaining to unselected component: \
                 allowed_outbound_hosts = [\"http://{target}{CHAINING_SUFFIX}\"]"
            );
        }
    }
    Ok(())
}

/// The component an `allowed_outbound_hosts` entry chains to (`*` for
/// all), if it is a chaining host; `None` for anything else, templates
/// included (Spin cannot read them as a URI at load time either).
fn chaining_target(entry: &str) -> Option<&str> {
    if entry.contains("{{") {
        return None;
    }
    let rest = entry.split_once("://").map_or(entry, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit() || c == '*') => host,
        _ => authority,
    };
    host.strip_suffix(CHAINING_SUFFIX)
        .filter(|target| !target.is_empty() && !target.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "shop"
[application.trigger.redis]
address = "redis://127.0.0.1:6379"

[[trigger.http]]
route = "/..."
component = "gateway"
[[trigger.http]]
route = { private = true }
component = "products"
[[trigger.http]]
route = "/internal/users/..."
component = "users"
[[trigger.redis]]
channel = "steps"
component = "worker"

[component.gateway]
source = "gateway.wasm"
allowed_outbound_hosts = ["http://products.spin.internal", "{{ users_url }}"]
[component.products]
source = "products.wasm"
sqlite_databases = ["products"]
[component.users]
source = "users.wasm"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.worker]
source = "worker.wasm"
allowed_outbound_hosts = ["redis://127.0.0.1:6379", "http://self"]
[component.lonely]
source = "lonely.wasm"

[variables]
users_url = { default = "http://users.spin.internal" }
"#;

    fn manifest() -> Manifest {
        Manifest::parse(Path::new("spin.toml"), APP).unwrap()
    }

    fn ids(manifest: &Manifest) -> Vec<&str> {
        manifest.components.keys().map(String::as_str).collect()
    }

    fn select(ids: &[&str]) -> Result<Manifest> {
        let mut manifest = manifest();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        retain_components(&mut manifest, &ids).map(|()| manifest)
    }

    #[test]
    fn no_selection_keeps_everything() {
        let manifest = select(&[]).unwrap();
        assert_eq!(
            ids(&manifest),
            ["gateway", "lonely", "products", "users", "worker"]
        );
        assert_eq!(manifest.http_triggers.len(), 3);
    }

    #[test]
    fn keeps_the_selected_components_and_only_their_triggers() {
        let manifest = select(&["products"]).unwrap();
        assert_eq!(ids(&manifest), ["products"]);
        assert_eq!(manifest.http_triggers.len(), 1);
        assert!(manifest.redis_triggers.is_empty());

        let manifest = select(&["worker", "products", "gateway"]).unwrap();
        assert_eq!(ids(&manifest), ["gateway", "products", "worker"]);
        assert_eq!(manifest.http_triggers.len(), 2);
        assert_eq!(manifest.redis_triggers.len(), 1);
    }

    #[test]
    fn refuses_chaining_to_an_unselected_component_in_spins_words() {
        let error = select(&["gateway"]).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.starts_with(
                "failed to resolve application with only components selected with --component: "
            ),
            "{error}"
        );
        assert!(
            error.contains(
                "Selected component 'gateway' cannot use service chaining to unselected component: \
                 allowed_outbound_hosts = [\"http://products.spin.internal\"]"
            ),
            "{error}"
        );
    }

    #[test]
    fn refuses_wildcard_chaining() {
        let error = select(&["users"]).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains(
                "Selected component 'users' cannot use wildcard service chaining: \
                 allowed_outbound_hosts = [\"http://*.spin.internal\"]"
            ),
            "{error}"
        );
    }

    #[test]
    fn refuses_an_unknown_component_and_a_selection_with_no_trigger() {
        let error = select(&["products", "nope"]).unwrap_err();
        let error = format!("{error:#}");
        assert!(
            error.contains("Specified component \"nope\" not found in application"),
            "{error}"
        );
        let error = select(&["lonely"]).unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("No triggers in app"), "{error}");
    }

    #[test]
    fn reads_chaining_targets_as_spin_does() {
        assert_eq!(
            chaining_target("http://products.spin.internal"),
            Some("products")
        );
        assert_eq!(
            chaining_target("https://products.spin.internal:8080"),
            Some("products")
        );
        assert_eq!(
            chaining_target("http://products.spin.internal/path"),
            Some("products")
        );
        assert_eq!(chaining_target("http://*.spin.internal"), Some("*"));
        assert_eq!(chaining_target("products.spin.internal"), Some("products"));
        assert_eq!(chaining_target("http://{{ host }}.spin.internal"), None);
        assert_eq!(chaining_target("{{ products_url }}"), None);
        assert_eq!(chaining_target("http://self"), None);
        assert_eq!(chaining_target("http://spin.internal"), None);
        assert_eq!(chaining_target("redis://127.0.0.1:6379"), None);
    }
}
