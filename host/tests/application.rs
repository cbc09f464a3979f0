//! Bazaar's own `spin.toml`, built with `bazaar build` and served with
//! `bazaar up`, as the README's quick start does.

mod common;

use std::process::Command;

#[tokio::test]
async fn the_application_builds_and_answers_health() {
    let root = common::workspace_root();
    let manifest = root.join("spin.toml");
    let build = Command::new(env!("CARGO_BIN_EXE_bazaar"))
        .args(["build", "--from"])
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&build.stdout);
    assert!(
        build.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    assert!(
        stdout.contains("Building component gateway with `cargo build"),
        "{stdout}"
    );

    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bazaar"));
    cmd.arg("up")
        .arg("--from")
        .arg(&manifest)
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .arg("--cache-dir")
        .arg(root.join("target/bazaar-test-cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let host = common::start(cmd);
    let response = reqwest::get(host.url("/health")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let response = reqwest::get(host.url("/no/such/page")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

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
