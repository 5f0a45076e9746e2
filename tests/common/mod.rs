//! Helpers shared by the integration tests: locating the repo and the Docker engine.
//! A test that needs Docker calls [`require_docker`]; without an engine it fails loudly.
#![allow(dead_code)]

pub mod appliance;
pub mod browser;
pub mod debian;
pub mod infra;
pub mod matrix;
pub mod multinode;
pub mod nodes;
pub mod standin;

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
# PID 1 ignores SIGTERM unless it traps it: without the trap every stop takes the grace period
cmd = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
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

/// [`write_tiny_appliance`] deployed as stack `stack`, with `stack_yml` (a compose template
/// using `${image:tiny-image}` and config `app_config`) as its stack file when given.
pub fn tiny_appliance_on(
    dir: &std::path::Path,
    version: &str,
    motd: &str,
    stack: &str,
    stack_yml: Option<&str>,
) -> PathBuf {
    let def = write_tiny_appliance(dir, version, motd);
    let text = std::fs::read_to_string(&def).unwrap().replace(
        "stack_name = \"tiny\"",
        &format!("stack_name = \"{stack}\""),
    );
    std::fs::write(&def, text).unwrap();
    if let Some(yml) = stack_yml {
        std::fs::write(dir.join("recipes/tiny-stack.yml"), yml).unwrap();
    }
    def
}

/// Build the default appliance (bundles/relayws.toml) into the shared store and
/// `target/test-out`, once per checkout (later calls are cache hits). Returns the bundle path.
pub fn default_bundle() -> PathBuf {
    let out = repo_root().join("target").join("test-out");
    // the .debs of its haproxy image (the build itself is offline)
    fetch_haproxy();
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

/// A free TCP port below the ephemeral range (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different free TCP ports below the kernel's ephemeral range (each held until all
/// are chosen, so none is handed out twice). A published port is bound again by every task
/// restart; one from the ephemeral range can meanwhile be taken by any outgoing connection
/// on the machine (other tests open thousands), and the task then fails to start.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use rand::Rng;
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_001));
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        if held.len() == N {
            break;
        }
        let port = rng.gen_range(low..high);
        if let Ok(l) = std::net::TcpListener::bind(("0.0.0.0", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "no {N} free ports in {low}..{high}");
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Loader tests: the `reemo-bundle` binary with its state directory set.
pub fn loader(state_dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.env("REEMO_BUNDLE_STATE_DIR", state_dir)
        .env_remove("REEMO_BUNDLE_FAULT")
        .env_remove("DOCKER_HOST");
    c
}

/// Loader tests: write and build a variant of the relay appliance in `dir`: its own stack
/// name, published port and version, and `relay.toml` passed through `edit_config`.
/// Only `ws-relay-server` is shipped under bin/ (the loader binary is not needed).
pub fn build_relay_variant(
    dir: &std::path::Path,
    stack: &str,
    port: u16,
    version: &str,
    edit_config: impl Fn(String) -> String,
) -> PathBuf {
    build_relay_variant_with(dir, stack, port, version, edit_config, |s| s)
}

/// [`build_relay_variant`], with the stack template also passed through `edit_stack`.
pub fn build_relay_variant_with(
    dir: &std::path::Path,
    stack: &str,
    port: u16,
    version: &str,
    edit_config: impl Fn(String) -> String,
    edit_stack: impl Fn(String) -> String,
) -> PathBuf {
    let root = repo_root();
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(recipes.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let template = std::fs::read_to_string(root.join("tests/fixtures/relay-stack.yml"))
        .unwrap()
        .replace("published: ${RELAY_PORT}", &format!("published: {port}"))
        .replace("${RELAY_MAX_CONNECTIONS}", "\"100000\"");
    std::fs::write(
        recipes.join(format!("{stack}-stack.yml")),
        edit_stack(template),
    )
    .unwrap();
    let config = std::fs::read_to_string(root.join("tests/fixtures/relay.toml")).unwrap();
    std::fs::write(recipes.join("files/relay.toml"), edit_config(config)).unwrap();
    // the site parameters naming the relay's certificate stay parameters (their defaults
    // are localhost and 127.0.0.1; a test may `--set` them)
    let shipped = std::fs::read_to_string(root.join("tests/fixtures/relay-stack.toml")).unwrap();
    let public = &shipped[shipped
        .find("[parameters.PUBLIC_HOST]")
        .expect("the fixture declares PUBLIC_HOST")..];
    std::fs::write(
        recipes.join(format!("{stack}-stack.toml")),
        format!(
            "kind = \"stack\"\ntemplate = \"{stack}-stack.yml\"\n[configs]\n\"relay.toml\" = \"files/relay.toml\"\n{public}"
        ),
    )
    .unwrap();
    let def = dir.join("bundles").join(format!("{stack}-{version}.toml"));
    std::fs::write(
        &def,
        format!(
            "name = \"relayws\"\nversion = \"{version}\"\nstack_name = \"{stack}\"\nstack = \"{stack}-stack\"\nrecipes = [\"../recipes\", {:?}]\n[binaries]\nws-relay-server = \"relay-bin\"\n[pinned]\nDOCKER_VERSION_WS_RELAY_SERVER = \"{version}\"\n",
            root.join("recipes").display().to_string()
        ),
    )
    .unwrap();
    build_def(&def, &dir.join("out"))
}

/// A shipped definition (`bundles/NAME.toml`, stack name `shipped_stack`) copied into
/// `dir/bundles` with stack name `stack`, its recipes taken from the repository, `edit`
/// applied to the text. Returns the copy's path.
pub fn shipped_def(
    dir: &std::path::Path,
    name: &str,
    shipped_stack: &str,
    stack: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let shipped =
        std::fs::read_to_string(repo_root().join(format!("bundles/{name}.toml"))).unwrap();
    let text = edit(
        shipped
            .replace(
                &format!("stack_name = \"{shipped_stack}\""),
                &format!("stack_name = \"{stack}\""),
            )
            .replace(
                "recipes = [\"../recipes\"]",
                &format!(
                    "recipes = [{:?}]",
                    repo_root().join("recipes").display().to_string()
                ),
            ),
    );
    assert!(
        text.contains(&format!("stack_name = \"{stack}\"")) && !text.contains("\"../recipes\""),
        "{text}"
    );
    let def = dir.join(format!("bundles/{name}.toml"));
    std::fs::write(&def, text).unwrap();
    def
}

/// Loader tests: build a bundle definition into `out` with the shared store.
pub fn build_def(def: &std::path::Path, out: &std::path::Path) -> PathBuf {
    let o = Command::new(bin())
        .args(["build", "--json", "--store"])
        .arg(shared_store())
        .arg("--out")
        .arg(out)
        .arg(def)
        .output()
        .expect("running reemo-bundle build");
    assert!(
        o.status.success(),
        "building {} failed:\n{}",
        def.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("build --json output");
    PathBuf::from(v["bundle"].as_str().expect("bundle path"))
}

/// Loader tests: one stack on the real swarm, with its own temp dir, state directory and
/// published port. Creating it requires a swarm manager and removes leftovers of the stack;
/// dropping it removes the stack again, also when the test panics.
pub struct StackFixture {
    /// Stack name.
    pub stack: &'static str,
    /// Temp dir holding the bundles and the state directory.
    pub tmp: tempfile::TempDir,
    /// Host state directory (`--state-dir`).
    pub state: PathBuf,
    /// Free port the variants publish.
    pub port: u16,
}

impl StackFixture {
    pub fn new(stack: &'static str) -> StackFixture {
        require_swarm_manager();
        remove_stack(stack);
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        StackFixture {
            stack,
            tmp,
            state,
            port: free_port(),
        }
    }

    /// Path inside the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Build a relay variant `name` of this stack and port (see [`build_relay_variant`]).
    pub fn relay_variant(
        &self,
        name: &str,
        version: &str,
        edit_config: impl Fn(String) -> String,
    ) -> PathBuf {
        build_relay_variant(
            &self.path(name),
            self.stack,
            self.port,
            version,
            edit_config,
        )
    }

    /// The loader on this fixture's state directory.
    pub fn loader(&self) -> Command {
        loader(&self.state)
    }
}

impl Drop for StackFixture {
    fn drop(&mut self) {
        // no panic here: dropping during a test's panic would abort the process
        if !try_remove_stack(self.stack) {
            eprintln!("stack {} is still there after 60 s", self.stack);
        }
    }
}

/// Loader tests: extract `bin/ws-relay-server` from a bundle into `dir`.
pub fn extract_relay(bundle: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(dir)
            .arg("bin/ws-relay-server"),
    );
    dir.join("bin/ws-relay-server")
}

/// Loader tests: run the relay's end-to-end probe against a published port; returns its
/// JSON line or the failure output.
pub fn relay_probe(
    relay: &std::path::Path,
    port: u16,
    state_dir: &std::path::Path,
) -> Result<String, String> {
    relay_probe_at(relay, "127.0.0.1", port, state_dir)
}

/// [`relay_probe`] against `ip:port`.
pub fn relay_probe_at(
    relay: &std::path::Path,
    ip: &str,
    port: u16,
    state_dir: &std::path::Path,
) -> Result<String, String> {
    // the relay serves TLS with a certificate of the host's internal CA: verified with it
    let o = Command::new(relay)
        .args(["probe", "--url", &format!("https://{ip}:{port}")])
        .arg("--ca-file")
        .arg(state_dir.join("pki/ca.pem"))
        .arg("--control-secret-file")
        .arg(state_dir.join("secrets/relay_control_secret"))
        .args(["--wait-secs", "20", "--messages", "3"])
        .output()
        .expect("running ws-relay-server probe");
    probe_outcome(&o)
}

/// What a `ws-relay-server probe` run said: its JSON line when it succeeded, else its
/// output.
pub fn probe_outcome(o: &std::process::Output) -> Result<String, String> {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() && out.contains("\"ok\":true") {
        Ok(out)
    } else {
        Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// Loader tests: remove a stack and wait until its services, configs, secrets and network
/// are gone (so that the next test run starts clean).
pub fn remove_stack(stack: &str) {
    assert!(
        try_remove_stack(stack),
        "stack {stack} is still there after 60 s of `docker stack rm`"
    );
}

/// [`remove_stack`]; false when the stack is still there after 60 s.
pub fn try_remove_stack(stack: &str) -> bool {
    try_remove_stack_on(&docker, &[&docker], stack)
}

/// [`try_remove_stack`] on a swarm of several engines: `manager` makes the docker CLI of a
/// manager, `engines` that of every node (whose task containers must be gone too).
pub fn try_remove_stack_on(
    manager: &dyn Fn() -> Command,
    engines: &[&dyn Fn() -> Command],
    stack: &str,
) -> bool {
    // `<kind> ls -q` of the objects carrying the stack's namespace label
    let ls = |docker: &dyn Fn() -> Command, kind: &[&str]| {
        docker()
            .args(kind)
            .args(["-q", "--filter"])
            .arg(format!("label=com.docker.stack.namespace={stack}"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let _ = manager().args(["stack", "rm", stack]).output();
    for _ in 0..120 {
        // a running task container outlives its service for a moment (and holds its host
        // port); exited job containers may stay (Swarm leaves them), they hold nothing
        let mut left = vec![
            ls(manager, &["network", "ls"]),
            ls(manager, &["service", "ls"]),
        ];
        left.extend(engines.iter().map(|e| ls(*e, &["ps"])));
        if left.iter().all(String::is_empty) {
            return true;
        }
        let _ = manager().args(["stack", "rm", stack]).output();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    false
}

/// The image a service's spec runs (`sha256:…` for the loader's services).
pub fn service_image(service: &str) -> String {
    run_ok(docker().args([
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        service,
    ]))
    .trim()
    .to_string()
}

/// Run a command that must fail with exit code 1, its error printed once; returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{cmd:?} should fail with exit 1: {err}"
    );
    assert_eq!(
        err.matches("error:").count(),
        1,
        "the error is printed once: {err}"
    );
    err
}

/// `reemo-bundle ARGS…`.
pub fn bin_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    c
}

/// `reemo-bundle keygen --out PATH`; returns the key id it prints.
pub fn keygen(path: &std::path::Path) -> String {
    let out = run_ok(bin_cmd(&["keygen", "--out"]).arg(path));
    out.lines()
        .next()
        .and_then(|l| l.strip_prefix("key id "))
        .unwrap_or_else(|| panic!("keygen output: {out}"))
        .to_string()
}

/// Loader tests: JSON output of a successful loader command.
pub fn loader_json(cmd: &mut Command) -> serde_json::Value {
    let out = run_ok(cmd.arg("--json"));
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?}: bad JSON ({e}): {out}"));
    assert_eq!(
        v["format"], 1,
        "{cmd:?}: every --json output has \"format\": 1: {out}"
    );
    v
}

/// Fail unless `pyspdxtools` (PyPI `spdx-tools`, installed by scripts/test.sh) is there.
pub fn require_pyspdxtools() {
    let tool = Command::new("pyspdxtools").arg("--help").output();
    assert!(
        tool.is_ok_and(|o| o.status.success()),
        "this test needs pyspdxtools (`pip install spdx-tools`; scripts/test.sh installs it)"
    );
}

/// Validate an SPDX document with `pyspdxtools`; fails the test with its output if invalid.
pub fn assert_valid_spdx(file: &std::path::Path) {
    let o = Command::new("pyspdxtools")
        .arg("-i")
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "pyspdxtools rejected the SBOM: {text}");
    assert!(!text.to_lowercase().contains("invalid"), "{text}");
}

/// A self-signed ECDSA P-256 certificate made by openssl: `cert` and its `key` (PKCS#8), for
/// `subj` (`/CN=…`), valid `days`, with `extra` arguments (e.g. `-addext …`).
pub fn openssl_self_signed(
    cert: &std::path::Path,
    key: &std::path::Path,
    subj: &str,
    days: u32,
    extra: &[&str],
) {
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .arg("-nodes")
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .args(["-days", &days.to_string(), "-subj", subj])
        .args(extra)
        .output()
        .expect("running openssl (the test script installs it)");
    assert!(
        o.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fetch the .debs the shipped haproxy recipe's lock names into the shared test store.
pub fn fetch_haproxy() {
    fetch_debian(&repo_root().join("recipes/haproxy.toml"));
}

/// `reemo-bundle fetch TARGET` into the shared store: the `.deb`s of a Debian image recipe,
/// or of every Debian image a definition uses.
pub fn fetch_debian(target: &std::path::Path) {
    run_ok(
        Command::new(bin())
            .arg("fetch")
            .arg(target)
            .arg("--store")
            .arg(shared_store()),
    );
}

/// Benchmarks' baselines: `bundle` unpacked into `work/unpacked`, and its images as one
/// archive `docker load` takes (what `docker save` would give): (unpacked folder, archive).
pub fn unpack_for_docker_load(
    bundle: &std::path::Path,
    work: &std::path::Path,
) -> (PathBuf, PathBuf) {
    let unpacked = work.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(&unpacked),
    );
    let archive = work.join("images.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&archive)
            .arg("-C")
            .arg(unpacked.join("oci"))
            .arg("."),
    );
    (unpacked, archive)
}
