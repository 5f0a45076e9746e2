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
        .args(["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"])
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
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
