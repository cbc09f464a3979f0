//! Property tests of the parsers a user's files go through (#9 item 7):
//! the manifest, the runtime configuration, variable templates and
//! `allowed_outbound_hosts` entries. Whatever the input, they return a
//! value or an error naming the file (and key): never a panic. Inputs are
//! random text and random edits of the real spin.toml and runtime configs,
//! so the mutations reach deep into valid structure. `PROPTEST_CASES` sets
//! how many cases each property tries (256 by default, a few seconds).

use proptest::prelude::*;
use std::path::Path;

use crate::app::allowed_hosts::AllowedHost;
use crate::app::manifest::Manifest;
use crate::app::runtime_config::{RuntimeConfig, RuntimeConfigFile};
use crate::app::template::Template;

const SPIN_TOML: &str = include_str!("../../../spin.toml");
const RUNTIME_CONFIG: &str = include_str!("../../../runtime-config.toml");
const SPINKUBE_RUNTIME_CONFIG: &str = include_str!("../../../deploy/spinkube/runtime-config.toml");

/// One edit of a text: delete, insert or replace a run of characters.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Fragments that matter to TOML and to Spin's syntax.
    let fragment = prop_oneof![
        any::<String>(),
        Just("{{ ".to_string()),
        Just(" }}".to_string()),
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("]]\n[[".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("*://*:*".to_string()),
        Just("/...".to_string()),
        Just("\u{0}".to_string()),
        "[a-z_.]{1,12} = \"[^\"]{0,20}\"\n",
    ];
    prop_oneof![
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), fragment.clone()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), 1..16usize, fragment).prop_map(|(at, n, s)| Edit::Replace(at, n, s)),
    ]
}

/// `text` after `edits`, positions taken modulo its length (on char
/// boundaries, so the result stays a string).
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let at = |i: usize| {
            if chars.is_empty() {
                0
            } else {
                i % (chars.len() + 1)
            }
        };
        match edit {
            Edit::Delete(i, n) => {
                let start = at(*i);
                let end = (start + n).min(chars.len());
                chars.drain(start..end);
            }
            Edit::Insert(i, s) => {
                let start = at(*i);
                chars.splice(start..start, s.chars());
            }
            Edit::Replace(i, n, s) => {
                let start = at(*i);
                let end = (start + n).min(chars.len());
                chars.splice(start..end, s.chars());
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #[test]
    fn manifests_parse_or_say_which_file(edits in prop::collection::vec(edit(), 1..6)) {
        let text = apply(SPIN_TOML, &edits);
        if let Err(error) = Manifest::parse(Path::new("fuzzed/spin.toml"), &text) {
            let message = format!("{error:#}");
            prop_assert!(message.contains("fuzzed/spin.toml"), "{message}");
        }
    }

    #[test]
    fn arbitrary_text_is_no_manifest_and_no_panic(text in any::<String>()) {
        prop_assert!(Manifest::parse(Path::new("any.toml"), &text).is_err());
    }

    #[test]
    fn runtime_configs_parse_or_say_which_file(
        base in prop_oneof![Just(RUNTIME_CONFIG), Just(SPINKUBE_RUNTIME_CONFIG)],
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let text = apply(base, &edits);
        let parsed = RuntimeConfigFile::parse(Path::new("fuzzed/runtime-config.toml"), &text)
            .and_then(|file| RuntimeConfig::resolve_in(&file, Path::new("/state"), Path::new("/cwd")));
        if let Err(error) = parsed {
            let message = format!("{error:#}");
            prop_assert!(message.contains("fuzzed/runtime-config.toml"), "{message}");
        }
    }

    #[test]
    fn templates_parse_and_render_without_panicking(
        text in prop_oneof![any::<String>(), "[a-z{} _]{0,40}"],
    ) {
        if let Ok(template) = Template::parse(&text) {
            let rendered = template.render(|name| Ok(format!("<{name}>")));
            prop_assert!(rendered.is_ok());
            if template.is_literal() {
                prop_assert_eq!(rendered.unwrap(), text);
            }
        }
    }

    #[test]
    fn allowed_hosts_parse_and_match_without_panicking(
        entry in prop_oneof![
            any::<String>(),
            "(\\*|https?|redis|[a-z]{1,6})://(\\*|\\[[0-9a-f:/]{0,12}\\]|[0-9./]{1,18}|[a-z*.]{1,20})(:[0-9*.]{0,12})?/?",
        ],
        scheme in "[a-z]{1,6}",
        host in prop_oneof![any::<String>(), "\\[[0-9a-f:]{2,12}\\]", "[0-9.]{1,15}", "[a-z.]{1,20}"],
        port in any::<Option<u16>>(),
    ) {
        if let Ok(allowed) = AllowedHost::parse(&entry) {
            let _ = allowed.allows(&scheme, &host, port);
        }
    }
}
