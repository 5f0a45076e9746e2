//! Host-side subcommands (load, activate, status, generations, rollback, recover, gc,
//! swarm): argument structs, dispatch into the loader, and printing. Results go to stdout
//! (`--json`: one object with `"format": 1`), progress and warnings to stderr (JSON lines
//! with `--json`).
//!
//! Exit codes: 0 success (also "nothing to do"), 1 error — for `activate`/`rollback` that
//! includes "failed and reverted: the previous generation stays current", 2 usage error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::output::{events, print_json};
use crate::engine::docker::DockerEngine;
use crate::engine::Engine;
use crate::events::{Event, Events};
use crate::loader::activate::{self, ActivateOptions, Outcome, OutcomeResult};
use crate::loader::{
    certs, cluster, gc, images, status, Host, Timing, ACTIVATE_MONITOR, ROLLBACK_MONITOR,
};
use crate::swarm::init::InitOptions;
use crate::swarm::join::JoinOptions;

/// Engines and state directory, shared by the host commands.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Docker engine to use: `unix:///PATH` or `tcp://HOST:2376` (TLS from
    /// DOCKER_CERT_PATH). Repeat for more nodes; the first must be a swarm manager.
    /// Default: $DOCKER_HOST or the local socket.
    #[arg(long = "engine", value_name = "URL")]
    pub engines: Vec<String>,
    /// Host state directory (store, generations, journal).
    #[arg(long, env = "REEMO_BUNDLE_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
}

impl HostArgs {
    fn host(&self, events: Arc<dyn Events>) -> Result<Host> {
        let connect = |u: Option<&str>| -> Result<Arc<dyn Engine>> {
            Ok(Arc::new(DockerEngine::connect(u)?))
        };
        let engines = if self.engines.is_empty() {
            vec![connect(None)?]
        } else {
            self.engines
                .iter()
                .map(|u| connect(Some(u)))
                .collect::<Result<_>>()?
        };
        Ok(Host {
            engines,
            state_dir: self.state_dir.clone(),
            events,
        })
    }
}

/// Which signing keys this host trusts.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// Trust this public key file (from `keygen`) on top of `<state-dir>/trusted-keys/*.pub`;
    /// repeatable. With at least one trusted key, only bundles signed by one of them are
    /// accepted; with none, unsigned bundles are accepted with a warning.
    #[arg(long = "trusted-key", value_name = "FILE")]
    pub trusted_keys: Vec<PathBuf>,
}

/// Site parameter values given on the command line (activate, configure).
#[derive(Debug, Clone, Default, Args)]
pub struct SiteArgs {
    /// Site file: `NAME = value` lines (TOML) for the bundle's site parameters. Values of
    /// the current generation are kept unless given here or with --set.
    #[arg(long = "site", value_name = "FILE")]
    pub site_file: Option<PathBuf>,
    /// Set one site parameter (after the site file); repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// Convergence timing options.
#[derive(Debug, Clone, Args)]
pub struct TimingArgs {
    /// Give up (and revert) when the stack has not converged within this time.
    #[arg(long, default_value = "120s", value_parser = parse_dur)]
    pub timeout: Duration,
    /// How long every touched service must stay converged before the switch. Default:
    /// 2s for `activate`; 1s for `rollback`, whose target generation already passed its
    /// monitor window on this host.
    #[arg(long, value_parser = parse_dur)]
    pub monitor: Option<Duration>,
}

impl TimingArgs {
    fn timing(&self, default_monitor: Duration) -> Timing {
        Timing {
            timeout: self.timeout,
            ..Timing::with_monitor(self.monitor.unwrap_or(default_monitor))
        }
    }
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::stack::parse_duration(s)
        .map(|n| Duration::from_nanos(n.max(0) as u64))
        .map_err(|e| e.to_string())
}

/// Host-side commands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Stream a bundle's images into one or more engines (skips images they hold).
    Load {
        /// Bundle file.
        file: PathBuf,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Trusted keys.
        #[command(flatten)]
        trust: TrustArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a bundle the running stack, as one transaction: verify, import, load, plan,
    /// apply, wait until healthy, switch `current` — or revert the whole stack and say why.
    Activate {
        /// Bundle file.
        file: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Update only these services (others stay as in the current generation): service
        /// names or the tags services carry (`x-reemo-tags`, e.g. `signal`); repeatable or
        /// comma-separated. Refused while a service of an earlier phase also changes.
        #[arg(long, value_name = "SERVICE|TAG", value_delimiter = ',')]
        only: Vec<String>,
        /// With --only: update the services named even though a service of an earlier
        /// phase also changes (it stays on its current version).
        #[arg(long, requires = "only")]
        out_of_order: bool,
        /// Accept a bundle whose version is lower than the current generation's (same
        /// bundle name). `rollback` needs no such flag.
        #[arg(long)]
        allow_downgrade: bool,
        /// Site parameter values.
        #[command(flatten)]
        site: SiteArgs,
        /// Trusted keys.
        #[command(flatten)]
        trust: TrustArgs,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the current generation, services (judged as `activate` judges them), images
    /// per engine, the managers (address, reachability, leader) with their quorum (managers
    /// needed, further losses tolerated, what one more loss would do), and any unfinished
    /// activation with the command that finishes it. An `--engine` after the first that
    /// does not answer is reported, not an error. Changes nothing.
    Status {
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List generations: number, bundle, version, identity, time, result.
    Generations {
        /// State directory.
        #[arg(long, env = "REEMO_BUNDLE_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
        state_dir: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The host's internal PKI.
    Pki {
        /// What to do.
        #[command(subcommand)]
        cmd: PkiCommand,
    },
    /// The operator's own certificates (for the stack's external certificates).
    Cert {
        /// What to do.
        #[command(subcommand)]
        cmd: CertCommand,
    },
    /// Change site parameter values of the current generation: its bundle again, from the
    /// host's store (no bundle file needed), as a new generation (same transaction, health
    /// gate and rollback as activate).
    Configure {
        /// Site parameter values.
        #[command(flatten)]
        site: SiteArgs,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Activate an older generation (the previous succeeded one by default).
    Rollback {
        /// Generation number.
        #[arg(long)]
        to: Option<u64>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Finish or revert what an interrupted activate or rollback left (a crash, a kill, a
    /// power loss): finish it if it had switched `current`, else revert the stack to the
    /// previous generation. activate, rollback and gc do this first on their own.
    Recover {
        /// Timing of the revert.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove generations beyond the last K (the current one always stays) and the images,
    /// configs, secrets and store entries only they used.
    Gc {
        /// Generations to keep, the current one included.
        #[arg(long)]
        keep: usize,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Swarm management.
    #[command(subcommand)]
    Swarm(SwarmCommand),
}

/// `swarm` subcommands.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Initialise a swarm on this engine (refuses if one exists: these settings cannot
    /// change later).
    Init {
        /// IP address or interface name (e.g. eth0) to advertise to other nodes.
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Default address pool for overlay networks (CIDR, /24 or larger); repeatable.
        #[arg(long, value_name = "CIDR")]
        default_addr_pool: Vec<String>,
        /// UDP port for overlay traffic (default 4789, which VMware NSX also uses).
        #[arg(long)]
        data_path_port: Option<u16>,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
    },
    /// Write the token that joins a node as a manager into FILE (mode 0600; replaced
    /// atomically if it exists), for `swarm join --token-file` on the other hosts. The token
    /// is a secret: it is never printed. Run on a manager.
    JoinToken {
        /// File to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
    },
    /// Join this engine to an existing swarm as a manager (the seeds want managers only:
    /// three tolerate the loss of one). The token is read from a file, never from the
    /// command line, and never printed. Refused when the engine is in a swarm already; a
    /// worker token is refused after the swarm said so, and the node leaves again.
    Join {
        /// File holding the manager join token (from `swarm join-token --out FILE` on a
        /// manager).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// A manager of the swarm, ADDR[:PORT] (port 2377 by default); repeatable, each is
        /// tried.
        #[arg(long, value_name = "ADDR[:PORT]", required = true)]
        remote: Vec<String>,
        /// IP address or interface name (e.g. eth0), with an optional :PORT, that the other
        /// nodes reach this one at (default: chosen by the engine).
        #[arg(long, value_name = "IP|IFACE[:PORT]")]
        advertise_addr: Option<String>,
        /// Where this manager listens for swarm traffic (default 0.0.0.0:2377).
        #[arg(long, value_name = "IP|IFACE[:PORT]")]
        listen_addr: Option<String>,
        /// IP address or interface name for overlay (VXLAN) traffic, to keep it apart from
        /// the swarm's control traffic (default: the advertise address).
        #[arg(long, value_name = "IP|IFACE")]
        data_path_addr: Option<String>,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_outcome(o: &Outcome, json: bool) -> Result<()> {
    if json {
        return print_json("outcome", o);
    }
    let id12 = crate::swarm::observed::short(&o.identity);
    match o.result {
        OutcomeResult::Planned => {
            if let Some(u) = &o.unfinished {
                println!("first: {u}");
            }
            println!(
                "plan for {} {} ({id12}) on stack {}:",
                o.bundle, o.version, o.stack
            );
            if o.plan.is_empty() {
                println!("  nothing to do");
            }
            for l in &o.plan {
                println!("  {l}");
            }
            for u in &o.unchanged {
                println!("  unchanged: {u}");
            }
            for n in &o.notes {
                println!("  note: {n}");
            }
        }
        OutcomeResult::Unchanged => println!(
            "stack {} already runs generation {} ({} {}); nothing to do",
            o.stack,
            o.generation.unwrap_or(0),
            o.bundle,
            o.version
        ),
        OutcomeResult::Activated | OutcomeResult::RolledBack => {
            println!(
                "stack {} now runs generation {} ({} {}, {id12}): {} step(s)",
                o.stack,
                o.generation.unwrap_or(0),
                o.bundle,
                o.version,
                o.plan.len()
            );
            for n in &o.notes {
                println!("  note: {n}");
            }
        }
    }
    Ok(())
}

fn print_status(s: &status::Status) {
    if let Some(j) = &s.journal {
        println!("unfinished: {j}");
    }
    match s.generation {
        Some(n) => println!(
            "stack {}: generation {n}, {} {} ({})",
            s.stack.as_deref().unwrap_or_default(),
            s.bundle.as_deref().unwrap_or_default(),
            s.version.as_deref().unwrap_or_default(),
            crate::swarm::observed::short(s.identity.as_deref().unwrap_or_default())
        ),
        None => println!("no generation is current"),
    }
    for (k, v) in &s.pinned {
        println!("  pinned {k} = {v}");
    }
    for (k, v) in &s.site {
        println!("  site {k} = {v}");
    }
    for c in &s.certificates {
        println!(
            "  certificate {}: subject {}, names {}, issuer {}, valid until {} ({} days left)",
            c.name,
            c.subject,
            c.sans.join(","),
            c.issuer,
            crate::oci::rfc3339(c.not_after.max(0) as u64),
            c.days_left
        );
    }
    for sv in &s.services {
        println!(
            "  service {}: {}/{} {}{}{}",
            sv.name,
            sv.running,
            sv.desired,
            sv.health,
            if sv.job { " (job)" } else { "" },
            sv.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    for i in &s.images {
        println!(
            "  image {} on {}: {}",
            i.image,
            i.engine,
            if i.present { "present" } else { "MISSING" }
        );
    }
    let q = &s.quorum;
    println!(
        "swarm: {} node(s), {} manager(s) ({} reachable); quorum {} of {}, tolerates {} more manager loss(es)",
        s.nodes, q.managers, q.reachable, q.needed, q.managers, q.tolerates
    );
    for m in &q.nodes {
        println!(
            "  manager {} ({}) at {}: {}{}",
            if m.hostname.is_empty() {
                "?"
            } else {
                &m.hostname
            },
            crate::swarm::observed::short(&m.id),
            if m.addr.is_empty() { "?" } else { &m.addr },
            m.reachability,
            if m.leader { ", leader" } else { "" }
        );
    }
    println!("  {}", q.next_loss);
    for w in &s.warnings {
        println!("warning: {w}");
    }
}

fn print_generations(g: &[status::GenerationLine]) {
    println!(
        "{:<4} {:<3} {:<16} {:<10} {:<12} {:<12} result",
        "gen", "", "bundle", "version", "identity", "created"
    );
    for l in g {
        println!(
            "{:<4} {:<3} {:<16} {:<10} {:<12} {:<12} {}{}",
            l.number,
            if l.current { "*" } else { "" },
            l.bundle,
            l.version,
            crate::swarm::observed::short(&l.identity),
            l.created,
            l.result,
            l.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        if !l.site.is_empty() {
            let v: Vec<String> = l.site.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("     site: {}", v.join(" "));
        }
    }
}

/// `reemo-bundle pki …`.
#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Print the internal CA's certificate (PEM) for clients to trust, e.g.
    /// `curl --cacert`. The CA key never leaves the state directory.
    CaCert {
        /// State directory.
        #[arg(long, env = "REEMO_BUNDLE_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
        state_dir: PathBuf,
    },
    /// Use the operator's own CA (certificate and key, PEM) instead of making one; checked
    /// first (a CA certificate, valid now, the key matching). Only on a host without a CA.
    ImportCa {
        /// CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM; ECDSA P-256/P-384 or Ed25519).
        #[arg(long)]
        key: PathBuf,
        /// State directory.
        #[arg(long, env = "REEMO_BUNDLE_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
        state_dir: PathBuf,
    },
    /// Move to a new CA (made here, or the operator's `--cert`/`--key`) with overlapping
    /// trust: services first trust both CAs, then their certificates are re-issued, then
    /// the old CA leaves the trust bundle — each step a generation (health-gated, rolled
    /// back as a whole on failure).
    RotateCa {
        /// The operator's new CA certificate (PEM); default: a new internal CA.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a client certificate of the internal CA for an integrator: NAME.crt, NAME.key
    /// (0600) and ca.pem in --out (for mutual TLS with the stack's services).
    IssueClient {
        /// The client's name (its certificate's common name).
        name: String,
        /// Folder to write the files to.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 397d (the default), 30d, 10m.
        #[arg(long, default_value = "397d")]
        lifetime: String,
        /// State directory.
        #[arg(long, env = "REEMO_BUNDLE_STATE_DIR", default_value = crate::state::DEFAULT_DIR)]
        state_dir: PathBuf,
    },
    /// Re-issue every certificate of the current generation with less than a third of its
    /// lifetime left: a new generation (health-gated, rolled back as a whole on failure).
    Renew {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `reemo-bundle cert …`: the operator's own certificates for a stack's external ones.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Serve the operator's certificate for the stack's external certificate NAME, checked
    /// first (the key matches, the chain is in order and links, valid now and for at least
    /// 7 more days, ECDSA or RSA ≥ 2048, its names cover the site's host name); then a new
    /// generation (or the next activation, on a host without one) serves it.
    Import {
        /// The stack's certificate name (an `external: true` entry of x-reemo-certificates).
        name: String,
        /// Certificate chain (PEM): the server certificate, then its intermediates.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Site values to change in the same generation (e.g. --set PUBLIC_HOST=…).
        #[command(flatten)]
        site: SiteArgs,
        /// Check and print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop serving the operator's certificate NAME: back to one of the site CA.
    Remove {
        /// The stack's certificate name.
        name: String,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Timing.
        #[command(flatten)]
        timing: TimingArgs,
        /// Engines and state.
        #[command(flatten)]
        host: HostArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `configure` (and `pki renew`, which changes no value): the current generation again.
fn configure(
    rt: &tokio::runtime::Runtime,
    site: SiteArgs,
    dry_run: bool,
    timing: TimingArgs,
    host: HostArgs,
    json: bool,
) -> Result<i32> {
    configure_with(rt, site, certs::Imports::new(), dry_run, timing, host, json).map(|_| 0)
}

/// [`configure`] with operator certificates to use or drop; the outcome's result.
fn configure_with(
    rt: &tokio::runtime::Runtime,
    site: SiteArgs,
    imports: certs::Imports,
    dry_run: bool,
    timing: TimingArgs,
    host: HostArgs,
    json: bool,
) -> Result<OutcomeResult> {
    let host = host.host(events(json))?;
    let opts = activate::ConfigureOptions {
        dry_run,
        timing: timing.timing(ACTIVATE_MONITOR),
        site_file: site.site_file,
        set: site.set,
        imports,
    };
    let o = rt.block_on(activate::configure(&host, &opts))?;
    print_outcome(&o, json)?;
    Ok(o.result)
}

/// `cert import` / `cert remove`: check what can be checked alone, then make the current
/// generation serve it (recorded on the host only once that generation succeeded); on a host
/// without a generation, record it for the next activation.
fn cert_change(rt: &tokio::runtime::Runtime, cmd: CertCommand) -> Result<i32> {
    let (name, site, dry_run, timing, host, json, import) = match cmd {
        CertCommand::Import {
            name,
            cert,
            key,
            site,
            dry_run,
            timing,
            host,
            json,
        } => {
            let i = certs::check_and_store_import(&host.state_dir, &name, &cert, &key)?;
            for w in &i.warnings {
                eprintln!("warning: {w}");
            }
            (name, site, dry_run, timing, host, json, Some(i.record))
        }
        CertCommand::Remove {
            name,
            dry_run,
            timing,
            host,
            json,
        } => (name, SiteArgs::default(), dry_run, timing, host, json, None),
    };
    let imports = certs::Imports::from([(name.clone(), import.clone())]);
    let has_generation = crate::state::StateDir::open_existing(&host.state_dir)
        .current_generation()?
        .is_some();
    if !has_generation {
        if !dry_run {
            certs::commit_imports(&host.state_dir, &imports)?;
        }
        println!(
            "certificate {name}: {} by the next activation",
            if import.is_some() {
                "served"
            } else {
                "issued by the site CA"
            }
        );
        return Ok(0);
    }
    let state_dir = host.state_dir.clone();
    let r = configure_with(rt, site, imports.clone(), dry_run, timing, host, json)?;
    if matches!(r, OutcomeResult::Activated | OutcomeResult::Unchanged) {
        certs::commit_imports(&state_dir, &imports)?;
    }
    Ok(0)
}

/// Run one host-side command; returns the process exit code.
pub fn run(cmd: HostCommand) -> Result<i32> {
    let rt = runtime()?;
    match cmd {
        HostCommand::Load {
            file,
            host,
            trust,
            json,
        } => {
            let ev = events(json);
            let bundle = crate::bundle::reader::BundleFile::open(&file)
                .with_context(|| format!("verifying bundle {}", file.display()))?;
            activate::check_trust(&bundle, &host.state_dir, &trust.trusted_keys, ev.as_ref())?;
            let host = host.host(ev.clone())?;
            let reports = rt.block_on(async {
                for e in &host.engines {
                    e.swarm_facts().await?;
                }
                images::load_all(Arc::new(bundle), &host.engines, None, ev).await
            })?;
            if json {
                let v: Vec<_> = reports
                    .iter()
                    .map(|r| {
                        serde_json::json!({"engine": r.engine, "loaded": r.loaded,
                            "skipped": r.skipped, "bytes": r.bytes})
                    })
                    .collect();
                print_json("engines", &v)?;
            } else {
                for r in reports {
                    println!(
                        "{}: {} image(s) loaded, {} already present, {} bytes",
                        r.engine, r.loaded, r.skipped, r.bytes
                    );
                }
            }
            Ok(0)
        }
        HostCommand::Activate {
            file,
            dry_run,
            only,
            out_of_order,
            allow_downgrade,
            site,
            trust,
            timing,
            host,
            json,
        } => {
            let host = host.host(events(json))?;
            let opts = ActivateOptions {
                site_file: site.site_file,
                set: site.set,
                dry_run,
                only,
                out_of_order,
                timing: timing.timing(ACTIVATE_MONITOR),
                trusted_keys: trust.trusted_keys,
                allow_downgrade,
            };
            let o = rt.block_on(activate::activate(&host, &file, &opts))?;
            print_outcome(&o, json)?;
            Ok(0)
        }
        HostCommand::Rollback {
            to,
            dry_run,
            timing,
            host,
            json,
        } => {
            let host = host.host(events(json))?;
            let o = rt.block_on(activate::rollback(
                &host,
                to,
                dry_run,
                timing.timing(ROLLBACK_MONITOR),
            ))?;
            print_outcome(&o, json)?;
            Ok(0)
        }
        HostCommand::Pki {
            cmd: PkiCommand::CaCert { state_dir },
        } => {
            print!("{}", certs::ca_certificate(&state_dir)?);
            Ok(0)
        }
        HostCommand::Pki {
            cmd:
                PkiCommand::RotateCa {
                    cert,
                    key,
                    timing,
                    host,
                    json,
                },
        } => {
            let operator = cert.as_deref().zip(key.as_deref());
            let name = certs::rotate_ca(&host.state_dir, operator)?;
            eprintln!("new signing CA {name:?}: moving the stack's certificates to it");
            // trust both, move the leaves, drop the old CA: at most three generations
            for _ in 0..4 {
                let r = configure_with(
                    &rt,
                    SiteArgs::default(),
                    certs::Imports::new(),
                    false,
                    timing.clone(),
                    host.clone(),
                    json,
                )?;
                match r {
                    OutcomeResult::Activated => continue,
                    OutcomeResult::Unchanged => break,
                    other => bail!("CA rotation stopped: the generation was {other:?}; the next activation or `pki rotate-ca` continues it"),
                }
            }
            Ok(0)
        }
        HostCommand::Pki {
            cmd:
                PkiCommand::IssueClient {
                    name,
                    out,
                    lifetime,
                    state_dir,
                },
        } => {
            let secs = crate::stack::lifetime_secs(&lifetime)
                .with_context(|| format!("--lifetime {lifetime:?}"))?;
            let rec = certs::issue_client(&state_dir, &name, &out, secs)?;
            println!(
                "client certificate {name}: {}/{name}.crt and {name}.key, issued by {}, valid until {}",
                out.display(),
                rec.issuer,
                crate::oci::rfc3339(rec.not_after.max(0) as u64)
            );
            Ok(0)
        }
        HostCommand::Cert { cmd } => cert_change(&rt, cmd),
        HostCommand::Pki {
            cmd:
                PkiCommand::ImportCa {
                    cert,
                    key,
                    state_dir,
                },
        } => {
            let name = certs::import_ca(&state_dir, &cert, &key)?;
            println!(
                "imported CA {name:?}: certificates are issued by it from the next activation"
            );
            Ok(0)
        }
        HostCommand::Pki {
            cmd:
                PkiCommand::Renew {
                    dry_run,
                    timing,
                    host,
                    json,
                },
        } => configure(&rt, SiteArgs::default(), dry_run, timing, host, json),
        HostCommand::Configure {
            site,
            dry_run,
            timing,
            host,
            json,
        } => configure(&rt, site, dry_run, timing, host, json),
        HostCommand::Recover { timing, host, json } => {
            let host = host.host(events(json))?;
            let r = rt.block_on(activate::recover(&host, timing.timing(ROLLBACK_MONITOR)))?;
            if json {
                print_json("recover", &serde_json::json!({ "recovered": r }))?;
            } else {
                println!("{}", r.as_deref().unwrap_or("nothing to recover"));
            }
            Ok(0)
        }
        HostCommand::Status { host, json } => {
            let host = host.host(events(json))?;
            let s = rt.block_on(status::status(&host))?;
            if json {
                print_json("status", &s)?;
            } else {
                print_status(&s);
            }
            Ok(0)
        }
        HostCommand::Generations { state_dir, json } => {
            let g = status::generations(&state_dir)?;
            if json {
                print_json("generations", &g)?;
            } else {
                print_generations(&g);
            }
            Ok(0)
        }
        HostCommand::Gc { keep, host, json } => {
            let host = host.host(events(json))?;
            let r = rt.block_on(gc::gc(&host, keep, Timing::with_monitor(ROLLBACK_MONITOR)))?;
            if json {
                print_json("gc", &r)?;
            } else {
                println!(
                    "removed generations {:?}, {} image(s), {} config(s), {} secret(s), {} store entr(ies)",
                    r.generations,
                    r.images.len(),
                    r.configs.len(),
                    r.secrets.len(),
                    r.store.len()
                );
                for k in &r.kept_in_use {
                    println!("kept (in use): {k}");
                }
            }
            Ok(0)
        }
        HostCommand::Swarm(SwarmCommand::Init {
            advertise_addr,
            default_addr_pool,
            data_path_port,
            host,
        }) => {
            let host = host.host(events(false))?;
            let opts = InitOptions {
                advertise: advertise_addr,
                pools: default_addr_pool,
                data_path_port,
            };
            let (id, warnings) = rt.block_on(cluster::swarm_init(&host, &opts))?;
            for w in warnings {
                host.emit(Event::warning(w));
            }
            println!("swarm initialised: node {id} is its manager");
            Ok(0)
        }
        HostCommand::Swarm(SwarmCommand::JoinToken { out, host }) => {
            let host = host.host(events(false))?;
            let w = rt.block_on(cluster::write_join_token(&host, &out))?;
            println!(
                "manager join token of the swarm (read on node {}) written to {} (mode 0600)",
                w.node_id,
                out.display()
            );
            let remotes: Vec<String> = w.remotes.iter().map(|r| format!(" --remote {r}")).collect();
            println!(
                "on each new manager: reemo-bundle swarm join --token-file FILE{}",
                remotes.concat()
            );
            Ok(0)
        }
        HostCommand::Swarm(SwarmCommand::Join {
            token_file,
            remote,
            advertise_addr,
            listen_addr,
            data_path_addr,
            host,
        }) => {
            let host = host.host(events(false))?;
            let opts = JoinOptions {
                remotes: remote,
                advertise: advertise_addr,
                listen: listen_addr,
                data_path: data_path_addr,
            };
            let (j, warnings) = rt.block_on(cluster::swarm_join(&host, &opts, &token_file))?;
            for w in warnings {
                host.emit(Event::warning(w));
            }
            println!(
                "joined the swarm as manager node {}: {} manager(s), {} node(s)",
                j.node_id, j.managers, j.nodes
            );
            Ok(0)
        }
    }
}
