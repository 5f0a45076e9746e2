//! An in-memory swarm behind the [`Engine`] trait, for tests: nodes with labels and images,
//! services with their specs, tasks a test scripts (running, failing with an exit code,
//! rejected, hanging), configs, secrets, networks, and failures injected per operation.
//! Every mutating call is logged, so a test can prove a dry run changed nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::Value;

use super::{
    ApiVersion, ArchiveStream, Engine, EngineError, EngineFacts, EngineResult, ImageFacts,
    ImageKey, ImageStore, JoinRequest, JoinToken,
};
use crate::swarm::labels::{SPEC_LABEL, STACK_LABEL};
use crate::swarm::observed::{
    Id, LiveService, ManagerNode, NodeInfo, SwarmFacts, SwarmState, TaskInfo, TaskState,
    UpdateState,
};

/// How the tasks of a service behave once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Start and run (jobs: complete).
    Run,
    /// Exit with this code.
    Fail(i64),
    /// Refused by the node with this error.
    Reject(String),
    /// Stay starting forever (a health check that never passes).
    Hang,
}

#[derive(Debug, Clone)]
struct Node {
    manager: bool,
    /// A manager whose engine the other managers reach (false: its engine is lost).
    reachable: bool,
    labels: BTreeMap<String, String>,
    images: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Service {
    id: String,
    spec: Value,
    version: u64,
    updated: bool,
}

#[derive(Debug, Clone)]
struct Object {
    id: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Injected {
    op: String,
    object: Option<String>,
    error: EngineError,
    /// Calls that succeed before the failures start.
    skip: usize,
    times: usize,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<String, Service>,
    tasks: BTreeMap<String, Vec<TaskInfo>>,
    configs: BTreeMap<String, Object>,
    secrets: BTreeMap<String, Object>,
    networks: BTreeMap<String, BTreeMap<String, String>>,
    scripts: BTreeMap<String, Script>,
    logs: BTreeMap<String, String>,
    /// Diff IDs of the images loaded from an archive, by image ID.
    layers: BTreeMap<String, Vec<String>>,
    /// `repository:tag` → image ID, for services pinned by tag.
    tags: BTreeMap<String, String>,
    injected: Vec<Injected>,
    mutations: Vec<String>,
    counter: u64,
}

impl State {
    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{:06}", self.counter)
    }

    fn injected(&mut self, op: &str, object: &str) -> EngineResult<()> {
        if let Some(i) = self
            .injected
            .iter_mut()
            .find(|i| i.op == op && i.times > 0 && i.object.as_deref().is_none_or(|o| o == object))
        {
            if i.skip > 0 {
                i.skip -= 1;
                return Ok(());
            }
            i.times -= 1;
            let e = i.error.clone();
            // an injected "network gone" makes it so (a `docker stack rm` racing us)
            if let EngineError::NetworkGone { network, .. } = &e {
                self.networks.remove(network);
            }
            return Err(e);
        }
        Ok(())
    }

    fn mutate(&mut self, op: &str, object: &str) -> EngineResult<()> {
        self.injected(op, object)?;
        self.mutations.push(format!("{op} {object}"));
        Ok(())
    }

    /// Log a mutating call whose failure injection was already checked.
    fn record(&mut self, op: &str, object: &str) {
        self.mutations.push(format!("{op} {object}"));
    }

    /// Replace the service's tasks by new ones of its current spec.
    fn roll(&mut self, name: &str) {
        let svc = &self.services[name];
        let spec = svc.spec.clone();
        let hash = spec["TaskTemplate"]["ContainerSpec"]["Labels"][SPEC_LABEL]
            .as_str()
            .map(str::to_string);
        let image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mode = &spec["Mode"];
        let job = mode.get("ReplicatedJob").is_some() || mode.get("GlobalJob").is_some();
        let count = if mode.get("Global").is_some() || mode.get("GlobalJob").is_some() {
            self.nodes.len() as u64
        } else {
            mode["Replicated"]["Replicas"]
                .as_u64()
                .or_else(|| mode["ReplicatedJob"]["TotalCompletions"].as_u64())
                .unwrap_or(1)
        };
        // a tag (with or without `@digest`) names the image it was given to
        let tag = image.split('@').next().unwrap_or_default();
        let resolved = self.tags.get(tag).cloned().unwrap_or_else(|| image.clone());
        let holder = self
            .nodes
            .iter()
            .find(|(_, n)| n.images.contains(&resolved))
            .map(|(id, _)| id.clone());
        let script = self.scripts.get(name).cloned().unwrap_or(Script::Run);
        for t in self.tasks.entry(name.to_string()).or_default() {
            if t.desired == TaskState::Running {
                t.desired = TaskState::Shutdown;
                t.state = TaskState::Shutdown;
            }
        }
        for _ in 0..count {
            let id = self.next_id("task");
            let (state, desired, err, exit_code) = match (&holder, &script) {
                (None, _) => (
                    TaskState::Rejected,
                    TaskState::Shutdown,
                    Some(format!("No such image: {image}")),
                    None,
                ),
                (Some(_), Script::Reject(e)) => (
                    TaskState::Rejected,
                    TaskState::Shutdown,
                    Some(e.clone()),
                    None,
                ),
                (Some(_), Script::Fail(code)) => (
                    TaskState::Failed,
                    TaskState::Shutdown,
                    Some(format!("task: non-zero exit ({code})")),
                    Some(*code),
                ),
                (Some(_), Script::Hang) => (TaskState::Starting, TaskState::Running, None, None),
                (Some(_), Script::Run) if job => {
                    (TaskState::Complete, TaskState::Complete, None, Some(0))
                }
                (Some(_), Script::Run) => (TaskState::Running, TaskState::Running, None, None),
            };
            let created = format!("2026-01-01T00:00:00.{:09}Z", self.counter);
            self.tasks
                .entry(name.to_string())
                .or_default()
                .push(TaskInfo {
                    id: Id(id),
                    spec_hash: hash.clone(),
                    state,
                    desired,
                    message: state.to_string(),
                    err,
                    exit_code,
                    created,
                    node_id: holder.clone().unwrap_or_default(),
                });
        }
    }

    fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
        labels.get(STACK_LABEL).map(String::as_str) == Some(stack)
    }
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One engine (node) of an in-memory swarm. Clones and [`FakeEngine::join`]ed engines share
/// the swarm.
#[derive(Debug, Clone)]
pub struct FakeEngine {
    url: String,
    node: String,
    state: Arc<Mutex<State>>,
}

/// What the fake swarm holds, for before/after comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Service name → (spec, version).
    pub services: BTreeMap<String, (Value, u64)>,
    /// Config names.
    pub configs: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// Network names.
    pub networks: BTreeSet<String>,
    /// Node id → (labels, images).
    pub nodes: BTreeMap<String, (BTreeMap<String, String>, BTreeSet<String>)>,
}

impl FakeEngine {
    /// The manager of a new one-node swarm, with url `fake://<name>`.
    pub fn manager(name: &str) -> FakeEngine {
        let state = Arc::new(Mutex::new(State::default()));
        let e = FakeEngine {
            url: format!("fake://{name}"),
            node: format!("node-{name}"),
            state,
        };
        e.lock().nodes.insert(
            e.node.clone(),
            Node {
                manager: true,
                reachable: true,
                labels: BTreeMap::new(),
                images: BTreeSet::new(),
            },
        );
        e
    }

    /// Another node of the same swarm (a worker unless `manager`).
    pub fn join(&self, name: &str, manager: bool) -> FakeEngine {
        let e = FakeEngine {
            url: format!("fake://{name}"),
            node: format!("node-{name}"),
            state: self.state.clone(),
        };
        e.lock().nodes.insert(
            e.node.clone(),
            Node {
                manager,
                reachable: true,
                labels: BTreeMap::new(),
                images: BTreeSet::new(),
            },
        );
        e
    }

    /// An engine outside any swarm that can join this one with one of its join tokens
    /// ([`FakeEngine::join_token`]).
    pub fn candidate(&self, name: &str) -> FakeEngine {
        FakeEngine {
            url: format!("fake://{name}"),
            node: format!("node-{name}"),
            state: self.state.clone(),
        }
    }

    /// The token that joins this fake swarm as a manager (`true`) or a worker, in the shape
    /// of Docker's.
    pub fn join_token(&self, manager: bool) -> String {
        let secret = if manager { "m" } else { "w" };
        format!(
            "SWMTKN-1-{}-{}",
            &"f4k3".repeat(13)[..50],
            secret.repeat(25)
        )
    }

    /// Make manager `node_id` reachable or not (its engine killed, or back).
    pub fn set_reachable(&self, node_id: &str, reachable: bool) {
        if let Some(n) = self.lock().nodes.get_mut(node_id) {
            n.reachable = reachable;
        }
    }

    /// An engine outside any swarm.
    pub fn outside(name: &str) -> FakeEngine {
        FakeEngine {
            url: format!("fake://{name}"),
            node: String::new(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This engine's node id.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Script how the tasks of service `full_name` behave from its next create or update.
    pub fn script(&self, full_name: &str, s: Script) {
        self.lock().scripts.insert(full_name.to_string(), s);
    }

    /// Log lines a task of service `full_name` printed.
    pub fn set_logs(&self, full_name: &str, logs: &str) {
        self.lock()
            .logs
            .insert(full_name.to_string(), logs.to_string());
    }

    /// Make the next `times` calls of `op` (the trait method's name, e.g. `create_config`)
    /// on `object` (any object when `None`) fail with `error`.
    pub fn fail(&self, op: &str, object: Option<&str>, error: EngineError, times: usize) {
        self.fail_after(op, object, error, 0, times);
    }

    /// As [`FakeEngine::fail`], once `skip` calls have succeeded.
    pub fn fail_after(
        &self,
        op: &str,
        object: Option<&str>,
        error: EngineError,
        skip: usize,
        times: usize,
    ) {
        self.lock().injected.push(Injected {
            op: op.to_string(),
            object: object.map(str::to_string),
            error,
            skip,
            times,
        });
    }

    /// Mutating calls so far, as `op object` lines.
    pub fn mutations(&self) -> Vec<String> {
        self.lock().mutations.clone()
    }

    /// Put an image on this engine's node (as if loaded earlier).
    pub fn add_image(&self, id: &str) {
        let node = self.node.clone();
        if let Some(n) = self.lock().nodes.get_mut(&node) {
            n.images.insert(id.to_string());
        }
    }

    /// Name an image by `repository:tag` (swarm-wide in the fake, as if every node that
    /// holds the image had the tag).
    pub fn tag_image(&self, id: &str, reference: &str) {
        self.lock()
            .tags
            .insert(reference.to_string(), id.to_string());
    }

    /// Remove an image from this engine's node (an operator's `docker rmi`).
    pub fn drop_image(&self, id: &str) {
        let node = self.node.clone();
        if let Some(n) = self.lock().nodes.get_mut(&node) {
            n.images.remove(id);
        }
    }

    /// Let a hanging or failed service's tasks run now (a health check that starts
    /// passing); the service keeps its spec.
    pub fn heal(&self, full_name: &str) {
        let mut st = self.lock();
        st.scripts.remove(full_name);
        if st.services.contains_key(full_name) {
            st.roll(full_name);
        }
    }

    /// The spec of a service, if it exists.
    pub fn service_spec(&self, full_name: &str) -> Option<Value> {
        self.lock().services.get(full_name).map(|s| s.spec.clone())
    }

    /// Everything the swarm holds.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            services: st
                .services
                .iter()
                .map(|(k, s)| (k.clone(), (s.spec.clone(), s.version)))
                .collect(),
            configs: st.configs.keys().cloned().collect(),
            secrets: st.secrets.keys().cloned().collect(),
            networks: st.networks.keys().cloned().collect(),
            nodes: st
                .nodes
                .iter()
                .map(|(k, n)| (k.clone(), (n.labels.clone(), n.images.clone())))
                .collect(),
        }
    }
}

fn uses(spec: &Value, kind: &str, name_key: &str, name: &str) -> bool {
    spec["TaskTemplate"]["ContainerSpec"][kind]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c[name_key] == name)
}

#[async_trait]
impl Engine for FakeEngine {
    fn url(&self) -> &str {
        &self.url
    }

    async fn swarm_facts(&self) -> EngineResult<SwarmFacts> {
        let mut st = self.lock();
        st.injected("swarm_facts", &self.url)?;
        let Some(me) = st.nodes.get(&self.node) else {
            return Ok(SwarmFacts {
                state: SwarmState::Inactive,
                manager: false,
                node_id: String::new(),
                managers: 0,
                nodes: 0,
                server_version: "fake".into(),
            });
        };
        Ok(SwarmFacts {
            state: SwarmState::Active,
            manager: me.manager,
            node_id: self.node.clone(),
            managers: st.nodes.values().filter(|n| n.manager).count() as i64,
            nodes: st.nodes.len() as i64,
            server_version: "fake".into(),
        })
    }

    async fn nodes(&self) -> EngineResult<Vec<NodeInfo>> {
        let mut st = self.lock();
        st.injected("nodes", "")?;
        Ok(st
            .nodes
            .iter()
            .map(|(id, n)| NodeInfo {
                id: id.clone(),
                hostname: id.trim_start_matches("node-").to_string(),
                addr: id.trim_start_matches("node-").to_string(),
                labels: n.labels.clone(),
                manager: n.manager.then(|| ManagerNode {
                    id: id.clone(),
                    hostname: id.trim_start_matches("node-").to_string(),
                    addr: format!("{}:2377", id.trim_start_matches("node-")),
                    reachability: if n.reachable {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                    .into(),
                    leader: *id == self.node,
                }),
            })
            .collect())
    }

    async fn node(&self, id: &str) -> EngineResult<NodeInfo> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| EngineError::NotFound {
                op: format!("inspecting node {id}"),
                message: format!("node {id} not found"),
            })
    }

    async fn set_node_label(&self, id: &str, key: &str, value: Option<&str>) -> EngineResult<()> {
        let mut st = self.lock();
        st.mutate("set_node_label", &format!("{id} {key}={value:?}"))?;
        let node = st.nodes.get_mut(id).ok_or_else(|| EngineError::NotFound {
            op: format!("labelling node {id}"),
            message: "node not found".into(),
        })?;
        match value {
            Some(v) => node.labels.insert(key.to_string(), v.to_string()),
            None => node.labels.remove(key),
        };
        Ok(())
    }

    async fn init_swarm(&self, _req: &Value) -> EngineResult<String> {
        Err(EngineError::Other {
            op: "initialising a swarm".into(),
            message: "the fake engine does not initialise swarms".into(),
        })
    }

    async fn join_swarm(&self, req: &JoinRequest) -> EngineResult<()> {
        let mut st = self.lock();
        let op = format!("joining the engine at {} to the swarm", self.url);
        st.injected("join_swarm", &self.url)
            .map_err(|e| e.map_text(|t| req.token.scrub(t)))?;
        if st.nodes.contains_key(&self.node) || self.node.is_empty() {
            return Err(EngineError::Other {
                op,
                message: "This node is already part of a swarm".into(),
            });
        }
        let manager = match req.token.expose() {
            t if t == self.join_token(true) => true,
            t if t == self.join_token(false) => false,
            _ => {
                return Err(EngineError::Other {
                    op,
                    message: "A valid join token is necessary to join this cluster".into(),
                })
            }
        };
        st.mutations.push(format!(
            "join_swarm {} as {} via {}",
            self.url,
            if manager { "manager" } else { "worker" },
            req.remotes.join(",")
        ));
        st.nodes.insert(
            self.node.clone(),
            Node {
                manager,
                reachable: true,
                labels: BTreeMap::new(),
                images: BTreeSet::new(),
            },
        );
        Ok(())
    }

    async fn leave_swarm(&self, force: bool) -> EngineResult<()> {
        let mut st = self.lock();
        st.mutate("leave_swarm", &self.url)?;
        match st.nodes.get(&self.node) {
            None => Err(EngineError::Other {
                op: "leaving the swarm".into(),
                message: "This node is not part of a swarm".into(),
            }),
            Some(n) if n.manager && !force => Err(EngineError::Other {
                op: "leaving the swarm".into(),
                message: "a manager leaves only with force".into(),
            }),
            Some(_) => {
                st.nodes.remove(&self.node);
                Ok(())
            }
        }
    }

    async fn manager_join_token(&self) -> EngineResult<JoinToken> {
        let mut st = self.lock();
        st.injected("manager_join_token", &self.url)?;
        if !st.nodes.get(&self.node).is_some_and(|n| n.manager) {
            return Err(EngineError::Other {
                op: "reading the manager join token".into(),
                message: "This node is not a swarm manager".into(),
            });
        }
        JoinToken::parse(&self.join_token(true)).map_err(|e| EngineError::Other {
            op: "reading the manager join token".into(),
            message: e.to_string(),
        })
    }

    async fn facts(&self) -> EngineResult<EngineFacts> {
        Ok(EngineFacts {
            version: "fake".into(),
            api: ApiVersion::MIN,
            store: ImageStore::Classic,
        })
    }

    async fn inspect_image(&self, reference: &str) -> EngineResult<Option<ImageFacts>> {
        let st = self.lock();
        let held = st
            .nodes
            .get(&self.node)
            .is_some_and(|n| n.images.contains(reference));
        Ok(held.then(|| ImageFacts {
            id: reference.to_string(),
            descriptor: None,
            layers: st.layers.get(reference).cloned().unwrap_or_default(),
            repo_tags: vec![],
        }))
    }

    async fn has_image(&self, image: &ImageKey) -> EngineResult<bool> {
        let id = image.config.as_str();
        let mut st = self.lock();
        st.injected("has_image", id)?;
        Ok(st
            .nodes
            .get(&self.node)
            .is_some_and(|n| n.images.contains(id)))
    }

    async fn load_archive(&self, mut archive: ArchiveStream) -> EngineResult<()> {
        let mut data = Vec::new();
        while let Some(chunk) = archive.next().await {
            let chunk = chunk.map_err(|e| EngineError::Other {
                op: format!("loading images into {}", self.url),
                message: e.to_string(),
            })?;
            data.extend_from_slice(&chunk);
        }
        let bad = |m: String| EngineError::Other {
            op: format!("loading images into {}", self.url),
            message: m,
        };
        // the small JSON entries (manifest.json, configs); layers are only counted
        let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut tar = tar::Archive::new(&data[..]);
        for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let mut b = Vec::new();
            entry.read_to_end(&mut b).map_err(|e| bad(e.to_string()))?;
            if b.first() == Some(&b'{') || b.first() == Some(&b'[') {
                small.insert(path, b);
            }
        }
        let manifest: Value = serde_json::from_slice(
            small
                .get("manifest.json")
                .ok_or_else(|| bad("no manifest.json".into()))?,
        )
        .map_err(|e| bad(e.to_string()))?;
        let mut st = self.lock();
        st.mutate("load_archive", &self.url)?;
        let node = st.nodes.entry(self.node.clone()).or_insert_with(|| Node {
            manager: false,
            reachable: true,
            labels: BTreeMap::new(),
            images: BTreeSet::new(),
        });
        let mut loaded = Vec::new();
        for img in manifest.as_array().into_iter().flatten() {
            let cfg = img["Config"].as_str().unwrap_or_default();
            let hex = cfg.rsplit('/').next().unwrap_or_default();
            let id = format!("sha256:{hex}");
            node.images.insert(id.clone());
            let config: Value = small
                .get(cfg)
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            let diff_ids = config["rootfs"]["diff_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect();
            loaded.push((id, diff_ids));
        }
        st.layers.extend(loaded);
        Ok(())
    }

    async fn remove_image(&self, image: &ImageKey) -> EngineResult<bool> {
        let id = image.config.as_str();
        let mut st = self.lock();
        let in_use = st
            .services
            .values()
            .any(|s| s.spec["TaskTemplate"]["ContainerSpec"]["Image"] == id);
        if in_use {
            return Ok(false);
        }
        st.mutate("remove_image", id)?;
        let node = self.node.clone();
        Ok(st.nodes.get_mut(&node).is_some_and(|n| n.images.remove(id)))
    }

    async fn remove_stopped_task_containers(
        &self,
        _image: &ImageKey,
        _stacks: &std::collections::BTreeSet<String>,
    ) -> EngineResult<usize> {
        // the fake keeps no task containers: a service in use is what holds an image
        Ok(0)
    }

    async fn stack_services(&self, stack: &str) -> EngineResult<Vec<LiveService>> {
        let mut st = self.lock();
        st.injected("stack_services", stack)?;
        let node_count = st.nodes.len() as u64;
        Ok(st
            .services
            .iter()
            .filter(|(_, s)| State::in_stack(&labels_of(&s.spec["Labels"]), stack))
            .map(|(name, s)| {
                let mode = &s.spec["Mode"];
                let replicas = if mode.get("Global").is_some() {
                    Some(node_count)
                } else {
                    mode["Replicated"]["Replicas"]
                        .as_u64()
                        .or_else(|| mode["ReplicatedJob"]["TotalCompletions"].as_u64())
                        .or(Some(1))
                };
                LiveService {
                    id: Id(s.id.clone()),
                    name: name.clone(),
                    spec_hash: s.spec["Labels"][SPEC_LABEL].as_str().map(str::to_string),
                    version: s.version,
                    replicas,
                    update_state: s.updated.then_some(UpdateState::Completed),
                    update_message: None,
                }
            })
            .collect())
    }

    async fn create_service(&self, spec: &Value) -> EngineResult<String> {
        let name = spec["Name"].as_str().unwrap_or_default().to_string();
        let mut st = self.lock();
        st.injected("create_service", &name)?;
        if st.services.contains_key(&name) {
            return Err(EngineError::Conflict {
                op: format!("creating service {name}"),
                message: format!("service {name} already exists"),
            });
        }
        for n in spec["TaskTemplate"]["Networks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let target = n["Target"].as_str().unwrap_or_default();
            if !st.networks.contains_key(target) {
                return Err(EngineError::NetworkGone {
                    op: format!("creating service {name}"),
                    network: target.to_string(),
                });
            }
        }
        st.record("create_service", &name);
        let id = st.next_id("svc");
        st.services.insert(
            name.clone(),
            Service {
                id: id.clone(),
                spec: spec.clone(),
                version: 1,
                updated: false,
            },
        );
        st.roll(&name);
        Ok(id)
    }

    async fn update_service(&self, spec: &Value, version: u64) -> EngineResult<()> {
        let name = spec["Name"].as_str().unwrap_or_default().to_string();
        let mut st = self.lock();
        st.injected("update_service", &name)?;
        let op = format!("updating service {name}");
        let svc = st
            .services
            .get(&name)
            .ok_or_else(|| EngineError::NotFound {
                op: op.clone(),
                message: format!("service {name} not found"),
            })?;
        if svc.version != version {
            return Err(EngineError::OutOfSequence {
                op,
                message: "update out of sequence".into(),
            });
        }
        st.record("update_service", &name);
        let svc = st.services.get_mut(&name).expect("checked above");
        svc.spec = spec.clone();
        svc.version += 1;
        svc.updated = true;
        st.roll(&name);
        Ok(())
    }

    async fn remove_service(&self, name: &str) -> EngineResult<()> {
        let mut st = self.lock();
        st.mutate("remove_service", name)?;
        st.services.remove(name);
        st.tasks.remove(name);
        Ok(())
    }

    async fn tasks(&self, service: &str) -> EngineResult<Vec<TaskInfo>> {
        let mut st = self.lock();
        st.injected("tasks", service)?;
        Ok(st.tasks.get(service).cloned().unwrap_or_default())
    }

    async fn task_logs(&self, task_id: &str, _lines: usize) -> String {
        let st = self.lock();
        st.tasks
            .iter()
            .find(|(_, ts)| ts.iter().any(|t| t.id.as_str() == task_id))
            .and_then(|(svc, _)| st.logs.get(svc).cloned())
            .unwrap_or_default()
    }

    async fn stack_configs(&self, stack: &str) -> EngineResult<BTreeMap<String, String>> {
        let mut st = self.lock();
        st.injected("stack_configs", stack)?;
        Ok(st
            .configs
            .iter()
            .filter(|(_, o)| State::in_stack(&o.labels, stack))
            .map(|(k, o)| (k.clone(), o.id.clone()))
            .collect())
    }

    async fn stack_secrets(&self, stack: &str) -> EngineResult<BTreeMap<String, String>> {
        let mut st = self.lock();
        st.injected("stack_secrets", stack)?;
        Ok(st
            .secrets
            .iter()
            .filter(|(_, o)| State::in_stack(&o.labels, stack))
            .map(|(k, o)| (k.clone(), o.id.clone()))
            .collect())
    }

    async fn create_config(
        &self,
        name: &str,
        _data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String> {
        let mut st = self.lock();
        st.injected("create_config", name)?;
        if st.configs.contains_key(name) {
            return Err(EngineError::Conflict {
                op: format!("creating config {name}"),
                message: format!("config {name} already exists"),
            });
        }
        st.record("create_config", name);
        let id = st.next_id("cfg");
        st.configs.insert(
            name.to_string(),
            Object {
                id: id.clone(),
                labels: labels.clone(),
            },
        );
        Ok(id)
    }

    async fn create_secret(
        &self,
        name: &str,
        _data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> EngineResult<String> {
        let mut st = self.lock();
        st.injected("create_secret", name)?;
        if st.secrets.contains_key(name) {
            return Err(EngineError::Conflict {
                op: format!("creating secret {name}"),
                message: format!("secret {name} already exists"),
            });
        }
        st.record("create_secret", name);
        let id = st.next_id("sec");
        st.secrets.insert(
            name.to_string(),
            Object {
                id: id.clone(),
                labels: labels.clone(),
            },
        );
        Ok(id)
    }

    async fn remove_config(&self, name: &str) -> EngineResult<()> {
        let mut st = self.lock();
        if st
            .services
            .values()
            .any(|s| uses(&s.spec, "Configs", "ConfigName", name))
        {
            return Err(EngineError::Conflict {
                op: format!("removing config {name}"),
                message: "config is in use".into(),
            });
        }
        st.mutate("remove_config", name)?;
        st.configs.remove(name);
        Ok(())
    }

    async fn remove_secret(&self, name: &str) -> EngineResult<()> {
        let mut st = self.lock();
        if st
            .services
            .values()
            .any(|s| uses(&s.spec, "Secrets", "SecretName", name))
        {
            return Err(EngineError::Conflict {
                op: format!("removing secret {name}"),
                message: "secret is in use".into(),
            });
        }
        st.mutate("remove_secret", name)?;
        st.secrets.remove(name);
        Ok(())
    }

    async fn stack_networks(&self, stack: &str) -> EngineResult<Vec<String>> {
        let mut st = self.lock();
        st.injected("stack_networks", stack)?;
        Ok(st
            .networks
            .iter()
            .filter(|(_, l)| State::in_stack(l, stack))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn create_network(&self, req: &Value) -> EngineResult<()> {
        let name = req["Name"].as_str().unwrap_or_default().to_string();
        let mut st = self.lock();
        st.injected("create_network", &name)?;
        if st.networks.contains_key(&name) {
            return Err(EngineError::Conflict {
                op: format!("creating network {name}"),
                message: format!("network with name {name} already exists"),
            });
        }
        st.record("create_network", &name);
        st.networks.insert(name, labels_of(&req["Labels"]));
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> EngineResult<()> {
        let mut st = self.lock();
        st.mutate("remove_network", name)?;
        st.networks.remove(name);
        Ok(())
    }
}
