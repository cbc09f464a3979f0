//! `bazaar build`. (Building Bazaar's own `spin.toml` is exercised by the
//! end-to-end suite, `tests/e2e`, before it serves the application.)

mod common;

use std::process::Command;

#[test]
fn a_failing_build_names_the_component() {
    let app = common::AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "broken"
[component.broken]
source = "broken.wasm"
[component.broken.build]
command = "echo compiler says no >&2; exit 3"
"#,
    );
    let output = Command::new(env!("CARGO_BIN_EXE_bazaar"))
        .args(["build", "--from"])
        .arg(app.path().join("spin.toml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("compiler says no"), "{stderr}");
    assert!(
        stderr.contains("build of component `broken` failed"),
        "{stderr}"
    );
}
