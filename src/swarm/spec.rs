//! Engine-API specs built purely from desired state, the way `docker stack deploy` builds
//! them (namespace labels, `<stack>_<name>` names), with images pinned by full ID.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::labels::{image_label, role_label, SPEC_LABEL, STACK_LABEL};
use super::model::DesiredNetwork;
use crate::hash::sha256_hex;
use crate::stack::{self, Mode, Service};

/// What [`service_spec`] needs.
pub struct ServiceInput<'a> {
    /// Stack name.
    pub stack: &'a str,
    /// Short service name.
    pub name: &'a str,
    /// Compose service.
    pub service: &'a Service,
    /// Its node role, when that role names nodes: a placement constraint on the role label.
    pub role: Option<&'a str>,
    /// Image ID `sha256:…`.
    pub image_id: &'a str,
    /// `repository:tag` (recorded as `com.docker.stack.image`).
    pub image_ref: &'a str,
    /// Swarm config names, parallel to `service.configs`.
    pub configs: &'a [String],
    /// Swarm secret names, parallel to `service.secrets`.
    pub secrets: &'a [String],
    /// Networks of the stack.
    pub networks: &'a [DesiredNetwork],
}

fn labels(pairs: Vec<(String, String)>, stack: &str) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k, Value::String(v));
    }
    m.insert(STACK_LABEL.into(), Value::String(stack.into()));
    Value::Object(m)
}

fn dur(s: &Option<String>) -> Result<Option<i64>> {
    s.as_deref().map(stack::parse_duration).transpose()
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

fn update_config(u: &Option<stack::UpdateConfig>, job: bool) -> Result<Option<Value>> {
    if job {
        return Ok(None);
    }
    let u = u.clone().unwrap_or_default();
    let mut m = Map::new();
    m.insert("Parallelism".into(), json!(u.parallelism.unwrap_or(1)));
    put(&mut m, "Delay", dur(&u.delay)?.map(Value::from));
    // Our own transaction rolls the whole stack back; Swarm's per-service automatic
    // rollback would race it, so a failed update pauses by default.
    m.insert(
        "FailureAction".into(),
        json!(u.failure_action.unwrap_or_else(|| "pause".into())),
    );
    // Swarm's default monitor (5s) only delays "update completed"; the loader watches the
    // stack itself for its own monitor window, so a short one keeps activations fast.
    m.insert(
        "Monitor".into(),
        json!(dur(&u.monitor)?.unwrap_or(1_000_000_000)),
    );
    put(
        &mut m,
        "MaxFailureRatio",
        u.max_failure_ratio.map(Value::from),
    );
    m.insert(
        "Order".into(),
        json!(u.order.unwrap_or_else(|| "stop-first".into())),
    );
    Ok(Some(Value::Object(m)))
}

/// Build the `ServiceSpec` JSON of one service (without the spec-hash label; see [`seal`]).
/// Config and secret IDs are left empty and filled by [`fill_ids`] at apply time.
pub fn service_spec(i: &ServiceInput<'_>) -> Result<Value> {
    let s = i.service;
    let deploy = s.deploy.clone().unwrap_or_default();
    let mode = s.mode();
    let stack = i.stack;

    let mut c = Map::new();
    c.insert("Image".into(), json!(i.image_id));
    c.insert(
        "Labels".into(),
        labels(
            s.labels.as_ref().map(|l| l.pairs()).unwrap_or_default(),
            stack,
        ),
    );
    put(
        &mut c,
        "Command",
        s.entrypoint.as_ref().map(|e| json!(e.to_vec())),
    );
    put(
        &mut c,
        "Args",
        s.command.as_ref().map(|e| json!(e.to_vec())),
    );
    put(&mut c, "Hostname", s.hostname.clone().map(Value::from));
    if let Some(env) = &s.environment {
        let v: Vec<String> = env
            .pairs()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        c.insert("Env".into(), json!(v));
    }
    put(&mut c, "Dir", s.working_dir.clone().map(Value::from));
    put(&mut c, "User", s.user.clone().map(Value::from));
    put(&mut c, "Init", s.init.map(Value::from));
    put(&mut c, "ReadOnly", s.read_only.map(Value::from));
    put(&mut c, "StopSignal", s.stop_signal.clone().map(Value::from));
    put(
        &mut c,
        "StopGracePeriod",
        dur(&s.stop_grace_period)?.map(Value::from),
    );
    if let Some(h) = &s.healthcheck {
        let mut m = Map::new();
        let test = if h.disable == Some(true) {
            Some(vec!["NONE".to_string()])
        } else {
            h.test.as_ref().map(|t| match t {
                stack::StringOrList::String(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                stack::StringOrList::List(l) => l.clone(),
            })
        };
        put(&mut m, "Test", test.map(|t| json!(t)));
        put(&mut m, "Interval", dur(&h.interval)?.map(Value::from));
        put(&mut m, "Timeout", dur(&h.timeout)?.map(Value::from));
        put(&mut m, "Retries", h.retries.map(Value::from));
        put(
            &mut m,
            "StartPeriod",
            dur(&h.start_period)?.map(Value::from),
        );
        // bollard's model names this field `HealthCheck`; the daemon matches it
        // case-insensitively (we never read it back).
        c.insert("HealthCheck".into(), Value::Object(m));
    }
    let mut mounts = Vec::new();
    for v in &s.volumes {
        let v = v.long()?;
        let kind = v.kind.clone().unwrap_or_else(|| "volume".into());
        let mut m = Map::new();
        m.insert("Type".into(), json!(kind));
        m.insert("Target".into(), json!(v.target));
        match (kind.as_str(), &v.source) {
            ("volume", Some(src)) => {
                m.insert("Source".into(), json!(format!("{stack}_{src}")));
                m.insert(
                    "VolumeOptions".into(),
                    json!({"Labels": {STACK_LABEL: stack}}),
                );
            }
            (_, Some(src)) => {
                m.insert("Source".into(), json!(src));
            }
            _ => {}
        }
        put(&mut m, "ReadOnly", v.read_only.map(Value::from));
        mounts.push(Value::Object(m));
    }
    if !mounts.is_empty() {
        c.insert("Mounts".into(), Value::Array(mounts));
    }
    if !s.configs.is_empty() {
        let v: Vec<Value> = s
            .configs
            .iter()
            .zip(i.configs)
            .map(|(r, name)| {
                let l = r.long();
                json!({
                    "File": {
                        "Name": l.target.unwrap_or_else(|| format!("/{}", l.source)),
                        "UID": l.uid.unwrap_or_else(|| "0".into()),
                        "GID": l.gid.unwrap_or_else(|| "0".into()),
                        "Mode": l.mode.unwrap_or(0o444),
                    },
                    "ConfigID": "",
                    "ConfigName": name,
                })
            })
            .collect();
        c.insert("Configs".into(), Value::Array(v));
    }
    if !s.secrets.is_empty() {
        let v: Vec<Value> = s
            .secrets
            .iter()
            .zip(i.secrets)
            .map(|(r, name)| {
                let l = r.long();
                json!({
                    "File": {
                        "Name": l.target.unwrap_or_else(|| l.source.clone()),
                        "UID": l.uid.unwrap_or_else(|| "0".into()),
                        "GID": l.gid.unwrap_or_else(|| "0".into()),
                        "Mode": l.mode.unwrap_or(0o444),
                    },
                    "SecretID": "",
                    "SecretName": name,
                })
            })
            .collect();
        c.insert("Secrets".into(), Value::Array(v));
    }

    let mut task = Map::new();
    task.insert("ContainerSpec".into(), Value::Object(c));
    if let Some(r) = &deploy.resources {
        let res = |r: &Option<stack::ResourceSpec>| -> Result<Option<Value>> {
            let Some(r) = r else { return Ok(None) };
            let mut m = Map::new();
            if let Some(cpus) = &r.cpus {
                let f: f64 = cpus.parse()?;
                m.insert("NanoCPUs".into(), json!((f * 1e9) as i64));
            }
            if let Some(mem) = &r.memory {
                m.insert("MemoryBytes".into(), json!(stack::parse_bytes(mem)?));
            }
            Ok(Some(Value::Object(m)))
        };
        let mut m = Map::new();
        put(&mut m, "Limits", res(&r.limits)?);
        put(&mut m, "Reservations", res(&r.reservations)?);
        task.insert("Resources".into(), Value::Object(m));
    }
    let restart = match &deploy.restart_policy {
        Some(r) => {
            let mut m = Map::new();
            put(&mut m, "Condition", r.condition.clone().map(Value::from));
            put(&mut m, "Delay", dur(&r.delay)?.map(Value::from));
            put(&mut m, "MaxAttempts", r.max_attempts.map(Value::from));
            put(&mut m, "Window", dur(&r.window)?.map(Value::from));
            Some(Value::Object(m))
        }
        // A job runs once; a failure fails the activation instead of looping.
        None if mode.is_job() => Some(json!({"Condition": "none"})),
        None => None,
    };
    put(&mut task, "RestartPolicy", restart);
    // Without a registry a node can only run the image if it was loaded there: tasks go
    // only to nodes the loader labelled as holding it.
    let placement = deploy.placement.clone().unwrap_or_default();
    let mut constraints = placement.constraints.clone();
    constraints.push(format!("node.labels.{}==present", image_label(i.image_id)));
    if let Some(r) = i.role {
        constraints.push(format!("node.labels.{}==true", role_label(r)));
    }
    let mut m = Map::new();
    m.insert("Constraints".into(), json!(constraints));
    put(
        &mut m,
        "MaxReplicas",
        placement.max_replicas_per_node.map(Value::from),
    );
    task.insert("Placement".into(), Value::Object(m));
    let nets: Vec<Value> = s
        .network_names()
        .iter()
        .map(|key| {
            let target = i
                .networks
                .iter()
                .find(|n| &n.key == key)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| format!("{stack}_{key}"));
            let aliases: Vec<&str> = std::iter::once(i.name)
                .chain(s.aliases.iter().map(String::as_str))
                .collect();
            json!({"Target": target, "Aliases": aliases})
        })
        .collect();
    task.insert("Networks".into(), Value::Array(nets));
    task.insert("ForceUpdate".into(), json!(0));

    let mut svc_labels = deploy
        .labels
        .as_ref()
        .map(|l| l.pairs())
        .unwrap_or_default();
    svc_labels.push(("com.docker.stack.image".into(), i.image_ref.to_string()));
    let mode_json = match mode {
        Mode::Replicated => json!({"Replicated": {"Replicas": deploy.replicas.unwrap_or(1)}}),
        Mode::Global => json!({"Global": {}}),
        Mode::ReplicatedJob => {
            let n = deploy.replicas.unwrap_or(1);
            json!({"ReplicatedJob": {"MaxConcurrent": n, "TotalCompletions": n}})
        }
        Mode::GlobalJob => json!({"GlobalJob": {}}),
    };
    let mut spec = Map::new();
    spec.insert("Name".into(), json!(format!("{stack}_{}", i.name)));
    spec.insert("Labels".into(), labels(svc_labels, stack));
    spec.insert("TaskTemplate".into(), Value::Object(task));
    spec.insert("Mode".into(), mode_json);
    put(
        &mut spec,
        "UpdateConfig",
        update_config(&deploy.update_config, mode.is_job())?,
    );
    if let Some(rb) = &deploy.rollback_config {
        put(
            &mut spec,
            "RollbackConfig",
            update_config(&Some(rb.clone()), mode.is_job())?,
        );
    }
    let mut ports = Vec::new();
    for p in &s.ports {
        let p = p.long()?;
        let mut m = Map::new();
        m.insert(
            "Protocol".into(),
            json!(p.protocol.unwrap_or_else(|| "tcp".into())),
        );
        m.insert("TargetPort".into(), json!(p.target));
        put(&mut m, "PublishedPort", p.published.map(Value::from));
        m.insert(
            "PublishMode".into(),
            json!(p.mode.unwrap_or_else(|| "ingress".into())),
        );
        ports.push(Value::Object(m));
    }
    let mut ep = Map::new();
    ep.insert(
        "Mode".into(),
        json!(deploy.endpoint_mode.unwrap_or_else(|| "vip".into())),
    );
    if !ports.is_empty() {
        ep.insert("Ports".into(), Value::Array(ports));
    }
    if mode.is_job() && s.ports.is_empty() {
        // jobs need no virtual IP
    }
    spec.insert("EndpointSpec".into(), Value::Object(ep));
    Ok(Value::Object(spec))
}

/// Hash the spec and stamp the hash on the service and its tasks' containers, so that the
/// planner and the convergence watcher can tell which spec is live without reading specs.
pub fn seal(mut spec: Value) -> (Value, String, String) {
    let hash = sha256_hex(crate::hash::canonical_json(&spec).as_bytes())[..16].to_string();
    let task =
        sha256_hex(crate::hash::canonical_json(&spec["TaskTemplate"]).as_bytes())[..16].to_string();
    if let Some(l) = spec.pointer_mut("/Labels").and_then(Value::as_object_mut) {
        l.insert(SPEC_LABEL.into(), json!(hash));
    }
    // the tasks carry the task template's own hash: a spec change outside it (replicas,
    // update settings) restarts nothing
    if let Some(l) = spec
        .pointer_mut("/TaskTemplate/ContainerSpec/Labels")
        .and_then(Value::as_object_mut)
    {
        l.insert(SPEC_LABEL.into(), json!(task));
    }
    (spec, hash, task)
}

/// The image reference a service is pinned by, so that every node that may run its tasks
/// (the nodes holding the image, whose stores are `stores`) resolves it to the same content
/// without a registry:
/// - only classic stores: the full ID `sha256:<config>` (exact, never pulled);
/// - only containerd stores: `repository:tag@sha256:<manifest>` (exact; the containerd
///   store does not know config digests, and skips the pull of a digest it holds);
/// - both (a swarm in the middle of an upgrade): `repository:tag`, the one reference both
///   stores resolve; the loader checked on every engine that the tag names our content, the
///   tag carries the config digest's prefix, and placement keeps tasks on those nodes. Each
///   task start tries a registry first and goes on with the local image when it fails.
pub fn image_pin(
    image: &crate::engine::ImageKey,
    stores: &std::collections::BTreeSet<crate::engine::ImageStore>,
) -> String {
    use crate::engine::ImageStore;
    let containerd = stores.contains(&ImageStore::Containerd);
    let classic = stores.contains(&ImageStore::Classic) || stores.is_empty();
    match (classic, containerd, &image.manifest) {
        (true, false, _) => image.config.clone(),
        (false, true, Some(m)) => format!("{}@{m}", image.reference),
        _ => image.reference.clone(),
    }
}

/// `spec` with its container image set to `reference` (see [`image_pin`]); the spec hash
/// stays that of the desired spec, which names the image by config digest.
pub fn pin_image(spec: &Value, reference: &str) -> Value {
    let mut spec = spec.clone();
    if let Some(c) = spec
        .pointer_mut("/TaskTemplate/ContainerSpec")
        .and_then(Value::as_object_mut)
    {
        c.insert("Image".into(), json!(reference));
    }
    spec
}

/// Fill config and secret IDs by name; an unknown name is an error naming it.
pub fn fill_ids(
    spec: &Value,
    configs: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<Value> {
    let mut spec = spec.clone();
    for (kind, ids, id_key, name_key) in [
        ("Configs", configs, "ConfigID", "ConfigName"),
        ("Secrets", secrets, "SecretID", "SecretName"),
    ] {
        let ptr = format!("/TaskTemplate/ContainerSpec/{kind}");
        if let Some(arr) = spec.pointer_mut(&ptr).and_then(Value::as_array_mut) {
            for item in arr {
                let name = item[name_key].as_str().unwrap_or_default().to_string();
                let Some(id) = ids.get(&name) else {
                    bail!(
                        "{} {name} does not exist",
                        &kind[..kind.len() - 1].to_lowercase()
                    );
                };
                item[id_key] = json!(id);
            }
        }
    }
    Ok(spec)
}

/// `NetworkCreateRequest` JSON for a stack network.
pub fn network_request(stack: &str, n: &DesiredNetwork) -> Value {
    json!({
        "Name": n.name,
        "Driver": n.driver,
        "Attachable": n.attachable,
        "Scope": "swarm",
        "Labels": {STACK_LABEL: stack},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped relay stack's spec (`overlay: false` drops its `x-reemo-overlay: false`).
    fn relay_spec_with(overlay: bool) -> Value {
        let mut text = crate::stack::relay_template("reemo/ws-relay-server:1.0.0-x");
        if overlay {
            text = text.replace("x-reemo-overlay: false", "");
        }
        let f = crate::stack::parse(&text, "t").unwrap();
        let nets = vec![DesiredNetwork {
            key: "default".into(),
            name: "relayws_default".into(),
            driver: "overlay".into(),
            attachable: false,
            external: false,
        }];
        let input = ServiceInput {
            stack: "relayws",
            name: "relay",
            service: &f.services["relay"],
            role: None,
            image_id: "sha256:aa",
            image_ref: "reemo/ws-relay-server:1.0.0-x",
            configs: &["relayws_relay_config_11111111".into()],
            secrets: &[
                "relayws_relay_token_keys_22222222".into(),
                "relayws_relay_control_secret_33333333".into(),
            ],
            networks: &nets,
        };
        service_spec(&input).unwrap()
    }

    fn relay_spec() -> Value {
        relay_spec_with(false)
    }

    #[test]
    fn relay_spec_is_what_stack_deploy_would_make() {
        let s = relay_spec();
        assert_eq!(s["Name"], "relayws_relay");
        assert_eq!(s["Labels"][STACK_LABEL], "relayws");
        let c = &s["TaskTemplate"]["ContainerSpec"];
        assert_eq!(c["Image"], "sha256:aa");
        assert_eq!(c["Labels"][STACK_LABEL], "relayws");
        assert!(
            c.get("HealthCheck").is_none(),
            "healthcheck inherited from the image"
        );
        assert_eq!(
            c["Configs"][0]["File"]["Name"],
            "/etc/ws-relay-server/config.toml"
        );
        assert_eq!(c["Secrets"][1]["File"]["Name"], "relay_control_secret");
        assert_eq!(c["Secrets"][1]["File"]["Mode"], 0o400);
        assert_eq!(s["UpdateConfig"]["Order"], "stop-first");
        assert_eq!(s["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        // x-reemo-overlay: false: no network at all (default bridge, no gossip pause)
        assert_eq!(s["TaskTemplate"]["Networks"], json!([]));
        assert_eq!(
            relay_spec_with(true)["TaskTemplate"]["Networks"][0]["Target"],
            "relayws_default"
        );
        assert_eq!(s["Mode"]["Replicated"]["Replicas"], 1);
        assert_eq!(
            s["TaskTemplate"]["Placement"]["Constraints"][0],
            "node.labels.com.reemo-bundle.image.aa==present"
        );
    }

    #[test]
    fn seal_is_stable_and_labels_tasks() {
        let (a, ha, ta) = seal(relay_spec());
        let (_, hb, tb) = seal(relay_spec());
        assert_eq!((&ha, &ta), (&hb, &tb));
        assert_eq!(a["Labels"][SPEC_LABEL], ha);
        assert_eq!(a["TaskTemplate"]["ContainerSpec"]["Labels"][SPEC_LABEL], ta);
        // the replica count is outside the task template: no task restarts for it
        let mut scaled = relay_spec();
        scaled["Mode"]["Replicated"]["Replicas"] = json!(2);
        let (_, hs, ts) = seal(scaled);
        assert_ne!(hs, ha);
        assert_eq!(ts, ta);
        // an environment change is a new task template
        let mut env = relay_spec();
        env["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["X=1"]);
        assert_ne!(seal(env).2, ta);
    }

    #[test]
    fn images_are_pinned_by_what_every_holding_store_resolves() {
        use crate::engine::{ImageKey, ImageStore::*};
        use std::collections::BTreeSet;
        let key = ImageKey {
            config: "sha256:cc".into(),
            manifest: Some("sha256:mm".into()),
            reference: "reemo/relay:1.0.0-cc".into(),
        };
        let old = ImageKey {
            manifest: None,
            ..key.clone()
        };
        let set = |v: &[crate::engine::ImageStore]| v.iter().copied().collect::<BTreeSet<_>>();
        let cases = [
            (&key, set(&[]), "sha256:cc"),
            (&key, set(&[Classic]), "sha256:cc"),
            (&key, set(&[Containerd]), "reemo/relay:1.0.0-cc@sha256:mm"),
            (&key, set(&[Classic, Containerd]), "reemo/relay:1.0.0-cc"),
            (&old, set(&[Containerd]), "reemo/relay:1.0.0-cc"),
            (&old, set(&[Classic]), "sha256:cc"),
        ];
        for (k, stores, want) in cases {
            assert_eq!(image_pin(k, &stores), want, "{stores:?} {k:?}");
        }
        let (s, hash, _) = seal(relay_spec());
        let p = pin_image(&s, "reemo/relay:1.0.0-cc");
        assert_eq!(
            p["TaskTemplate"]["ContainerSpec"]["Image"],
            "reemo/relay:1.0.0-cc"
        );
        assert_eq!(p["Labels"][SPEC_LABEL], hash, "the spec hash is kept");
    }

    #[test]
    fn fill_ids_names_missing_objects() {
        let (s, _, _) = seal(relay_spec());
        let cfg = BTreeMap::from([("relayws_relay_config_11111111".into(), "c1".into())]);
        let e = fill_ids(&s, &cfg, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret relayws_relay_token_keys_22222222"),
            "{e}"
        );
        let sec = BTreeMap::from([
            ("relayws_relay_token_keys_22222222".into(), "s1".into()),
            ("relayws_relay_control_secret_33333333".into(), "s2".into()),
        ]);
        let f = fill_ids(&s, &cfg, &sec).unwrap();
        assert_eq!(
            f["TaskTemplate"]["ContainerSpec"]["Configs"][0]["ConfigID"],
            "c1"
        );
    }
}
