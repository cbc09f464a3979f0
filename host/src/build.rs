//! `bazaar build`: runs each component's `[component.<id>.build] command`,
//! as `spin build` does, in the component's `workdir` (default: the manifest
//! folder). Output streams straight through so a failing compiler's messages
//! are seen as they happen; the first failure stops the build.
//!
//! Before that, it adds the Rust targets the commands name (`--target
//! wasm32-wasip2`) when the toolchain lacks them: rustup installs a pinned
//! toolchain's `targets` only when it installs the toolchain itself, so a
//! machine that already had that toolchain would otherwise fail with "can't
//! find crate for `core`".

use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::app::manifest::{BuildConfig, Manifest};

pub fn build_all(manifest: &Manifest) -> Result<()> {
    ensure_targets(manifest)?;
    let mut built = 0;
    for (id, component) in &manifest.components {
        let Some(build) = &component.build else {
            println!("Component {id} has no build command: skipping");
            continue;
        };
        let workdir = workdir(manifest, build);
        println!("Building component {id} with `{}`", build.command);
        let status = Command::new("sh")
            .arg("-c")
            .arg(&build.command)
            .current_dir(&workdir)
            .status()
            .with_context(|| {
                format!(
                    "cannot run the build command of component `{id}` in {}",
                    workdir.display()
                )
            })?;
        if !status.success() {
            bail!(
                "build of component `{id}` failed: `{}` exited with {status} (its output is above)",
                build.command
            );
        }
        built += 1;
    }
    println!("Finished building all Spin components ({built} built)");
    Ok(())
}

/// Adds each `--target` the build commands name that the toolchain used in
/// their folder does not have yet.
fn ensure_targets(manifest: &Manifest) -> Result<()> {
    let mut wanted = BTreeSet::new();
    for component in manifest.components.values() {
        let Some(build) = &component.build else {
            continue;
        };
        let workdir = workdir(manifest, build);
        let mut words = build.command.split_whitespace();
        while let Some(word) = words.next() {
            let target = match word.strip_prefix("--target=") {
                Some(target) => Some(target),
                None if word == "--target" => words.next(),
                None => None,
            };
            if let Some(target) = target {
                wanted.insert((workdir.clone(), target.to_string()));
            }
        }
    }
    for (workdir, target) in wanted {
        if has_target(&workdir, &target) {
            continue;
        }
        println!("Adding the Rust target {target} (rustup target add {target})");
        let status = Command::new("rustup")
            .args(["target", "add", &target])
            .current_dir(&workdir)
            .status()
            .with_context(|| {
                format!("the build needs the Rust target {target}, and rustup could not be run to add it")
            })?;
        if !status.success() {
            bail!("`rustup target add {target}` failed with {status} (its output is above)");
        }
    }
    Ok(())
}

/// Whether the toolchain that `rustc` resolves to in `workdir` has the
/// standard library for `target`.
fn has_target(workdir: &Path, target: &str) -> bool {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(workdir)
        .output();
    match sysroot {
        Ok(out) if out.status.success() => {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib")
                .join(target)
                .exists()
        }
        // Without rustc the build commands will say what is wrong.
        _ => true,
    }
}

/// Where a build command runs: its `workdir`, else the manifest's folder.
fn workdir(manifest: &Manifest, build: &BuildConfig) -> PathBuf {
    match &build.workdir {
        Some(dir) => manifest.dir.join(dir),
        None => manifest.dir.clone(),
    }
}
