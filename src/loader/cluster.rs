//! Setting up the swarm on air-gapped hosts without the docker CLI: `swarm init`,
//! `swarm join-token --out FILE` (the manager join token into a 0600 file) and
//! `swarm join --token-file FILE` (this engine joins as a manager). Options are validated
//! (`crate::swarm::init`, `crate::swarm::join`) before any engine is asked anything. The
//! join token is a secret: it is read from a file, written only to a file, and appears in
//! no output, event or error (daemon answers are scrubbed of it).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Host;
use crate::engine::{Engine, JoinToken};
use crate::swarm::init::InitOptions;
use crate::swarm::join::{JoinOptions, TokenError};
use crate::swarm::observed::SwarmState;

/// Larger files are not a join token (one is 85 or 87 bytes).
const TOKEN_FILE_MAX: u64 = 4096;
/// How long a joined node may take to report itself active.
const JOIN_ACTIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an active node may take to report its control plane (manager role).
const JOIN_ROLE_GRACE: Duration = Duration::from_secs(5);

/// `swarm init`: the new node's id and warnings about the options.
pub async fn swarm_init(host: &Host, opts: &InitOptions) -> Result<(String, Vec<String>)> {
    let warnings = opts.validate()?;
    let engine = host.manager();
    let facts = engine.swarm_facts().await?;
    if facts.state != SwarmState::Inactive {
        bail!(
            "the engine at {} is already part of a swarm (state {}, node {}); a swarm is not re-initialised, and its advertise address, address pool and data path port cannot change once it exists",
            engine.url(),
            facts.state,
            facts.node_id
        );
    }
    let id = engine.init_swarm(&opts.request()).await?;
    Ok((id, warnings))
}

const TOKEN_ADVICE: &str =
    "write the manager join token into it with `reemo-bundle swarm join-token --out FILE` on a manager of the swarm";

/// Read and check a token file; warnings (a file other users can read). Errors name the
/// file and never show its content.
pub fn read_token_file(path: &Path) -> Result<(JoinToken, Vec<String>)> {
    let p = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("--token-file {p}: cannot read it ({e}); {TOKEN_ADVICE}"))?;
    if !meta.is_file() {
        bail!("--token-file {p}: not a regular file; {TOKEN_ADVICE}");
    }
    if meta.len() > TOKEN_FILE_MAX {
        bail!(
            "--token-file {p}: {} bytes, too large to be a join token (expected one line, SWMTKN-…)",
            meta.len()
        );
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("--token-file {p}: cannot read it as text"))?;
    let token = JoinToken::parse(&text).map_err(|e| {
        let advice = match e {
            TokenError::Empty | TokenError::NotSwarm => format!("; {TOKEN_ADVICE}"),
            _ => String::new(),
        };
        anyhow::anyhow!("--token-file {p}: {e}{advice}")
    })?;
    let mut warnings = Vec::new();
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        warnings.push(format!(
            "--token-file {p}: other users may read it (mode {mode:04o}); the join token is a secret that makes any host a manager of the swarm: `chmod 600` it, and delete it once every manager has joined"
        ));
    }
    Ok((token, warnings))
}

/// What `swarm join` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// This node's id.
    pub node_id: String,
    /// Managers in the swarm now.
    pub managers: i64,
    /// Nodes in the swarm now.
    pub nodes: i64,
}

/// `swarm join`: validate the options and the token file, refuse an engine already in a
/// swarm, join as a manager, and ask the swarm which role the token gave: a worker token
/// makes the node leave again (the seeds want managers only) and is an error.
pub async fn swarm_join(
    host: &Host,
    opts: &JoinOptions,
    token_file: &Path,
) -> Result<(Joined, Vec<String>)> {
    swarm_join_with(host, opts, token_file, JOIN_ROLE_GRACE).await
}

/// [`swarm_join`] with the time an active node has to report the manager role.
async fn swarm_join_with(
    host: &Host,
    opts: &JoinOptions,
    token_file: &Path,
    role_grace: Duration,
) -> Result<(Joined, Vec<String>)> {
    let (token, warnings) = read_token_file(token_file)?;
    let req = opts.request(token)?;
    let engine = host.manager();
    let facts = engine.swarm_facts().await?;
    if facts.state != SwarmState::Inactive {
        bail!(
            "the engine at {} is already part of a swarm (state {}, node {}, {}); it is not joined to another one",
            engine.url(),
            facts.state,
            facts.node_id,
            if facts.manager { "a manager" } else { "a worker" }
        );
    }
    let remotes = req.remotes.join(", ");
    engine.join_swarm(&req).await.with_context(|| {
        format!(
            "joining the engine at {} to the swarm of {remotes}",
            engine.url()
        )
    })?;
    let facts = settle(engine, role_grace).await?;
    if !facts.manager {
        let left = engine.leave_swarm(false).await;
        let undo = match left {
            Ok(()) => "it has left the swarm again; the swarm lists it as a down worker until `docker node rm` removes it there".to_string(),
            Err(e) => format!("leaving the swarm again failed too ({e}); it is still a worker"),
        };
        bail!(
            "--token-file {}: the token is a worker token: the engine at {} joined the swarm of {remotes} as worker node {}, and {undo}; the seeds want managers only: {TOKEN_ADVICE}",
            token_file.display(),
            engine.url(),
            facts.node_id
        );
    }
    Ok((
        Joined {
            node_id: facts.node_id,
            managers: facts.managers,
            nodes: facts.nodes,
        },
        warnings,
    ))
}

/// Wait (bounded) until the engine reports itself active, and, for a manager, its control
/// plane; returns the last facts.
async fn settle(engine: &dyn Engine, role_grace: Duration) -> Result<crate::engine::SwarmFacts> {
    let start = Instant::now();
    let mut active_since: Option<Instant> = None;
    loop {
        let f = engine.swarm_facts().await?;
        if f.state == SwarmState::Active {
            let since = *active_since.get_or_insert_with(Instant::now);
            if f.manager || since.elapsed() >= role_grace {
                return Ok(f);
            }
        } else if start.elapsed() >= JOIN_ACTIVE_TIMEOUT {
            bail!(
                "the engine at {} did not become an active swarm member within {}s after joining (state {})",
                engine.url(),
                JOIN_ACTIVE_TIMEOUT.as_secs(),
                f.state
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `swarm join-token` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenWritten {
    /// The manager it was read from.
    pub node_id: String,
    /// The addresses its managers are reached at (for `swarm join --remote`).
    pub remotes: Vec<String>,
}

/// `swarm join-token --out FILE`: the manager join token into FILE (mode 0600, written
/// atomically: a reader finds the old file or the new one).
pub async fn write_join_token(host: &Host, out: &Path) -> Result<TokenWritten> {
    let o = out.display();
    if out.is_dir() {
        bail!("--out {o}: is a folder; give the path of the file to write");
    }
    let dir = crate::fsutil::parent_dir(out);
    if !dir.is_dir() {
        bail!("--out {o}: folder {} does not exist", dir.display());
    }
    let engine = host.manager();
    let facts = engine.require_manager().await?;
    let token = engine.manager_join_token().await?;
    crate::fsutil::write_atomic_mode(out, format!("{}\n", token.expose()).as_bytes(), 0o600)
        .with_context(|| format!("--out {o}: writing the manager join token"))?;
    let mut remotes: Vec<String> = engine
        .managers()
        .await?
        .into_iter()
        .filter(|m| m.reachability == "reachable" && !m.addr.is_empty())
        .map(|m| m.addr)
        .collect();
    remotes.sort();
    Ok(TokenWritten {
        node_id: facts.node_id,
        remotes,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::fake::FakeEngine;
    use crate::events::{Event, Events};

    /// Every event, to show that none carries the token.
    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<String>>);

    impl Events for Recorded {
        fn emit(&self, e: Event) {
            self.0.lock().unwrap().push(format!("{e} {e:?}"));
        }
    }

    fn host(e: &FakeEngine, dir: &Path) -> (Host, Arc<Recorded>) {
        let ev = Arc::new(Recorded::default());
        (
            Host {
                engines: vec![Arc::new(e.clone())],
                state_dir: dir.join("state"),
                events: ev.clone(),
            },
            ev,
        )
    }

    fn opts() -> JoinOptions {
        JoinOptions {
            remotes: vec!["10.0.0.1".into()],
            ..Default::default()
        }
    }

    fn secret_part(token: &str) -> &str {
        token.rsplit('-').next().unwrap()
    }

    #[tokio::test]
    async fn join_token_then_join_as_manager_never_shows_the_token() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let (h1, ev1) = host(&m1, tmp.path());
        let file = tmp.path().join("token");
        let w = write_join_token(&h1, &file).await.unwrap();
        assert_eq!(w.node_id, "node-m1");
        assert_eq!(w.remotes, ["m1:2377"]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("{}\n", m1.join_token(true)));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let m2 = m1.candidate("m2");
        let (h2, ev2) = host(&m2, tmp.path());
        let (j, warnings) = swarm_join(&h2, &opts(), &file).await.unwrap();
        assert_eq!(
            j,
            Joined {
                node_id: "node-m2".into(),
                managers: 2,
                nodes: 2
            }
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let log = m1.mutations().join("\n");
        assert!(
            log.contains("join_swarm fake://m2 as manager via 10.0.0.1:2377"),
            "{log}"
        );
        let secret = secret_part(&text);
        for seen in [
            log,
            format!("{j:?} {w:?}"),
            ev1.0.lock().unwrap().join(""),
            ev2.0.lock().unwrap().join(""),
        ] {
            assert!(!seen.contains(secret), "the token leaked: {seen}");
        }

        // once in a swarm, a second join is refused before the engine is asked to join
        let e = format!("{:#}", swarm_join(&h2, &opts(), &file).await.unwrap_err());
        assert!(
            e.contains("already part of a swarm") && e.contains("node-m2"),
            "{e}"
        );
        assert_eq!(
            m1.mutations()
                .iter()
                .filter(|m| m.starts_with("join_swarm"))
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_worker_token_joins_then_leaves_and_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let file = tmp.path().join("worker-token");
        std::fs::write(&file, m1.join_token(false)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let w = m1.candidate("w1");
        let (h, _) = host(&w, tmp.path());
        let grace = Duration::from_millis(50);
        let e = swarm_join_with(&h, &opts(), &file, grace)
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("is a worker token") && e.contains("has left the swarm again"),
            "{e}"
        );
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(!e.contains(secret_part(&m1.join_token(false))), "{e}");
        assert_eq!(
            m1.mutations()
                .iter()
                .filter(|m| m.starts_with("leave_swarm"))
                .count(),
            1,
            "{:?}",
            m1.mutations()
        );
        assert_eq!(w.swarm_facts().await.unwrap().state, SwarmState::Inactive);
    }

    #[tokio::test]
    async fn bad_token_files_are_refused_before_the_engine_is_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let w = m1.candidate("m2");
        let (h, _) = host(&w, tmp.path());
        let good = m1.join_token(true);
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("missing", None, "cannot read it"),
            (
                "empty",
                Some(String::new()),
                "is empty; write the manager join token",
            ),
            (
                "cli",
                Some(format!("docker swarm join --token {good}")),
                "does not hold a swarm join token",
            ),
            (
                "short",
                Some(good[..good.len() - 1].to_string()),
                "secret has 24 characters, expected 25",
            ),
        ];
        for (name, content, want) in cases {
            let file = tmp.path().join(name);
            if let Some(c) = &content {
                std::fs::write(&file, c).unwrap();
            }
            let e = format!("{:#}", swarm_join(&h, &opts(), &file).await.unwrap_err());
            assert!(
                e.starts_with(&format!("--token-file {}: ", file.display())),
                "{e}"
            );
            assert!(e.contains(want), "{name}: {e}");
            assert!(
                !e.contains(secret_part(&good)),
                "{name}: the token leaked: {e}"
            );
        }
        // bad options are refused after the file, before the engine too
        let file = tmp.path().join("good");
        std::fs::write(&file, &good).unwrap();
        let bad = JoinOptions {
            remotes: vec!["10.0.0.1:x".into()],
            ..Default::default()
        };
        let e = format!("{:#}", swarm_join(&h, &bad, &file).await.unwrap_err());
        assert!(e.starts_with("--remote \"10.0.0.1:x\""), "{e}");
        assert!(m1.mutations().is_empty(), "{:?}", m1.mutations());
        // a readable token file works, with a warning
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, warnings) = swarm_join(&h, &opts(), &file).await.unwrap();
        assert!(
            warnings[0].contains("other users may read it (mode 0644)"),
            "{warnings:?}"
        );
    }

    #[tokio::test]
    async fn a_daemon_error_that_quotes_the_token_is_scrubbed() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let w = m1.candidate("m2");
        let good = m1.join_token(true);
        w.fail(
            "join_swarm",
            None,
            crate::engine::EngineError::Other {
                op: "join".into(),
                message: format!("rejected token {good}"),
            },
            1,
        );
        let file = tmp.path().join("t");
        std::fs::write(&file, &good).unwrap();
        let (h, _) = host(&w, tmp.path());
        let e = format!("{:#}", swarm_join(&h, &opts(), &file).await.unwrap_err());
        assert!(e.contains("rejected token <join token>"), "{e}");
        assert!(!e.contains(secret_part(&good)), "{e}");
    }

    #[tokio::test]
    async fn status_reports_a_lost_manager_and_no_tolerance_left() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let (m2, m3) = (m1.join("m2", true), m1.join("m3", true));
        let (h, _) = host(&m1, tmp.path());
        let st = super::super::status::status(&h).await.unwrap();
        assert_eq!(
            (st.quorum.needed, st.quorum.tolerates, st.tolerated_failures),
            (2, 1, 1)
        );
        assert!(st.warnings.is_empty(), "{:?}", st.warnings);

        m1.set_reachable(m3.node_id(), false);
        m1.join("w1", false);
        let st = super::super::status::status(&h).await.unwrap();
        let q = &st.quorum;
        assert_eq!(
            (q.managers, q.reachable, q.needed, q.tolerates, q.workers),
            (3, 2, 2, 0, 1)
        );
        assert_eq!(q.nodes[0].id, "node-m1", "the leader first");
        assert!(q.nodes[0].leader);
        let w = st.warnings.join("\n");
        assert!(
            w.contains("manager m3 (node-m3) at m3:2377 is unreachable"),
            "{w}"
        );
        assert!(w.contains("one more manager loss loses the quorum"), "{w}");
        assert!(w.contains("1 worker node(s) (w1 (node-w1))"), "{w}");
        assert_eq!(st.tolerated_failures, 0);
        assert!(m2.swarm_facts().await.unwrap().manager);
    }

    #[tokio::test]
    async fn join_token_needs_a_manager_and_a_file_path() {
        let tmp = tempfile::tempdir().unwrap();
        let m1 = FakeEngine::manager("m1");
        let worker = m1.join("w1", false);
        let (h, _) = host(&worker, tmp.path());
        let e = format!(
            "{:#}",
            write_join_token(&h, &tmp.path().join("t"))
                .await
                .unwrap_err()
        );
        assert!(e.contains("is a swarm worker"), "{e}");
        assert!(!tmp.path().join("t").exists());
        let (h, _) = host(&m1, tmp.path());
        let e = format!("{:#}", write_join_token(&h, tmp.path()).await.unwrap_err());
        assert!(e.contains("is a folder"), "{e}");
        let e = format!(
            "{:#}",
            write_join_token(&h, &tmp.path().join("no/t"))
                .await
                .unwrap_err()
        );
        assert!(e.contains("does not exist"), "{e}");
    }
}
