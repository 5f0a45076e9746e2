//! Whole life cycle of the relay appliance on the real engine and single-node swarm:
//! activate v1 → v2 → a broken v3 (fails, stack back on v2) → rollback to v1 → gc.

mod common;

use common::*;

const STACK: &str = "lcycle";

fn config_names() -> Vec<String> {
    let out = run_ok(docker().args([
        "config",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
    ]));
    out.lines().map(str::to_string).collect()
}

#[test]
fn relay_appliance_life_cycle() {
    let fx = StackFixture::new(STACK);
    let state = fx.state.clone();
    let port = fx.port;
    let v1 = fx.relay_variant("v1", "1.0.0", |c| c);
    let v2 = fx.relay_variant("v2", "2.0.0", |c| {
        c.replace("pair_timeout_secs = 30", "pair_timeout_secs = 31")
    });
    let v3 = fx.relay_variant("v3", "3.0.0", |c| c + "no_such_setting = 1\n");
    let relay = extract_relay(&v1, fx.tmp.path());

    // v1
    let engine_view = || {
        [
            &["service", "ls", "--format", "{{.Name}} {{.Image}}"][..],
            &["config", "ls", "--format", "{{.Name}}"],
            &["secret", "ls", "--format", "{{.Name}}"],
            &["network", "ls", "--format", "{{.Name}}"],
            &[
                "node",
                "inspect",
                "self",
                "--format",
                "{{json .Spec.Labels}}",
            ],
            &["image", "ls", "-q", "--no-trunc"],
        ]
        .map(|a| {
            // one line per object; the engine lists some of them in no fixed order
            let mut lines: Vec<String> = run_ok(docker().args(a))
                .lines()
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        })
    };
    let (engine_before, state_before) = (engine_view(), state.exists());
    let dry = run_ok(loader(&state).arg("activate").arg(&v1).arg("--dry-run"));
    assert!(dry.contains("create service lcycle_relay"), "{dry}");
    assert_eq!(
        state.exists(),
        state_before,
        "--dry-run created the state directory"
    );
    assert!(
        !state.join("current").exists(),
        "--dry-run changed the state"
    );
    assert_eq!(engine_view(), engine_before, "--dry-run changed the engine");
    let o = loader_json(loader(&state).arg("activate").arg(&v1));
    assert_eq!(o["result"], "activated");
    assert_eq!(o["generation"], 1);
    relay_probe(&relay, port, &state).expect("v1 serves");
    let services = run_ok(docker().args(["stack", "services", STACK]));
    assert!(
        services.contains("lcycle_relay") && services.contains("1/1"),
        "{services}"
    );
    let ps = run_ok(docker().args(["stack", "ps", STACK]));
    assert!(
        ps.contains("lcycle_relay.1") && ps.contains("Running"),
        "{ps}"
    );
    let v1_configs = config_names();

    // re-activating the current bundle does nothing
    let o = loader_json(loader(&state).arg("activate").arg(&v1));
    assert_eq!(o["result"], "unchanged");

    // v2: changed config and version
    let o = loader_json(loader(&state).arg("activate").arg(&v2));
    assert_eq!(o["generation"], 2);
    relay_probe(&relay, port, &state).expect("v2 serves");
    let st = loader_json(loader(&state).arg("status"));
    assert_eq!(st["version"], "2.0.0");
    assert_eq!(st["services"][0]["health"], "healthy");

    // v3: the relay refuses its config; the activation fails and the stack is back on v2
    let out = loader(&state)
        .args(["activate", "--timeout", "90s"])
        .arg(&v3)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "v3 must fail: {err}");
    assert!(err.contains("service lcycle_relay failed"), "{err}");
    assert!(err.contains("generation 2, which stays current"), "{err}");
    let st = loader_json(loader(&state).arg("status"));
    assert_eq!(st["generation"], 2);
    assert_eq!(st["version"], "2.0.0");
    assert_eq!(st["services"][0]["health"], "healthy", "{st}");
    relay_probe(&relay, port, &state).expect("v2 still serves after the failed v3");
    let gens = loader_json(loader(&state).arg("generations"))["generations"].clone();
    let results: Vec<&str> = gens
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, vec!["succeeded", "succeeded", "failed"]);

    // rollback → v1
    let o = loader_json(loader(&state).arg("rollback"));
    assert_eq!(o["generation"], 1);
    relay_probe(&relay, port, &state).expect("v1 serves after rollback");
    let st = loader_json(loader(&state).arg("status"));
    assert_eq!(st["version"], "1.0.0");

    // gc --keep 1 removes generations 2 and 3 and only what v1 does not use
    let r = loader_json(loader(&state).args(["gc", "--keep", "1"]));
    assert_eq!(r["generations"], serde_json::json!([2, 3]));
    let left = config_names();
    for c in &v1_configs {
        assert!(
            left.contains(c),
            "gc removed {c}, which v1 uses; left: {left:?}"
        );
    }
    assert_eq!(left.len(), v1_configs.len(), "v2/v3 configs left: {left:?}");
    let store: Vec<_> = std::fs::read_dir(state.join("store")).unwrap().collect();
    assert_eq!(store.len(), 1, "only v1's store entry stays");
    let st = loader_json(loader(&state).arg("status"));
    assert!(st["images"][0]["present"].as_bool().unwrap());
    relay_probe(&relay, port, &state).expect("v1 serves after gc");
}
