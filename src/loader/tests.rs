//! The loader's transaction on the in-memory engine: failures at each step, recovery for
//! each journal state, fail-fast convergence, gc, typed engine errors, and dry runs and
//! `status` that change nothing. No Docker daemon involved.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use super::activate;
use super::pipeline::{self, Applied, Target};
use super::steps::apply_step;
use super::testkit::{self, timing};
use super::{gc, recover, status, Host};
use crate::engine::fake::{FakeEngine, Script};
use crate::engine::EngineError;
use crate::events::Recorder;
use crate::state::journal::{Journal, Kind};
use crate::state::{now, GenResult, Generation, StateDir, StoreFile};
use crate::swarm::desired::DesiredStack;
use crate::swarm::plan::Step;

const STACK: &str = "app";

struct Fx {
    _dir: tempfile::TempDir,
    engine: FakeEngine,
    host: Host,
    events: Arc<Recorder>,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::manager("m");
        engine.add_image(&testkit::image_id(STACK));
        let (host, events) = testkit::host(&[&engine], &dir.path().join("state"));
        Fx {
            _dir: dir,
            engine,
            host,
            events,
        }
    }

    fn state(&self) -> StateDir {
        StateDir::open(&self.host.state_dir).unwrap()
    }

    /// Service name → spec, as the engine holds them.
    fn specs(&self) -> BTreeMap<String, Value> {
        self.engine
            .snapshot()
            .services
            .into_iter()
            .map(|(k, (s, _))| (k, s))
            .collect()
    }
}

fn target(d: &DesiredStack) -> Target {
    Target {
        kind: Kind::Activate,
        desired: d.clone(),
        generation: None,
        bundle: None,
        store_files: vec![],
        new_secrets: BTreeMap::new(),
        remove_others: true,
    }
}

/// What `activate` does once it has a desired state: lock, recover, observe, plan, check,
/// apply.
async fn activate(host: &Host, d: &DesiredStack) -> Result<Applied> {
    let state = StateDir::open(&host.state_dir)?;
    let _lock = state.lock()?;
    recover::recover(&state, host.manager(), timing(), host.events.as_ref()).await?;
    let t = target(d);
    let (view, p) = plan(host, &state, &t).await?;
    pipeline::check_feasible(&t.desired, &view, &p)?;
    pipeline::apply(host, &state, &t, &p, timing()).await
}

async fn plan(
    host: &Host,
    state: &StateDir,
    t: &Target,
) -> Result<(pipeline::HostView, pipeline::HostPlan)> {
    let nodes = pipeline::require_swarm(host).await?;
    let view = pipeline::observe(host, nodes, state, &t.desired).await?;
    let p = pipeline::plan_host(t, &view)?;
    Ok((view, p))
}

fn v1() -> DesiredStack {
    testkit::desired(STACK, &[("web", 1), ("api", 1)])
}

fn v2() -> DesiredStack {
    testkit::desired_version(STACK, "2.0.0", &[("web", 2), ("api", 2), ("worker", 1)])
}

/// Every file under `dir` with its bytes, for before/after comparisons.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(format!("{}/", p.display()), vec![]);
                todo.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn activate_update_and_unchanged_on_the_fake() {
    let fx = Fx::new();
    assert_eq!(
        activate(&fx.host, &v1()).await.unwrap(),
        Applied::Current(1)
    );
    assert_eq!(fx.specs().len(), 2);
    assert_eq!(
        activate(&fx.host, &v1()).await.unwrap(),
        Applied::Unchanged(1)
    );
    assert_eq!(
        activate(&fx.host, &v2()).await.unwrap(),
        Applied::Current(2)
    );
    let specs = fx.specs();
    assert_eq!(
        specs["app_web"]["Mode"]["Replicated"]["Replicas"], 2,
        "{specs:?}"
    );
    assert!(specs.contains_key("app_worker"));
    let state = fx.state();
    assert_eq!(state.current().unwrap(), Some(2));
    assert!(state.journal().unwrap().is_none());
    assert!(fx
        .events
        .lines()
        .iter()
        .any(|l| l.contains("create service app_worker")));
}

/// The reference a service is pinned by follows the stores of the nodes that hold its image
/// (as the loader labelled them): the config digest while every such node is classic,
/// `repository:tag` once a containerd-store node holds it too.
#[tokio::test]
async fn services_are_pinned_by_what_the_stores_of_the_holding_nodes_resolve() {
    use crate::engine::Engine as _;
    use crate::swarm::labels::{image_label, STORE_LABEL};
    let fx = Fx::new();
    let id = testkit::image_id(STACK);
    let image = |fx: &Fx| fx.specs()["app_web"]["TaskTemplate"]["ContainerSpec"]["Image"].clone();
    activate(&fx.host, &v1()).await.unwrap();
    assert_eq!(image(&fx), id.as_str());
    let node = fx.engine.swarm_facts().await.unwrap().node_id;
    let labels = fx.engine.node(&node).await.unwrap().labels;
    assert_eq!(labels[STORE_LABEL], "classic", "{labels:?}");

    let reference = v1().images[0].reference.clone();
    fx.engine.tag_image(&id, &reference);
    let _worker = fx.engine.join("w", false);
    for (k, v) in [
        (image_label(&id), "present"),
        (STORE_LABEL.to_string(), "containerd"),
    ] {
        fx.engine
            .set_node_label("node-w", &k, Some(v))
            .await
            .unwrap();
    }
    assert_eq!(
        activate(&fx.host, &v2()).await.unwrap(),
        Applied::Current(2)
    );
    assert_eq!(
        image(&fx),
        reference.as_str(),
        "mixed stores: pinned by tag"
    );
}

/// How a case makes the second activation fail.
enum Break {
    /// The engine refuses this operation on this object.
    Refuse(&'static str, &'static str),
    /// The service's tasks behave like this.
    Tasks(&'static str, Script),
}

#[tokio::test]
async fn failure_at_each_step_restores_the_previous_specs_and_removes_what_was_created() {
    let cases = [
        Break::Refuse("update_service", "app_api"),
        Break::Refuse("update_service", "app_web"),
        Break::Refuse("create_service", "app_worker"),
        Break::Tasks("app_worker", Script::Fail(3)),
        Break::Tasks("app_worker", Script::Reject("no suitable node".into())),
    ];
    for case in cases {
        let fx = Fx::new();
        activate(&fx.host, &v1()).await.unwrap();
        let before = fx.specs();
        let what = match case {
            Break::Refuse(op, object) => {
                fx.engine.fail(
                    op,
                    Some(object),
                    EngineError::Other {
                        op: op.into(),
                        message: "injected".into(),
                    },
                    1,
                );
                format!("{op} {object}")
            }
            Break::Tasks(service, script) => {
                let w = format!("{service} {script:?}");
                fx.engine.script(service, script);
                w
            }
        };
        let e = activate(&fx.host, &v2()).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("generation 1, which stays current"),
            "{what}: {msg}"
        );
        let after = fx.specs();
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{what}: created services are removed"
        );
        for (name, spec) in &before {
            assert_eq!(
                after[name]["Labels"], spec["Labels"],
                "{what}: {name} has its previous spec"
            );
            assert_eq!(after[name]["Mode"], spec["Mode"], "{what}: {name}");
        }
        let state = fx.state();
        assert_eq!(state.current().unwrap(), Some(1), "{what}");
        assert!(state.journal().unwrap().is_none(), "{what}");
        let g2 = state.generation(2).unwrap();
        assert_eq!(g2.result, GenResult::Failed, "{what}");
        assert!(g2.error.is_some(), "{what}");
    }
}

#[tokio::test]
async fn convergence_fails_fast_on_a_rejected_task() {
    let fx = Fx::new();
    fx.engine.script(
        "app_web",
        Script::Reject("no suitable node (3 nodes)".into()),
    );
    fx.engine.set_logs("app_web", "");
    let mut t = timing();
    t.timeout = Duration::from_secs(600);
    let state = fx.state();
    let d = v1();
    let tgt = target(&d);
    let (_, p) = plan(&fx.host, &state, &tgt).await.unwrap();
    // a deadline far away: only failing fast ends this before the guard below
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline::apply(&fx.host, &state, &tgt, &p, t),
    )
    .await
    .expect("convergence waited although a task was rejected");
    let msg = format!("{:#}", r.unwrap_err());
    assert!(
        msg.contains("service app_web failed") && msg.contains("rejected"),
        "{msg}"
    );
    assert!(msg.contains("no suitable node"), "{msg}");
}

#[tokio::test]
async fn a_failed_task_is_named_with_its_exit_code_and_logs() {
    let fx = Fx::new();
    fx.engine.script("app_api", Script::Fail(3));
    fx.engine.set_logs("app_api", "migration failed\n");
    let msg = format!("{:#}", activate(&fx.host, &v1()).await.unwrap_err());
    assert!(msg.contains("exit code 3"), "{msg}");
    assert!(msg.contains("migration failed"), "{msg}");
    assert!(
        msg.contains("the services it created were removed"),
        "{msg}"
    );
    assert!(
        fx.specs().is_empty(),
        "first activation failed: nothing stays"
    );
}

/// Generation 2 recorded, its journal written with `done` steps applied, and the process
/// gone: what a crash leaves. Returns the plan's steps.
async fn crash_during_v2(fx: &Fx, done: usize) -> Vec<Step> {
    let state = fx.state();
    let d = v2();
    let (_, p) = plan(&fx.host, &state, &target(&d)).await.unwrap();
    state
        .put_generation(&Generation {
            number: 2,
            created: now(),
            result: GenResult::Pending,
            error: None,
            desired: d.clone(),
        })
        .unwrap();
    state
        .put_journal(&Journal {
            kind: Kind::Activate,
            pid: 1,
            started: now(),
            target: 2,
            new_generation: true,
            previous: Some(1),
            steps: p.swarm.steps.clone(),
            done,
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &p.swarm.steps[..done] {
        apply_step(s, &d, &state, fx.host.manager(), deadline, timing())
            .await
            .unwrap();
    }
    p.swarm.steps
}

#[tokio::test]
async fn recovery_reverts_a_crash_after_any_number_of_steps() {
    let steps = {
        let fx = Fx::new();
        activate(&fx.host, &v1()).await.unwrap();
        crash_during_v2(&fx, 0).await
    };
    assert!(steps.len() >= 4, "{steps:?}");
    for done in 0..=steps.len() {
        let fx = Fx::new();
        activate(&fx.host, &v1()).await.unwrap();
        let before = fx.specs();
        crash_during_v2(&fx, done).await;
        let state = fx.state();
        let msg = recover::recover(&state, fx.host.manager(), timing(), fx.host.events.as_ref())
            .await
            .unwrap()
            .expect("something was recovered");
        assert!(msg.contains("generation 2 reverted"), "{done}: {msg}");
        let after = fx.specs();
        assert_eq!(after.len(), before.len(), "{done} steps: {after:?}");
        for (name, spec) in &before {
            assert_eq!(after[name]["Labels"], spec["Labels"], "{done}: {name}");
        }
        assert_eq!(state.current().unwrap(), Some(1));
        assert!(state.journal().unwrap().is_none());
        assert_eq!(state.generation(2).unwrap().result, GenResult::Failed);
        // nothing is left to do
        let again = recover::recover(&state, fx.host.manager(), timing(), fx.host.events.as_ref())
            .await
            .unwrap();
        assert_eq!(again, None);
    }
}

#[tokio::test]
async fn recovery_finishes_a_crash_after_the_switch_and_abandons_stale_pending() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    let steps = crash_during_v2(&fx, 0).await;
    let state = fx.state();
    // every step done and current switched, then the crash
    let d = v2();
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in &steps {
        apply_step(s, &d, &state, fx.host.manager(), deadline, timing())
            .await
            .unwrap();
    }
    state.set_current(2).unwrap();
    let mutations = fx.engine.mutations().len();
    let msg = recover::recover(&state, fx.host.manager(), timing(), fx.host.events.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert!(msg.contains("finished it"), "{msg}");
    assert_eq!(
        fx.engine.mutations().len(),
        mutations,
        "finishing touches no service"
    );
    assert_eq!(state.generation(2).unwrap().result, GenResult::Succeeded);
    assert!(state.journal().unwrap().is_none());

    // a generation recorded just before a crash, with no journal: nothing had changed
    state
        .put_generation(&Generation {
            number: 3,
            created: now(),
            result: GenResult::Pending,
            error: None,
            desired: v1(),
        })
        .unwrap();
    let r = recover::recover(&state, fx.host.manager(), timing(), fx.host.events.as_ref())
        .await
        .unwrap();
    assert_eq!(r, None);
    assert_eq!(state.generation(3).unwrap().result, GenResult::Failed);
    assert_eq!(fx.engine.mutations().len(), mutations);
}

#[tokio::test]
async fn status_and_rollback_dry_run_change_nothing_even_with_an_unfinished_journal() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    activate(&fx.host, &v2()).await.unwrap();
    // an interrupted third activation: a real rollback would first revert it
    let state = fx.state();
    state
        .put_journal(&Journal {
            kind: Kind::Activate,
            pid: 1,
            started: now(),
            target: 2,
            new_generation: false,
            previous: Some(1),
            steps: vec![Step::RemoveService {
                service: "app_worker".into(),
            }],
            done: 0,
        })
        .unwrap();
    state.set_current(1).unwrap();
    let files = tree(&fx.host.state_dir);
    let snapshot = fx.engine.snapshot();
    let mutations = fx.engine.mutations();

    let st = status::status(&fx.host).await.unwrap();
    let j = st
        .journal
        .expect("status reports the unfinished activation");
    assert!(j.contains("reemo-bundle recover"), "{j}");

    let o = activate::rollback(&fx.host, Some(2), true, timing())
        .await
        .unwrap();
    assert_eq!(o.result, activate::OutcomeResult::Planned);
    assert!(o.unfinished.unwrap().contains("reemo-bundle recover"));

    assert_eq!(
        tree(&fx.host.state_dir),
        files,
        "the state directory changed"
    );
    assert_eq!(fx.engine.snapshot(), snapshot, "the engine changed");
    assert_eq!(fx.engine.mutations(), mutations);
    assert!(state.journal().unwrap().is_some());
}

#[tokio::test]
async fn rollback_returns_to_the_previous_generation_through_the_same_pipeline() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    let v1_specs = fx.specs();
    activate(&fx.host, &v2()).await.unwrap();
    let o = activate::rollback(&fx.host, None, false, timing())
        .await
        .unwrap();
    assert_eq!(o.result, activate::OutcomeResult::RolledBack);
    assert_eq!(o.generation, Some(1));
    let now_specs = fx.specs();
    assert_eq!(
        now_specs.len(),
        v1_specs.len(),
        "worker removed: {now_specs:?}"
    );
    for (name, spec) in &v1_specs {
        assert_eq!(now_specs[name]["Labels"], spec["Labels"], "{name}");
    }
    assert_eq!(fx.state().current().unwrap(), Some(1));
    // rolling back to the current generation again does nothing
    let o = activate::rollback(&fx.host, Some(1), false, timing())
        .await
        .unwrap();
    assert_eq!(o.result, activate::OutcomeResult::Unchanged);

    // an image gone from the engine: refused before anything changes
    fx.engine.drop_image(&testkit::image_id(STACK));
    let m = fx.engine.mutations();
    let e = activate::rollback(&fx.host, Some(2), false, timing())
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("activate its bundle file again"),
        "{e:#}"
    );
    assert_eq!(fx.engine.mutations(), m);
}

#[tokio::test]
async fn gc_keeps_what_the_current_generation_uses() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    activate(&fx.host, &v2()).await.unwrap();
    activate::rollback(&fx.host, Some(1), false, timing())
        .await
        .unwrap();
    let r = gc::gc(&fx.host, 1, timing()).await.unwrap();
    assert_eq!(
        r.generations,
        vec![2],
        "only the current generation 1 stays"
    );
    let state = fx.state();
    assert_eq!(state.current().unwrap(), Some(1));
    assert!(state.generation(1).is_ok());
    // both generations use the same image: it stays
    assert!(r.images.is_empty(), "{:?}", r.images);
    assert_eq!(fx.specs().len(), 2);
}

#[test]
fn gc_selection_never_takes_what_a_kept_generation_uses() {
    let g = |n: u64, result: GenResult, d: DesiredStack| Generation {
        number: n,
        created: n,
        result,
        error: None,
        desired: d,
    };
    let mut other = testkit::desired("app", &[("web", 1)]);
    other.images[0].id = "sha256:only-in-3".into();
    other.bundle.identity = "id-3".into();
    let gens = vec![
        g(1, GenResult::Succeeded, v1()),
        g(2, GenResult::Failed, v2()),
        g(3, GenResult::Succeeded, other),
        g(4, GenResult::Succeeded, v2()),
    ];
    // current is 1 (rolled back): keep 1 and the newest succeeded one (4)
    let s = gc::select(&gens, Some(1), 2);
    assert_eq!(s.keep.iter().copied().collect::<Vec<_>>(), vec![1, 4]);
    assert_eq!(s.drop, vec![2, 3]);
    assert_eq!(
        s.images.iter().cloned().collect::<Vec<_>>(),
        vec!["sha256:only-in-3".to_string()]
    );
    assert!(s.used_store.contains(&v1().bundle.identity));
    assert!(!s.used_store.contains("id-3"));
    // keep 1: only current
    let s = gc::select(&gens, Some(1), 1);
    assert_eq!(s.drop, vec![2, 3, 4]);
    assert!(s.images.contains("sha256:only-in-3"));
    assert!(!s.images.contains(&v1().images[0].id));
}

#[tokio::test]
async fn engine_errors_are_typed_a_409_in_a_hash_is_not_already_exists() {
    let files = BTreeMap::from([("stack/motd.txt".to_string(), b"hello 409\n".to_vec())]);
    let compose = "version: \"3.8\"\nconfigs:\n  motd:\n    file: ./motd.txt\nservices:\n  web:\n    image: img\n    configs: [motd]\n";
    let d = testkit::desired_files(STACK, "1.0.0", compose, &files);
    let fx = Fx::new();
    let state = fx.state();
    state
        .import(
            &d.bundle.identity,
            &[StoreFile::verified(
                "stack/motd.txt",
                b"hello 409\n".to_vec(),
            )],
        )
        .unwrap();
    let name = d.configs[0].name.clone();
    // a daemon failure whose text mentions 409 (as a content hash may) is a failure
    fx.engine.fail(
        "create_config",
        Some(&name),
        EngineError::Other {
            op: format!("creating config {name}"),
            message: "disk full (request 409f00)".into(),
        },
        1,
    );
    let msg = format!("{:#}", activate(&fx.host, &d).await.unwrap_err());
    assert!(msg.contains("disk full"), "{msg}");
    // a real conflict (the name exists: same content) is fine
    fx.engine.fail(
        "create_config",
        Some(&name),
        EngineError::Conflict {
            op: format!("creating config {name}"),
            message: "already exists".into(),
        },
        1,
    );
    let e = activate(&fx.host, &d).await;
    // the conflict was injected without the config existing: the service step then
    // finds no such config, which proves the conflict itself was accepted
    let msg = format!("{:#}", e.unwrap_err());
    assert!(
        msg.contains(&format!("config {name} does not exist")),
        "{msg}"
    );
}

#[tokio::test]
async fn stale_versions_are_retried_and_a_vanished_network_is_created_again() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    fx.engine.fail(
        "update_service",
        Some("app_web"),
        EngineError::OutOfSequence {
            op: "updating app_web".into(),
            message: "update out of sequence".into(),
        },
        2,
    );
    activate(&fx.host, &v2()).await.unwrap();

    // `docker stack rm` removed the network between plan and create
    let fx = Fx::new();
    let d = v1();
    let net = d.networks[0].name.clone();
    fx.engine.fail(
        "create_service",
        Some("app_api"),
        EngineError::NetworkGone {
            op: "creating app_api".into(),
            network: net.clone(),
        },
        1,
    );
    activate(&fx.host, &d).await.unwrap();
    let creates = fx
        .engine
        .mutations()
        .iter()
        .filter(|m| *m == &format!("create_network {net}"))
        .count();
    assert_eq!(
        creates,
        2,
        "created, then created again: {:?}",
        fx.engine.mutations()
    );
}

#[tokio::test]
async fn a_revert_that_fails_too_keeps_the_journal_and_the_next_command_retries_it() {
    let fx = Fx::new();
    activate(&fx.host, &v1()).await.unwrap();
    let before = fx.specs();
    // app_api's update works, app_web's fails; re-applying app_api's previous spec
    // during the revert fails too
    let injected = |s: &str| EngineError::Other {
        op: format!("updating {s}"),
        message: "injected".into(),
    };
    fx.engine
        .fail("update_service", Some("app_web"), injected("app_web"), 1);
    fx.engine
        .fail_after("update_service", Some("app_api"), injected("app_api"), 1, 1);
    let msg = format!("{:#}", activate(&fx.host, &v2()).await.unwrap_err());
    assert!(
        msg.contains("failed too") && msg.contains("retries the revert"),
        "{msg}"
    );
    let state = fx.state();
    assert!(
        state.journal().unwrap().is_some(),
        "journal kept for the retry"
    );
    assert_eq!(state.current().unwrap(), Some(1));
    let st = status::status(&fx.host).await.unwrap();
    assert!(st.journal.unwrap().contains("reemo-bundle recover"));
    let r = recover::recover(&state, fx.host.manager(), timing(), fx.host.events.as_ref())
        .await
        .unwrap()
        .unwrap();
    assert!(r.contains("generation 1 stays current"), "{r}");
    assert!(state.journal().unwrap().is_none());
    for (name, spec) in &before {
        assert_eq!(fx.specs()[name]["Labels"], spec["Labels"], "{name}");
    }
}

#[test]
fn import_refuses_bytes_that_differ_from_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let mut f = StoreFile::verified("stack/motd.txt", b"hello\n".to_vec());
    f.data = b"hellO\n".to_vec();
    let e = state.import("abc", &[f]).unwrap_err().to_string();
    assert!(
        e.contains("stack/motd.txt") && e.contains("changed after it was verified"),
        "{e}"
    );
    assert!(
        state.store_entries().unwrap().is_empty(),
        "nothing imported"
    );
    let ok = StoreFile::verified("stack/motd.txt", b"hello\n".to_vec());
    assert!(state.import("abc", &[ok]).unwrap());
}

#[tokio::test]
async fn a_failed_activation_puts_the_previous_node_roles_back() {
    let fx = Fx::new();
    let w = fx.engine.join("w", false);
    w.add_image(&testkit::image_id(STACK));
    let (host, _) = testkit::host(&[&fx.engine, &w], &fx.host.state_dir);
    let yaml = |nodes: &str, cmd: &str| {
        format!(
            "version: \"3.8\"\nx-reemo-node-roles:\n  portal: \"{nodes}\"\nservices:\n  portal:\n    image: img\n    x-reemo-role: portal\n    command: [\"{cmd}\"]\n"
        )
    };
    let role = crate::swarm::labels::role_label("portal");
    let roles = |fx: &Fx| -> Vec<String> {
        fx.engine
            .snapshot()
            .nodes
            .into_iter()
            .filter(|(_, (l, _))| l.get(&role).is_some_and(|v| v == "true"))
            .map(|(n, _)| n)
            .collect()
    };
    // v1: portal on node m (the fake's host names are the node names)
    let v1 = testkit::desired_yaml(STACK, "1.0.0", &yaml("m", "v1"));
    activate(&host, &v1).await.unwrap();
    assert_eq!(roles(&fx), vec!["node-m"]);
    // v2 moves portal to w and fails: the stack and the roles are v1's again
    let v2 = testkit::desired_yaml(STACK, "2.0.0", &yaml("w", "v2"));
    fx.engine.script("app_portal", Script::Fail(1));
    let e = format!("{:#}", activate(&host, &v2).await.unwrap_err());
    assert!(
        e.contains("exit code 1"),
        "the activation ran and failed: {e}"
    );
    assert_eq!(roles(&fx), vec!["node-m"], "the previous roles are back");
    drop(w);
}

/// A two-phase stack recorded as generation 1, its plan from nothing, and the transaction
/// that activates it with `gate`.
async fn two_phases_with_gate(fx: &Fx, gate: super::transaction::Gate) -> Result<()> {
    let d = testkit::desired_yaml(
        STACK,
        "1.0.0",
        "version: \"3.8\"\nservices:\n  db:\n    image: img\n    x-reemo-phase: 0\n  web:\n    image: img\n    x-reemo-phase: 1\n",
    );
    let state = fx.state();
    let observed = super::transaction::observe(&fx.engine, STACK).await?;
    let steps = crate::swarm::plan::plan(&d, &observed, true).steps;
    state.put_generation(&Generation {
        number: 1,
        created: now(),
        result: GenResult::Pending,
        error: None,
        desired: d.clone(),
    })?;
    super::transaction::Transaction {
        state: &state,
        engine: &fx.engine,
        kind: Kind::Activate,
        target: 1,
        new_generation: true,
        desired: &d,
        previous: None,
        steps,
        timing: timing(),
        events: fx.events.as_ref(),
        gate: Some(gate),
    }
    .run()
    .await
}

#[tokio::test]
async fn later_phases_wait_for_the_images_still_loading_and_a_failed_load_reverts() {
    use crate::events::{Event, Events};
    let fx = Fx::new();
    let events = fx.events.clone();
    let gate = super::transaction::Gate {
        after_phase: 0,
        handle: tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            events.emit(Event::info("later images loaded"));
            Ok(())
        }),
    };
    two_phases_with_gate(&fx, gate).await.unwrap();
    let lines = fx.events.lines();
    let pos = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what:?} not in {lines:#?}"))
    };
    assert!(
        pos("create service app_db") < pos("later images loaded")
            && pos("later images loaded") < pos("create service app_web"),
        "{lines:#?}"
    );
    assert_eq!(fx.specs().len(), 2);

    // the images of the later phase fail to load: nothing of the attempt stays
    let fx = Fx::new();
    let gate = super::transaction::Gate {
        after_phase: 0,
        handle: tokio::spawn(async { Err(anyhow::anyhow!("engine n2: no space left on device")) }),
    };
    let e = format!("{:#}", two_phases_with_gate(&fx, gate).await.unwrap_err());
    assert!(
        e.contains("no space left on device") && e.contains("the services it created were removed"),
        "{e}"
    );
    assert!(fx.specs().is_empty(), "{:?}", fx.specs().keys());
    assert!(!fx
        .events
        .lines()
        .iter()
        .any(|l| l.contains("create service app_web")));
}
