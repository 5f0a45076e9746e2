//! The RELAYWS appliance side of `relay-bench proxy`: sessions made through the control
//! port (mutual TLS), the entry proxy's TLS client, and the meters of the stack's containers
//! (cgroup memory and cpu of the proxy and relay tasks, haproxy's own `show info`).

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ws_relay_server::client::{http_request, BaseUrl};

/// A session made through the control API: its id and the two sides' tokens.
#[derive(Clone)]
pub struct Made {
    pub id: String,
    pub agent: String,
    pub user: String,
}

/// The clients' view of the appliance: where to connect, how to verify, and the sessions
/// made so far (by the bench's session name).
pub struct Entry {
    /// `host:port` of the TLS listener as clients name it (URL, Host header, TLS name).
    pub authority: String,
    /// Server name the entry certificate is verified against.
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: tokio_rustls::TlsConnector,
    control: BaseUrl,
    control_tls: Arc<rustls::ClientConfig>,
    secret: String,
    sessions: Mutex<HashMap<String, Made>>,
}

impl Entry {
    /// `url`: `wss://HOST:PORT`; `control_url`: `https://HOST:PORT`; the site CA verifies
    /// both, the client certificate is presented on the control port.
    pub fn new(
        url: &str,
        control_url: &str,
        ca: &Path,
        client: (&Path, &Path),
        secret_file: &Path,
    ) -> Result<Entry> {
        let https = url
            .strip_prefix("wss://")
            .map(|r| format!("https://{r}"))
            .with_context(|| format!("url {url:?} must start with wss://"))?;
        let base = BaseUrl::parse(&https)?;
        let control = BaseUrl::parse(control_url)?;
        if !control.tls {
            bail!("control url {control_url:?} must start with https://");
        }
        let server_name = rustls::pki_types::ServerName::try_from(base.host().to_string())
            .with_context(|| format!("{:?} is not a valid tls server name", base.host()))?;
        let secret = std::fs::read_to_string(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?
            .trim()
            .to_string();
        Ok(Entry {
            authority: base.authority.clone(),
            server_name,
            tls: tokio_rustls::TlsConnector::from(ws_relay_server::tls::verifying_client(Some(
                ca,
            ))?),
            control,
            control_tls: ws_relay_server::tls::verifying_client_with(Some(ca), Some(client))?,
            secret,
            sessions: Mutex::default(),
        })
    }

    /// The session made for bench session `name`.
    pub fn session(&self, name: &str) -> Result<Made> {
        self.sessions
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .with_context(|| format!("no session was made for {name}"))
    }

    async fn create(&self) -> Result<Made> {
        let call = http_request(
            &self.control,
            Some(&self.control_tls),
            "POST",
            "/v1/sessions",
            Some(&self.secret),
            "{}",
        );
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .context("POST /v1/sessions: no answer within 20 s")??;
        if status != 201 {
            bail!("POST /v1/sessions: {status} {body}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).context("POST /v1/sessions: bad json")?;
        let s = |p: &str| {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("POST /v1/sessions: no {p} in {body}"))
        };
        Ok(Made {
            id: s("/id")?,
            agent: s("/agent/token")?,
            user: s("/user/token")?,
        })
    }

    /// [`Entry::create`], tried up to 3 times: on a busy machine the proxy answers 408 to a
    /// control call whose TLS handshake and request took over its `timeout http-request`.
    async fn create_retrying(&self) -> Result<Made> {
        let mut last = None;
        for attempt in 0..3u64 {
            match self.create().await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    eprintln!("control call failed (attempt {}): {e:#}", attempt + 1);
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    /// Makes sessions `{tag}0..{tag}{n-1}` through the control port, `parallel` at once
    /// (each call is a TLS handshake with the client certificate); returns how long it took.
    pub async fn make(&self, tag: &str, n: usize, parallel: usize) -> Result<Duration> {
        let start = Instant::now();
        let made: Vec<Result<(String, Made)>> = futures_util::stream::iter(0..n)
            .map(|i| async move { Ok((format!("{tag}{i}"), self.create_retrying().await?)) })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        let mut map = self
            .sessions
            .lock()
            .map_err(|_| anyhow::anyhow!("session map poisoned"))?;
        for m in made {
            let (name, m) = m?;
            map.insert(name, m);
        }
        Ok(start.elapsed())
    }
}

/// One task container of the stack, with its cgroup folders.
pub struct Container {
    memory: PathBuf,
    cpu: CpuFile,
    /// Host PID of the container's first process (its /proc/PID/root reaches its files).
    pub pid: u32,
}

enum CpuFile {
    /// cgroup v1 `cpuacct.usage` (ns).
    V1(PathBuf),
    /// cgroup v2 `cpu.stat` (`usage_usec`).
    V2(PathBuf),
}

/// Memory of a container's cgroup, bytes.
#[derive(Clone, Copy, Default, Debug)]
pub struct Mem {
    /// usage minus inactive file pages: what `docker stats` shows.
    pub used: u64,
    /// anonymous memory (process heap: haproxy's pools, the relay's buffers).
    pub anon: u64,
    /// kernel memory charged to the cgroup (sockets, TLS records, slab).
    pub kernel: u64,
    /// TCP socket buffers (cgroup v1 accounts them apart, in `memory.kmem.tcp`).
    pub tcp: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            used: self.used + o.used,
            anon: self.anon + o.anon,
            kernel: self.kernel + o.kernel,
            tcp: self.tcp + o.tcp,
        }
    }
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn stat_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

impl Container {
    /// The container `id` (full id), its cgroups found from /proc/PID/cgroup.
    fn open(id: &str) -> Result<Container> {
        let pid: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", id])?
            .trim()
            .parse()
            .with_context(|| format!("container {id}: no pid"))?;
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup of container {id}"))?;
        let mut memory = None;
        let mut cpu = None;
        for line in cg.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let path = path.trim_start_matches('/');
            let ctrls: Vec<&str> = ctrl.split(',').collect();
            if ctrls.contains(&"memory") {
                memory = Some(Path::new("/sys/fs/cgroup/memory").join(path));
            }
            if ctrls.contains(&"cpuacct") {
                let dir = if ctrls.contains(&"cpu") {
                    "/sys/fs/cgroup/cpu,cpuacct"
                } else {
                    "/sys/fs/cgroup/cpuacct"
                };
                cpu = Some(CpuFile::V1(Path::new(dir).join(path).join("cpuacct.usage")));
            }
            if ctrl.is_empty() && memory.is_none() {
                let dir = Path::new("/sys/fs/cgroup").join(path);
                if dir.join("memory.current").is_file() {
                    memory = Some(dir.clone());
                    cpu = Some(CpuFile::V2(dir.join("cpu.stat")));
                }
            }
        }
        Ok(Container {
            memory: memory.with_context(|| format!("container {id}: no memory cgroup"))?,
            cpu: cpu.with_context(|| format!("container {id}: no cpu cgroup"))?,
            pid,
        })
    }

    /// CPU time used so far, seconds.
    pub fn cpu_secs(&self) -> f64 {
        match &self.cpu {
            CpuFile::V1(p) => read_u64(p) as f64 / 1e9,
            CpuFile::V2(p) => {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                stat_field(&t, "usage_usec") as f64 / 1e6
            }
        }
    }

    pub fn mem(&self) -> Mem {
        let d = &self.memory;
        let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
        if d.join("memory.current").is_file() {
            let usage = read_u64(&d.join("memory.current"));
            Mem {
                used: usage.saturating_sub(stat_field(&stat, "inactive_file")),
                anon: stat_field(&stat, "anon"),
                kernel: stat_field(&stat, "kernel"),
                tcp: stat_field(&stat, "sock"),
            }
        } else {
            let usage = read_u64(&d.join("memory.usage_in_bytes"));
            Mem {
                used: usage.saturating_sub(stat_field(&stat, "total_inactive_file")),
                anon: stat_field(&stat, "total_rss"),
                kernel: read_u64(&d.join("memory.kmem.usage_in_bytes")),
                tcp: read_u64(&d.join("memory.kmem.tcp.usage_in_bytes")),
            }
        }
    }
}

fn docker(args: &[&str]) -> Result<String> {
    let o = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The running task containers of service `service` (e.g. `benchproxy_proxy`).
pub fn containers(service: &str) -> Result<Vec<Container>> {
    let ids = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ])?;
    let list: Vec<Container> = ids
        .split_whitespace()
        .map(Container::open)
        .collect::<Result<_>>()?;
    if list.is_empty() {
        bail!("no running container of service {service}");
    }
    Ok(list)
}

/// The stack's proxy and relay containers.
pub struct Stack {
    pub proxy: Vec<Container>,
    pub relays: Vec<Container>,
}

impl Stack {
    pub fn find(stack: &str) -> Result<Stack> {
        Ok(Stack {
            proxy: containers(&format!("{stack}_proxy"))?,
            relays: containers(&format!("{stack}_relay"))?,
        })
    }

    /// (proxy, relays) CPU seconds so far.
    pub fn cpu_secs(&self) -> (f64, f64) {
        let sum = |c: &[Container]| c.iter().map(Container::cpu_secs).sum();
        (sum(&self.proxy), sum(&self.relays))
    }

    /// (proxy, relays) memory.
    pub fn mem(&self) -> (Mem, Mem) {
        let sum = |c: &[Container]| {
            c.iter()
                .map(Container::mem)
                .fold(Mem::default(), |a, b| a + b)
        };
        (sum(&self.proxy), sum(&self.relays))
    }

    /// The open-files limit of the proxy's processes (`Max open files` of /proc/PID/limits).
    pub fn proxy_nofile(&self) -> Option<u64> {
        let c = self.proxy.first()?;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.pid)).ok()?;
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()
    }

    /// One command on haproxy's admin socket (reached through the container's root from the
    /// host), its whole answer.
    pub async fn haproxy_cmd(&self, cmd: &str) -> Result<String> {
        let c = self.proxy.first().context("no proxy container")?;
        let sock = format!("/proc/{}/root/run/haproxy/admin.sock", c.pid);
        let talk = async {
            let mut s = tokio::net::UnixStream::connect(&sock)
                .await
                .with_context(|| format!("connecting to {sock}"))?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut out = String::new();
            s.take(1 << 20).read_to_string(&mut out).await?;
            anyhow::Ok(out)
        };
        tokio::time::timeout(Duration::from_secs(5), talk)
            .await
            .with_context(|| format!("haproxy {cmd}: no answer within 5 s"))?
    }

    /// haproxy's `show info`: Maxconn, Maxsock, Ulimit-n, CurrConns, …
    pub async fn haproxy_info(&self) -> Result<HashMap<String, String>> {
        let out = self.haproxy_cmd("show info").await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::stat_field;

    #[test]
    fn stat_field_reads_the_named_counter_only() {
        let v1 = "cache 4096\nrss 81920\ntotal_rss 163840\ntotal_inactive_file 8192\n";
        for (key, want) in [
            ("rss", 81920),
            ("total_rss", 163840),
            ("total_inactive_file", 8192),
            ("inactive_file", 0),
            ("missing", 0),
        ] {
            assert_eq!(stat_field(v1, key), want, "{key}");
        }
        assert_eq!(
            stat_field("usage_usec 1234\nuser_usec 1000\n", "usage_usec"),
            1234
        );
    }
}
