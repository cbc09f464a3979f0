//! Spin's variable expressions: literal text with `{{ name }}` references to
//! application variables, as used in component `variables`, Redis trigger
//! addresses and `allowed_outbound_hosts`.

use anyhow::{Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Reference(String),
}

/// A parsed expression, resolved later against the variable providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                bail!("unterminated `{{{{` in {text:?}");
            };
            let name = after[..end].trim();
            crate::app::manifest::validate_variable_name(name)?;
            parts.push(Part::Reference(name.to_string()));
            rest = &after[end + 2..];
        }
        // A `}}` outside an expression is text, as in Spin (JSON in a
        // variable's value, say).
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template(parts))
    }

    /// The application variables this expression needs.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|part| match part {
            Part::Reference(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    pub fn is_literal(&self) -> bool {
        self.references().next().is_none()
    }

    /// Substitutes each reference with `lookup(name)`.
    pub fn render(&self, mut lookup: impl FnMut(&str) -> Result<String>) -> Result<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Reference(name) => out.push_str(&lookup(name)?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_mixed_text() {
        let t = Template::parse("redis://{{ host }}:{{port}}/0").unwrap();
        assert_eq!(t.references().collect::<Vec<_>>(), ["host", "port"]);
        let out = t
            .render(|n| {
                Ok(if n == "host" {
                    "db".into()
                } else {
                    "6379".into()
                })
            })
            .unwrap();
        assert_eq!(out, "redis://db:6379/0");
    }

    #[test]
    fn literal_has_no_references() {
        assert!(Template::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn rejects_malformed_expressions() {
        for bad in ["{{ x", "{{ Bad }}", "{{}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn closing_braces_alone_are_text() {
        let t = Template::parse(r#"{"a":{"b":{{ x }}}}"#).unwrap();
        assert_eq!(t.references().collect::<Vec<_>>(), ["x"]);
        assert_eq!(t.render(|_| Ok("1".into())).unwrap(), r#"{"a":{"b":1}}"#);
        assert!(Template::parse("x }}").unwrap().is_literal());
    }
}
