//! #26: `deploy/Dockerfile` built into a real image with podman, and run:
//! the whole application answers `/health` through the gateway, and the
//! same image serves one service alone (`-c products`) on its own route.
//!
//! No image registry is reachable here, so the Dockerfile takes what cargo
//! and `bazaar build` made (`ARTIFACTS=prebuilt`) on a Debian base made with
//! debootstrap from Debian's packages (kept as `localhost/bazaar-test-base`
//! for later runs). Skipped, saying so, where podman is not installed;
//! tests/run installs it.

use crate::common::{self, free_port};
use crate::harness;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BASE_IMAGE: &str = "localhost/bazaar-test-base:bookworm";

/// podman as this machine's sandbox allows it: runc (crun refuses the
/// mixed cgroups), cgroupfs, and no default ulimits (no CAP_SYS_RESOURCE).
struct Podman {
    config: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let config = tempfile::tempdir().unwrap();
        std::fs::write(
            config.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Podman { config }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env(
            "CONTAINERS_CONF",
            self.config.path().join("containers.conf"),
        )
        .args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
        cmd
    }

    /// Runs podman with `args`; its output, which must say success.
    fn run(&self, args: &[&str]) -> Output {
        let output = self.command().args(args).output().expect("run podman");
        assert!(
            output.status.success(),
            "podman {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs podman with `args` for cleaning up, whatever comes of it.
    fn tidy(&self, args: &[&str]) {
        let _ = self.command().args(args).output();
    }

    /// The Debian base image, made once: debootstrap's minimal bookworm,
    /// imported.
    fn base_image(&self) {
        let exists = self
            .command()
            .args(["image", "exists", BASE_IMAGE])
            .status()
            .expect("run podman");
        if exists.success() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let status = Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(root.path())
            .arg("http://deb.debian.org/debian")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run debootstrap");
        assert!(status.success(), "debootstrap failed");
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run tar");
        let imported = self
            .command()
            .args(["import", "-", BASE_IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("run podman import");
        assert!(tar.wait().expect("tar's status").success(), "tar failed");
        assert!(
            imported.status.success(),
            "{}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
}

/// A container removed when the test ends, however it ends.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.podman.tidy(&["rm", "--force", &self.name]);
    }
}

impl Container<'_> {
    fn logs(&self) -> String {
        let output = self.podman.run(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

/// A build context laid out as the repository, holding only what the
/// image takes: the bazaar binary this test suite runs, the manifest, the
/// runtime config and the components spin.toml names.
fn build_context(manifest: &Path) -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    let root = manifest.parent().unwrap();
    let copy = |from: &Path, to: &str| {
        let to = context.path().join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    copy(
        Path::new(env!("CARGO_BIN_EXE_bazaar")),
        "target/host/bazaar",
    );
    copy(manifest, "spin.toml");
    copy(&root.join("runtime-config.toml"), "runtime-config.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    let sources = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("source = \""))
        .filter_map(|l| l.strip_suffix('"'));
    for source in sources {
        copy(&root.join(source), source);
    }
    context
}

/// Polls `url` until it answers 200; its body.
async fn wait_for_200(url: &str, container: &Container<'_>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status() == 200
        {
            return response.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered 200:\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_container_image_serves_the_application_whole_and_split() {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!(
            "skipped: podman is not installed (tests/run installs it from Debian's packages)"
        );
        return;
    }
    let podman = Podman::new();
    podman.base_image();
    let manifest = harness::built_manifest();
    let context = build_context(&manifest);
    let image = format!("localhost/bazaar-test:{}", std::process::id());
    let dockerfile = common::workspace_root().join("deploy/Dockerfile");
    podman.run(&[
        "build",
        "--network=host",
        "--file",
        dockerfile.to_str().unwrap(),
        "--build-arg",
        "ARTIFACTS=prebuilt",
        "--build-arg",
        &format!("BASE={BASE_IMAGE}"),
        "--tag",
        &image,
        context.path().to_str().unwrap(),
    ]);
    let _image = ImageGuard {
        podman: &podman,
        image: image.clone(),
    };

    let start = |name: &str, args: &[&str]| -> (Container<'_>, String) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let name = format!("bazaar-test-{}-{name}", std::process::id());
        let mut run = vec!["run", "--detach", "--network=host", "--name", &name, &image];
        run.extend_from_slice(args);
        run.extend_from_slice(&["--listen", &listen]);
        podman.run(&run);
        (
            Container {
                podman: &podman,
                name: name.clone(),
            },
            format!("http://{listen}"),
        )
    };

    // The whole application, with `bazaar up`'s development defaults.
    let (whole, base) = start("whole", &[]);
    let health = wait_for_200(&format!("{base}/health"), &whole).await;
    assert_eq!(
        health,
        serde_json::json!({ "status": "ok", "services": { "users": "ok", "products": "ok", "orders": "ok", "payments": "ok" } })
    );

    // One service alone: its own route answers, the gateway's are absent.
    let (products, base) = start("products", &["-c", "products"]);
    let health = wait_for_200(&format!("{base}/services/products/health"), &products).await;
    assert_eq!(health["service"], "products", "{health}");
    let gateway = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(gateway.status(), 404);
}

/// The test's image, removed when it ends.
struct ImageGuard<'a> {
    podman: &'a Podman,
    image: String,
}

impl Drop for ImageGuard<'_> {
    fn drop(&mut self) {
        self.podman.tidy(&["rmi", "--force", &self.image]);
        // The build's stages left untagged images behind.
        self.podman.tidy(&["image", "prune", "--force"]);
    }
}
