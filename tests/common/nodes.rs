//! Extra Docker engines in network namespaces (docs/swarm-notes.md, "Testing on one machine"), for multi-node tests.
//!
//! [`Cluster::start`] creates a Linux bridge on the host (with an address, so the host can
//! reach the nodes), one network namespace per node joined to it by a veth pair, allows
//! forwarding on the bridge (and rejects forwarding off it), and starts one `dockerd` per node with
//! `nsenter --net=/var/run/netns/NAME dockerd …` (`ip netns exec` would hide the cgroup
//! mounts). Each engine keeps a working default bridge (`--bip`, distinct per node) so that
//! containers on it can publish host-mode ports on the node's address. Optionally the engines
//! also listen on `tcp://IP:2376` with `--tlsverify` and a test CA made with `openssl`.
//!
//! Names and the /24 of the bridge are unique per cluster, so tests can run concurrently.
//! Dropping the [`Cluster`] stops every dockerd it started by PID (SIGTERM, bounded wait,
//! SIGKILL), kills what is left of its containers (by their cgroup) and of its containerd
//! (by its exec root), unmounts what is under its directory, removes the namespaces, veths,
//! bridge, iptables rule, cgroups and directories. Leftovers of a test process that died
//! without dropping its cluster are removed by the next [`Cluster::start`].
//! The host's own dockerd and its swarm are never touched.
//!
//! A node runs the system's dockerd (Debian's 20.10) or, with [`EngineKind::Docker26`] /
//! [`EngineKind::Docker28`], Debian trixie's Docker 26.1.5 / forky's 28.5.2 extracted by
//! `ensure_docker26` / `ensure_docker28` (scripts/lib.sh) into `$REEMO_DOCKER26_ROOT` /
//! `$REEMO_DOCKER28_ROOT`, with its own containerd, bookworm's runc, and the classic or the
//! containerd image store (`daemon.json` `features.containerd-snapshotter`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// First two octets of the bridges' /24s (`10.231.N.0/24`).
const NET_PREFIX: &str = "10.231";
/// Prefix of the per-cluster directories in the temp dir.
const DIR_PREFIX: &str = "reemo-nodes-";
/// How long an engine may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a dockerd may take to stop after SIGTERM before it gets SIGKILL. A swarm node's
/// engine takes 20 s and more to stop cleanly (its containers already killed, Swarm's agent
/// restarts tasks meanwhile); nothing of a test engine outlives the teardown, which kills
/// what is left by exec root and cgroup and unmounts its directory, so a short wait is enough.
const STOP_TIMEOUT: Duration = Duration::from_secs(6);

/// Which Docker engine a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The system's dockerd (Debian bookworm's 20.10).
    System,
    /// Debian trixie's Docker 26.1.5 (API 1.45), with the containerd image store or the
    /// classic one.
    Docker26 {
        /// `features.containerd-snapshotter` in its daemon.json.
        containerd: bool,
    },
    /// Debian forky's Docker 28.5.2 (API 1.51, image descriptors) with containerd 2.1, with
    /// the containerd image store (Docker 29's default) or the classic one.
    Docker28 {
        /// `features.containerd-snapshotter` in its daemon.json.
        containerd: bool,
    },
}

impl EngineKind {
    /// Whether the engine runs the containerd image store.
    pub fn containerd_store(self) -> bool {
        matches!(
            self,
            EngineKind::Docker26 { containerd: true } | EngineKind::Docker28 { containerd: true }
        )
    }

    /// `(version, API version)` the engine reports.
    pub fn versions(self) -> (&'static str, &'static str) {
        match self {
            EngineKind::System => ("20.10.", "1.41"),
            EngineKind::Docker26 { .. } => ("26.1.5", "1.45"),
            EngineKind::Docker28 { .. } => ("28.5.2", "1.51"),
        }
    }

    /// Where scripts/lib.sh extracted this engine (None: the system's); fails with advice
    /// when it is not there.
    fn extracted_root(self) -> Option<PathBuf> {
        let (var, default, ensure) = match self {
            EngineKind::System => return None,
            EngineKind::Docker26 { .. } => (
                "REEMO_DOCKER26_ROOT",
                "/var/cache/reemo-bundle/docker-26.1.5",
                "ensure_docker26",
            ),
            EngineKind::Docker28 { .. } => (
                "REEMO_DOCKER28_ROOT",
                "/var/cache/reemo-bundle/docker-28.5.2",
                "ensure_docker28",
            ),
        };
        let root = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
        assert!(
            root.join("usr/sbin/dockerd").is_file() && root.join("usr/bin/containerd").is_file(),
            "the engine matrix needs {self:?} extracted into {} (run `source scripts/lib.sh; {ensure}`, which the README's test command does)",
            root.display()
        );
        Some(root)
    }
}

/// One engine in its network namespace.
pub struct Node {
    /// 1-based index.
    pub index: usize,
    /// Network namespace name.
    pub netns: String,
    /// The node's address on the bridge.
    pub ip: String,
    /// Directory of this node (data root, exec root, socket, log).
    pub dir: PathBuf,
    /// Its unix socket.
    pub sock: PathBuf,
    /// Whether it also listens on `tcp://IP:2376` with TLS.
    pub tls: bool,
    /// The engine it runs.
    pub kind: EngineKind,
    child: Option<Child>,
}

impl Node {
    /// `unix://…/docker.sock`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// `tcp://IP:2376` (only listening when the cluster was started with TLS).
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}:2376", self.ip)
    }

    /// The docker CLI talking to this engine over its unix socket.
    pub fn docker(&self) -> Command {
        let mut c = super::docker();
        c.arg("-H").arg(self.url());
        c.env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_TLS_VERIFY");
        c
    }

    /// Run the docker CLI on this node; panics on failure, returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        super::run_ok(self.docker().args(args)).trim().to_string()
    }

    /// The last lines of this engine's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// This engine's swarm node id (empty when not in a swarm).
    pub fn node_id(&self) -> String {
        self.docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
    }

    /// SIGKILL this node's dockerd, by the pid it was started with, as when the engine
    /// crashes (its containerd and containers are left running; the cluster's drop removes
    /// them). Returns the pid; waits (bounded) until the process is gone.
    pub fn kill_engine(&self) -> u32 {
        let pid = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {}: its dockerd was not started here", self.index))
            .id();
        assert!(
            cmdline(pid).contains(&self.dir.to_string_lossy().to_string()),
            "node {}: pid {pid} is not its dockerd",
            self.index
        );
        signal(pid, libc::SIGKILL);
        // a zombie counts as gone (the cluster's drop reaps it)
        let gone = wait_until(Duration::from_secs(10), || !process_alive(pid));
        assert!(gone, "node {}: dockerd {pid} survived SIGKILL", self.index);
        pid
    }
}

/// Client certificate directories (`ca.pem`, `cert.pem`, `key.pem`, as DOCKER_CERT_PATH).
pub struct TlsDirs {
    /// Client certificate signed by the engines' CA.
    pub good: PathBuf,
    /// The engines' CA, but a client certificate signed by another CA.
    pub wrong_client: PathBuf,
    /// Another CA as `ca.pem` (the engines' certificate is not trusted), a good client
    /// certificate.
    pub wrong_ca: PathBuf,
    /// Empty directory (no certificates at all).
    pub empty: PathBuf,
}

/// What has to be removed; written to `<root>/teardown.json` so that a later run can clean
/// up after a test process that died without dropping its cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Teardown {
    owner_pid: u32,
    root: PathBuf,
    bridge: Option<String>,
    forward_rule: bool,
    netns: Vec<String>,
    veths: Vec<String>,
    cgroup_parents: Vec<String>,
    dockerd_pids: Vec<u32>,
}

impl Teardown {
    fn save(&self) {
        let _ = std::fs::write(
            self.root.join("teardown.json"),
            serde_json::to_vec(self).unwrap(),
        );
    }
}

/// A set of engines in network namespaces on one bridge; dropped = all of it removed.
pub struct Cluster {
    /// Short id in every name of this cluster.
    pub id: String,
    /// Directory holding every node's directories and the certificates.
    pub root: PathBuf,
    /// The host's address on the bridge.
    pub host_ip: String,
    /// The engines.
    pub nodes: Vec<Node>,
    /// Client certificates, when started with TLS.
    pub tls: Option<TlsDirs>,
    teardown: Teardown,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn must(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("setting up namespaced engines: {e}"))
}

/// Insert (`-I`: true when both went in) or delete (`-D`: true when one was deleted) the
/// FORWARD rules of a bridge: traffic between its nodes is accepted (dockerd sets the policy
/// to DROP), traffic from its nodes to anywhere else is rejected at once, so that what an
/// engine tries outside (a registry lookup for a service pinned by tag) fails at once
/// instead of waiting for a DNS timeout.
fn iptables_forward(op: &str, bridge: &str) -> bool {
    let rules: [&[&str]; 2] = [
        &["-i", bridge, "-o", bridge, "-j", "ACCEPT"],
        &["-i", bridge, "!", "-o", bridge, "-j", "REJECT"],
    ];
    let done: Vec<bool> = rules
        .iter()
        .map(|r| {
            Command::new("iptables")
                .args([op, "FORWARD"])
                .args(*r)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if op == "-I" {
        done.iter().all(|d| *d)
    } else {
        done.iter().any(|d| *d)
    }
}

/// An exclusive lock on a file in the temp dir (held while a /24 is chosen and the bridge
/// is created, and while leftovers are cleaned), released when dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn take() -> FileLock {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("reemo-nodes.lock"))
            .expect("opening the node allocation lock");
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "locking the node allocation lock");
        FileLock(f)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn require_tools() {
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("dockerd", "docker.io"),
        ("openssl", "openssl"),
    ] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
            .any(|d| Path::new(d).join(tool).is_file());
        assert!(
            found,
            "multi-node tests need `{tool}` (Debian package {pkg}; the README's test command installs it)"
        );
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "multi-node tests create network namespaces and start dockerd: they must run as root"
    );
}

fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // a zombie is dead for our purposes (its parent reaps it)
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to one pid we started (checked by the callers).
    unsafe { libc::kill(pid as i32, sig) };
}

/// Processes (other than us) whose command line mentions `needle` (our unique directory).
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| p != me && cmdline(p).contains(needle))
        .collect()
}

/// The cgroup directories of a `--cgroup-parent` (v1: one per controller; v2: one).
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let base = Path::new("/sys/fs/cgroup");
    if base.join(parent).is_dir() {
        v.push(base.join(parent));
    }
    if let Ok(rd) = std::fs::read_dir(base) {
        for e in rd.flatten() {
            let d = e.path().join(parent);
            if d.is_dir() {
                v.push(d);
            }
        }
    }
    v
}

/// Every directory under `dir` (itself included), deepest first.
fn subdirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(subdirs_deepest_first(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Pids in a cgroup subtree.
fn cgroup_pids(parent: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for d in cgroup_dirs(parent) {
        for sub in subdirs_deepest_first(&d) {
            if let Ok(s) = std::fs::read_to_string(sub.join("cgroup.procs")) {
                pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points at or under `root`, deepest first.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &root || m.starts_with(&format!("{root}/")))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    poll_every(timeout, Duration::from_millis(100), || done().then_some(())).is_some()
}

/// Remove everything a cluster made. Never panics; reports what it could not do.
fn teardown(t: &Teardown, children: &mut [Option<Child>]) {
    let root = t.root.to_string_lossy().to_string();
    // 1. the containers (they would make dockerd wait for their stop timeouts)
    for cg in &t.cgroup_parents {
        for p in cgroup_pids(cg) {
            signal(p, libc::SIGKILL);
        }
    }
    // 2. the engines, by pid: SIGTERM, bounded wait, SIGKILL
    let ours = |pid: u32| process_alive(pid) && cmdline(pid).contains(&root);
    for &pid in &t.dockerd_pids {
        if ours(pid) {
            signal(pid, libc::SIGTERM);
        }
    }
    let reap = |children: &mut [Option<Child>]| {
        for c in children.iter_mut().flatten() {
            let _ = c.try_wait();
        }
    };
    let stopped = wait_until(STOP_TIMEOUT, || {
        reap(children);
        t.dockerd_pids.iter().all(|&p| !ours(p))
    });
    if !stopped {
        for &pid in &t.dockerd_pids {
            if ours(pid) {
                eprintln!("nodes: dockerd {pid} did not stop within {STOP_TIMEOUT:?}; SIGKILL");
                signal(pid, libc::SIGKILL);
            }
        }
    }
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
    // 3. what is left: containerd and shims of these engines (their command lines name our
    //    exec roots), container processes (by cgroup)
    let gone = wait_until(Duration::from_secs(5), || pids_mentioning(&root).is_empty());
    if !gone {
        for p in pids_mentioning(&root) {
            signal(p, libc::SIGKILL);
        }
    }
    for cg in &t.cgroup_parents {
        for p in cgroup_pids(cg) {
            signal(p, libc::SIGKILL);
        }
    }
    wait_until(Duration::from_secs(5), || {
        pids_mentioning(&root).is_empty()
            && t.cgroup_parents.iter().all(|c| cgroup_pids(c).is_empty())
    });
    // 4. mounts under our directory (overlay2 layers, network namespaces of the engines)
    for m in mounts_under(&t.root) {
        let c = std::ffi::CString::new(m.clone()).unwrap();
        // SAFETY: unmounting a path under our own directory.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!("nodes: unmounting {m}: {}", std::io::Error::last_os_error());
        }
    }
    // 5. network: namespaces (their veth ends go with them), host veths, rule, bridge
    for ns in &t.netns {
        if Path::new("/var/run/netns").join(ns).exists() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("nodes: {e}");
            }
        }
    }
    for v in &t.veths {
        let _ = ip(&["link", "del", v]);
    }
    if let Some(br) = &t.bridge {
        if t.forward_rule {
            // delete every copy (a crashed run may have left one)
            for _ in 0..5 {
                if !iptables_forward("-D", br) {
                    break;
                }
            }
        }
        if ip(&["link", "show", br]).is_ok() {
            if let Err(e) = ip(&["link", "del", br]) {
                eprintln!("nodes: {e}");
            }
        }
    }
    // 6. cgroups and files
    for cg in &t.cgroup_parents {
        for d in cgroup_dirs(cg) {
            for sub in subdirs_deepest_first(&d) {
                let _ = std::fs::remove_dir(&sub);
            }
        }
    }
    if mounts_under(&t.root).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&t.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("nodes: removing {}: {e}", t.root.display());
            }
        }
    } else {
        eprintln!(
            "nodes: {} still has mounts; not removing it",
            t.root.display()
        );
    }
}

/// Remove clusters of test processes that no longer exist (killed before their Drop ran).
fn clean_leftovers() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path().join("teardown.json")) else {
            continue;
        };
        let Ok(t) = serde_json::from_slice::<Teardown>(&bytes) else {
            continue;
        };
        if t.root == e.path() && !process_alive(t.owner_pid) {
            eprintln!(
                "nodes: removing the leftovers of test process {} ({})",
                t.owner_pid,
                t.root.display()
            );
            teardown(&t, &mut []);
        }
    }
}

/// A /24 under [`NET_PREFIX`] that no host address or route uses (call under the lock).
fn free_subnet(seed: u32) -> u32 {
    let used = must(ip(&["-4", "-o", "addr", "show"])) + &must(ip(&["-4", "route", "show"]));
    (0..254)
        .map(|i| (seed + i) % 254 + 1)
        .find(|n| !used.contains(&format!("{NET_PREFIX}.{n}.")))
        .expect("no free /24 for the test bridge")
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl (Debian package openssl)");
    assert!(
        o.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA (`<name>-ca.pem`, `<name>-ca-key.pem`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    new_key_req(
        dir,
        &["-x509", "-days", "2"],
        &format!("/CN=reemo test CA {name}"),
        &format!("{name}-ca-key.pem"),
        &format!("{name}-ca.pem"),
    );
}

/// `openssl req -new` with a fresh P-256 key (unencrypted) written to `key`, output `out`.
fn new_key_req(dir: &Path, extra: &[&str], subject: &str, key: &str, out: &str) {
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        key,
        "-out",
        out,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// A certificate `<out>-cert.pem` / `<out>-key.pem` signed by CA `ca`, with extensions.
pub fn make_cert(dir: &Path, ca: &str, out: &str, cn: &str, ext: &str, serial: u32) {
    std::fs::write(dir.join(format!("{out}.ext")), ext).unwrap();
    new_key_req(
        dir,
        &[],
        &format!("/CN={cn}"),
        &format!("{out}-key.pem"),
        &format!("{out}.csr"),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{out}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca-key.pem"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &format!("{out}.ext"),
            "-out",
            &format!("{out}-cert.pem"),
        ],
    );
}

/// Test certificates in `<root>/tls`: the engines' CA, a server certificate naming every
/// node address, client certificate directories.
fn make_certs(root: &Path, ips: &[String]) -> TlsDirs {
    let dir = root.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "engines");
    make_ca(&dir, "other");
    let sans: Vec<String> = ips.iter().map(|i| format!("IP:{i}")).collect();
    make_cert(
        &dir,
        "engines",
        "server",
        "reemo test engine",
        &format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n",
            sans.join(",")
        ),
        1,
    );
    let client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n";
    make_cert(
        &dir,
        "engines",
        "client",
        "reemo test client",
        client_ext,
        2,
    );
    make_cert(
        &dir,
        "other",
        "stranger",
        "reemo test stranger",
        client_ext,
        3,
    );
    let put = |name: &str, ca: &str, cert: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(dir.join(format!("{ca}-ca.pem")), d.join("ca.pem")).unwrap();
        std::fs::copy(dir.join(format!("{cert}-cert.pem")), d.join("cert.pem")).unwrap();
        std::fs::copy(dir.join(format!("{cert}-key.pem")), d.join("key.pem")).unwrap();
        d
    };
    let good = put("client", "engines", "client");
    let wrong_client = put("wrong-client", "engines", "stranger");
    let wrong_ca = put("wrong-ca", "other", "client");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    TlsDirs {
        good,
        wrong_client,
        wrong_ca,
        empty,
    }
}

impl Cluster {
    /// Start `n` engines (in parallel) and wait until each answers. With `tls`, each also
    /// listens on `tcp://IP:2376` with `--tlsverify` (see [`Cluster::tls`]).
    pub fn start(n: usize, tls: bool) -> Cluster {
        Cluster::start_engines(&vec![EngineKind::System; n], tls)
    }

    /// Start one node per entry of `kinds`, running that engine (see [`Cluster::start`]).
    pub fn start_engines(kinds: &[EngineKind], tls: bool) -> Cluster {
        let n = kinds.len();
        require_tools();
        // fail early, before anything is set up, when an engine is missing
        for k in kinds {
            k.extracted_root();
        }
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!("{:06x}", (pid.wrapping_mul(2654435761) ^ nanos) & 0xff_ffff);
        let root = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        std::fs::create_dir_all(&root).unwrap();
        let t = Teardown {
            owner_pid: pid,
            root: root.clone(),
            ..Default::default()
        };
        t.save();
        let bridge = format!("rb{id}");
        let mut cluster = Cluster {
            id: id.clone(),
            root: root.clone(),
            host_ip: String::new(),
            nodes: Vec::new(),
            tls: None,
            teardown: t,
        };
        // From here on, a panic drops `cluster`, which removes whatever exists so far.
        let net = {
            let _lock = FileLock::take();
            clean_leftovers();
            let net = free_subnet(u32::from_str_radix(&id, 16).unwrap());
            cluster.teardown.bridge = Some(bridge.clone());
            cluster.teardown.save();
            must(ip(&["link", "add", &bridge, "type", "bridge"]));
            cluster.host_ip = format!("{NET_PREFIX}.{net}.1");
            must(ip(&[
                "addr",
                "add",
                &format!("{}/24", cluster.host_ip),
                "dev",
                &bridge,
            ]));
            must(ip(&["link", "set", &bridge, "up"]));
            net
        };
        // dockerd sets the FORWARD policy to DROP; nodes talk to each other across the
        // bridge (swarm control, VXLAN), which goes through FORWARD with br_netfilter.
        // Set before the assert, so that a half-inserted pair is deleted too.
        cluster.teardown.forward_rule = true;
        cluster.teardown.save();
        assert!(
            iptables_forward("-I", &bridge),
            "iptables -I FORWARD -i {bridge} [-o | ! -o] {bridge} -j ACCEPT | REJECT failed"
        );

        let ips: Vec<String> = (1..=n)
            .map(|i| format!("{NET_PREFIX}.{net}.{}", 10 + i))
            .collect();
        if tls {
            cluster.tls = Some(make_certs(&root, &ips));
        }
        for i in 1..=n {
            let netns = format!("reemo-{id}-n{i}");
            let veth_host = format!("rv{id}{i}");
            let veth_node = format!("rw{id}{i}");
            cluster.teardown.netns.push(netns.clone());
            cluster.teardown.veths.push(veth_host.clone());
            cluster.teardown.cgroup_parents.push(netns.clone());
            cluster.teardown.save();
            let node_ip = &ips[i - 1];
            must(ip(&["netns", "add", &netns]));
            must(ip(&[
                "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_node,
            ]));
            must(ip(&["link", "set", &veth_node, "netns", &netns]));
            must(ip(&["link", "set", &veth_host, "master", &bridge, "up"]));
            must(ip(&["-n", &netns, "link", "set", "lo", "up"]));
            must(ip(&[
                "-n", &netns, "link", "set", &veth_node, "name", "eth0",
            ]));
            must(ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                "eth0",
            ]));
            must(ip(&["-n", &netns, "link", "set", "eth0", "up"]));
            must(ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &cluster.host_ip,
            ]));
            let dir = root.join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("data")).unwrap();
            std::fs::create_dir_all(dir.join("exec")).unwrap();
            let sock = dir.join("docker.sock");
            let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
            let kind = kinds[i - 1];
            // A mount namespace of its own, where /var/lib/docker/network/files is the node's:
            // libnetwork keeps the files of an overlay network's load-balancer sandbox
            // (`lb_<network id>/resolv.conf.hash`) there whatever the data root, so engines
            // of one swarm on one machine would share them — and Docker 26 cannot read
            // what 20.10 writes ("failed to parse hash file"). Mounts stay private to it;
            // each `exec` keeps the pid, which is dockerd's in the end.
            let files = dir.join("network-files");
            std::fs::create_dir_all(&files).unwrap();
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(
                    "mkdir -p /var/lib/docker/network/files && \
                     mount --bind \"$0\" /var/lib/docker/network/files && exec \"$@\"",
                )
                .arg(&files)
                .arg("nsenter")
                .arg(format!("--net=/var/run/netns/{netns}"));
            // its own binaries first (containerd, shims, docker-init); runc is bookworm's
            let mut path = String::new();
            match (kind, kind.extracted_root()) {
                (
                    EngineKind::Docker26 { containerd } | EngineKind::Docker28 { containerd },
                    Some(root),
                ) => {
                    let cfg = dir.join("daemon.json");
                    std::fs::write(
                        &cfg,
                        serde_json::json!({"features": {"containerd-snapshotter": containerd}})
                            .to_string(),
                    )
                    .unwrap();
                    cmd.arg(root.join("usr/sbin/dockerd"))
                        .arg("--config-file")
                        .arg(cfg);
                    path = format!("{}:", root.join("usr/bin").display());
                }
                _ => {
                    cmd.arg("dockerd");
                }
            }
            cmd.arg("--data-root")
                .arg(dir.join("data"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", sock.display()))
                .arg("--cgroup-parent")
                .arg(&netns)
                // a working default bridge, distinct per node (containers outside the
                // overlay publish host-mode ports on the node's address through it)
                .arg("--bip")
                .arg(format!("172.30.{i}.1/24"))
                // no docker-proxy processes: published ports are plain DNAT rules
                .arg("--userland-proxy=false");
            if let Some(certs) = &cluster.tls {
                let tdir = certs.good.parent().unwrap();
                cmd.arg("-H")
                    .arg(format!("tcp://{node_ip}:2376"))
                    .arg("--tlsverify")
                    .arg("--tlscacert")
                    .arg(tdir.join("engines-ca.pem"))
                    .arg("--tlscert")
                    .arg(tdir.join("server-cert.pem"))
                    .arg("--tlskey")
                    .arg(tdir.join("server-key.pem"));
            }
            cmd.env(
                "PATH",
                format!(
                    "{path}/usr/sbin:/usr/bin:/sbin:/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
            // nsenter execs dockerd in place: the child's pid is dockerd's.
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting dockerd for {netns}: {e}"));
            cluster.teardown.dockerd_pids.push(child.id());
            cluster.teardown.save();
            cluster.nodes.push(Node {
                index: i,
                netns,
                ip: node_ip.clone(),
                dir,
                sock,
                tls,
                kind,
                child: Some(child),
            });
        }
        for node in &mut cluster.nodes {
            let started = Instant::now();
            let mut last = String::new();
            let ok = wait_until(START_TIMEOUT, || {
                if let Some(Ok(Some(st))) = node.child.as_mut().map(|c| c.try_wait()) {
                    last = format!("dockerd exited ({st})");
                    return true;
                }
                match node
                    .docker()
                    .args(["version", "--format", "{{.Server.Version}}"])
                    .output()
                {
                    Ok(o) if o.status.success() => {
                        last.clear();
                        true
                    }
                    Ok(o) => {
                        last = String::from_utf8_lossy(&o.stderr).trim().to_string();
                        false
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            });
            assert!(
                ok && last.is_empty(),
                "engine {} did not come up within {:?} ({last}); its log ends with:\n{}",
                node.netns,
                started.elapsed(),
                node.log_tail(30)
            );
        }
        cluster
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut children: Vec<Option<Child>> =
            self.nodes.iter_mut().map(|n| n.child.take()).collect();
        teardown(&self.teardown, &mut children);
    }
}

/// One HTTP/1.0 GET from the host; returns the body, or why it failed.
pub fn http_get(ip: &str, port: u16, path: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("bad HTTP response from {addr}: {resp:?}"))?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// Poll `f` every 250 ms until it returns `Some`, at most `timeout`; `None` on timeout.
pub fn poll<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(timeout, Duration::from_millis(250), f)
}

/// [`poll`] with a given pause between tries.
fn poll_every<T>(
    timeout: Duration,
    pause: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    for _ in 0..100_000 {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
    }
    None
}
