//! `bazaar build`: runs each component's `[component.<id>.build] command`,
//! as `spin build` does, in the component's `workdir` (default: the manifest
//! folder). Output streams straight through so a failing compiler's messages
//! are seen as they happen; the first failure stops the build.

use anyhow::{Context, Result, bail};
use std::process::Command;

use crate::manifest::Manifest;

pub fn build_all(manifest: &Manifest) -> Result<()> {
    let mut built = 0;
    for (id, component) in &manifest.components {
        let Some(build) = &component.build else {
            println!("Component {id} has no build command: skipping");
            continue;
        };
        let workdir = match &build.workdir {
            Some(dir) => manifest.dir.join(dir),
            None => manifest.dir.clone(),
        };
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
