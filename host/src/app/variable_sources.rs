//! Where variable values come from besides the process environment, as in
//! `spin up`: `--variable` flags (highest priority) and a `.env` file in the
//! current directory (after the process environment).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// The values `--variable` flags give, by variable name. Spin's four forms:
/// `KEY=VALUE`, `KEY=@FILE` (the file's text), `@FILE.json` and `@FILE.toml`
/// (string keys to string values). Later flags override earlier ones.
pub fn from_flags(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for flag in flags {
        if let Some(file) = flag.strip_prefix('@') {
            values
                .extend(from_file(Path::new(file)).with_context(|| format!("--variable {flag}"))?);
        } else if let Some((key, value)) = flag.split_once('=') {
            if key.is_empty() {
                bail!("--variable {flag}: the name before `=` is empty");
            }
            let value = match value.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("--variable {key}=@{file}: cannot read {file}"))?,
                None => value.to_string(),
            };
            values.insert(key.to_string(), value);
        } else {
            bail!("--variable {flag}: expected KEY=VALUE, KEY=@FILE, @FILE.json or @FILE.toml");
        }
    }
    Ok(values)
}

fn from_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: BTreeMap<String, serde_json::Value> = match path.extension().and_then(|e| e.to_str())
    {
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("{}: expected a JSON object", path.display()))?,
        Some("toml") => {
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{}: invalid TOML", path.display()))?;
            table
                .into_iter()
                .map(|(k, v)| Ok((k, serde_json::to_value(v)?)))
                .collect::<Result<_>>()?
        }
        _ => bail!("{}: expected a .json or .toml file", path.display()),
    };
    table
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            other => bail!(
                "{}: `{key}` must be a string, found {other}",
                path.display()
            ),
        })
        .collect()
}

/// The `.env` file's entries (`SPIN_VARIABLE_…=…` lines among others), or
/// none if there is no such file. A malformed file is an error naming it,
/// rather than variables silently missing.
pub fn dotenv(path: &Path) -> Result<BTreeMap<String, String>> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    dotenvy::from_path_iter(path)
        .and_then(|entries| entries.collect::<Result<BTreeMap<_, _>, _>>())
        .with_context(|| format!("{}: not a valid .env file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<BTreeMap<String, String>> {
        from_flags(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn spins_four_forms() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "s3cr3t").unwrap();
        let json = dir.path().join("vars.json");
        std::fs::write(&json, r#"{"a": "from json", "b": "json"}"#).unwrap();
        let toml = dir.path().join("vars.toml");
        std::fs::write(&toml, "b = \"from toml\"\n").unwrap();
        let values = flags(&[
            &format!("@{}", json.display()),
            &format!("@{}", toml.display()),
            &format!("token=@{}", secret.display()),
            "plain=x=y",
        ])
        .unwrap();
        assert_eq!(values["a"], "from json");
        assert_eq!(values["b"], "from toml", "later flags win");
        assert_eq!(values["token"], "s3cr3t");
        assert_eq!(values["plain"], "x=y", "only the first `=` separates");
    }

    #[test]
    fn mistakes_are_named() {
        let msg = format!("{:#}", flags(&["novalue"]).unwrap_err());
        assert!(msg.contains("expected KEY=VALUE"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("vars.json");
        std::fs::write(&json, r#"{"n": 3}"#).unwrap();
        let msg = format!(
            "{:#}",
            flags(&[&format!("@{}", json.display())]).unwrap_err()
        );
        assert!(msg.contains("`n` must be a string, found 3"), "{msg}");
        let msg = format!("{:#}", flags(&["@vars.yaml"]).unwrap_err());
        assert!(msg.contains("cannot read vars.yaml"), "{msg}");
    }

    #[test]
    fn dotenv_is_optional_but_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        assert!(dotenv(&path).unwrap().is_empty());
        std::fs::write(&path, "# comment\nSPIN_VARIABLE_GREETING=\"hi there\"\n").unwrap();
        assert_eq!(dotenv(&path).unwrap()["SPIN_VARIABLE_GREETING"], "hi there");
        std::fs::write(&path, "NOT VALID LINE\n").unwrap();
        let msg = format!("{:#}", dotenv(&path).unwrap_err());
        assert!(msg.contains("not a valid .env file"), "{msg}");
    }
}
