//! `spin:variables/variables@3.0.0`: a component reads only the variables
//! its manifest entry declares, rendered from the application's variables
//! ([`crate::app::variables`]) at start-up.

use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::HasData;

use crate::app::manifest::validate_variable_name;
use crate::app::template::Template;
use crate::app::variables::AppVariables;
use crate::bindings::variables::{self, Error};

/// The resolved `variables` of one component: the only names it may `get`.
#[derive(Default)]
pub struct ComponentVariables {
    values: BTreeMap<String, String>,
}

impl ComponentVariables {
    pub fn resolve(app: &AppVariables, declared: &BTreeMap<String, String>) -> Result<Arc<Self>> {
        let mut values = BTreeMap::new();
        for (name, expression) in declared {
            let template = Template::parse(expression)?;
            let value = app
                .render(&template)
                .map_err(|e| anyhow::anyhow!("component variable `{name}`: {e}"))?;
            values.insert(name.clone(), value);
        }
        Ok(Arc::new(ComponentVariables { values }))
    }

    fn get(&self, name: &str) -> Result<String, Error> {
        if validate_variable_name(name).is_err() {
            return Err(Error::InvalidName(format!(
                "invalid variable name {name:?}"
            )));
        }
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Undefined(format!("no variable for {name:?}")))
    }
}

pub struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a ComponentVariables;
}

impl variables::Host for &ComponentVariables {}

impl<T> variables::HostWithStore<T> for Variables {
    async fn get(
        accessor: &wasmtime::component::Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, Error>> {
        Ok(accessor.with(|mut access| access.get().get(&name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::variables::tests::{manifest, none};

    #[test]
    fn component_get_distinguishes_invalid_and_undefined() {
        let m = manifest("a = { default = \"1\" }");
        let app = AppVariables::resolve(&m, |_| None, &none(), &none()).unwrap();
        let declared = BTreeMap::from([("x".to_string(), "v{{ a }}".to_string())]);
        let vars = ComponentVariables::resolve(&app, &declared).unwrap();
        assert_eq!(vars.get("x").unwrap(), "v1");
        assert!(matches!(vars.get("Bad-Name"), Err(Error::InvalidName(_))));
        assert!(matches!(vars.get("y"), Err(Error::Undefined(_))));
    }
}
