//! Helpers shared by the integration tests: locating the repo and the Docker engine.
//! A test that needs Docker calls [`require_docker`]; without an engine it fails loudly.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Root of the repository (where the workspace Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail the test with a clear message when no Docker engine answers.
pub fn require_docker() {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs a running Docker engine (run the README's test command, which starts dockerd): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this test needs the docker CLI and a running engine: {e}"),
    }
}

/// Fail the test with a clear message when the local engine is not an active swarm manager.
pub fn require_swarm_manager() {
    require_docker();
    let out = Command::new("docker")
        .args([
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ])
        .output()
        .expect("docker info");
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        s.trim(),
        "active true",
        "this test needs an active single-node swarm (docker swarm init --advertise-addr 127.0.0.1)"
    );
}

/// Run a command, panic with its output if it fails, return stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path of the built `reemo-bundle` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reemo-bundle"))
}

/// Store shared by the tests of one checkout (`target/test-store`): the static builds of
/// the default appliance are done once and reused; the store is safe for concurrent builds.
pub fn shared_store() -> PathBuf {
    repo_root().join("target").join("test-store")
}

/// sha256 hex of a file.
pub fn sha256_of(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Write a small appliance into `dir` (recipes/ and bundles/tiny.toml) that needs no cargo
/// build: a busybox image (from Debian's busybox-static) and a one-service stack.
/// Returns the bundle definition path.
pub fn write_tiny_appliance(dir: &std::path::Path, version: &str, motd: &str) -> PathBuf {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(recipes.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "this test needs /bin/busybox (Debian package busybox-static; the README's test command installs it)"
    );
    let w = |p: PathBuf, t: String| std::fs::write(p, t).unwrap();
    w(
        recipes.join("busybox.toml"),
        format!(
            "kind = \"fixed\"\npath = \"/bin/busybox\"\nsha256 = \"{}\"\n",
            sha256_of(busybox)
        ),
    );
    w(
        recipes.join("tiny-image.toml"),
        format!(
            r#"kind = "image"
repository = "reemo-test/tiny"
version = "{version}"

[[layer]]
entries = [
  {{ dest = "/bin/busybox", recipe = "busybox", mode = 0o755 }},
]

[[layer]]
entries = [
  {{ dest = "/etc/motd", text = "{motd}\n" }},
  {{ dest = "/tmp", dir = true, mode = 0o1777 }},
]

[config]
entrypoint = ["/bin/busybox"]
cmd = ["sleep", "3600"]
env = {{ TINY = "1" }}

[config.healthcheck]
test = ["CMD", "/bin/busybox", "true"]
interval = "1s"
timeout = "1s"
retries = 2
"#
        ),
    );
    w(
        recipes.join("tiny-stack.yml"),
        r#"version: "3.8"
services:
  app:
    image: ${image:tiny-image}
    configs:
      - source: app_config
        target: /etc/app.conf
configs:
  app_config:
    file: ../configs/app.conf
"#
        .to_string(),
    );
    w(
        recipes.join("files").join("app.conf"),
        format!("motd={motd}\n"),
    );
    w(
        recipes.join("tiny-stack.toml"),
        "kind = \"stack\"\ntemplate = \"tiny-stack.yml\"\n[configs]\n\"app.conf\" = \"files/app.conf\"\n"
            .to_string(),
    );
    let def = dir.join("bundles").join("tiny.toml");
    w(
        def.clone(),
        format!(
            "name = \"tiny\"\nversion = \"{version}\"\nstack_name = \"tiny\"\nstack = \"tiny-stack\"\nrecipes = [\"../recipes\"]\n[pinned]\nTINY = \"{version}\"\n"
        ),
    );
    def
}

/// Build the default appliance (bundles/relayws.toml) into the shared store and
/// `target/test-out`, once per checkout (later calls are cache hits). Returns the bundle path.
pub fn default_bundle() -> PathBuf {
    let out = repo_root().join("target").join("test-out");
    let o = Command::new(bin())
        .current_dir(repo_root())
        .args(["build", "bundles/relayws.toml", "--json", "--store"])
        .arg(shared_store())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running reemo-bundle build");
    assert!(
        o.status.success(),
        "building the default bundle failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("build --json output");
    PathBuf::from(v["bundle"].as_str().expect("bundle path"))
}

/// The docker CLI of the engine under test (Debian's, matching the daemon's API).
pub fn docker() -> Command {
    let path = format!(
        "/usr/sbin:/usr/bin:/sbin:/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("docker");
    c.env("PATH", path);
    c
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
