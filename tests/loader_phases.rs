//! Phases, one-shot jobs and `--only` on the real swarm, with the small busybox appliance:
//! a `migrate` job (phase 0) must complete before `app` (phase 1) starts; `--only app`
//! updates just that service; a failing job fails the activation and names it.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const STACK: &str = "lphases";

fn phased_bundle(dir: &Path, version: &str, job_command: &str) -> PathBuf {
    let yml = format!(
        r#"version: "3.8"
services:
  migrate:
    image: ${{image:tiny-image}}
    command: {job_command}
    x-reemo-phase: 0
    deploy:
      mode: replicated-job
  app:
    image: ${{image:tiny-image}}
    x-reemo-phase: 1
    configs:
      - source: app_config
        target: /etc/app.conf
    deploy:
      replicas: 1
configs:
  app_config:
    file: ../configs/app.conf
"#
    );
    let def = tiny_appliance_on(
        dir,
        version,
        &format!("loader-phases-{version}"),
        STACK,
        Some(&yml),
    );
    build_def(&def, &dir.join("out"))
}

#[test]
fn phases_jobs_and_only() {
    let fx = StackFixture::new(STACK);
    let state = fx.state.clone();
    let v1 = phased_bundle(&fx.path("v1"), "1.0.0", "[\"true\"]");
    let v2 = phased_bundle(&fx.path("v2"), "2.0.0", "[\"true\"]");
    let v3 = phased_bundle(
        &fx.path("v3"),
        "3.0.0",
        "[\"sh\", \"-c\", \"echo migration failed; exit 3\"]",
    );

    let plan = loader_json(loader(&state).args(["activate", "--dry-run"]).arg(&v1));
    let lines: Vec<&str> = plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .filter(|l| l.starts_with("phase"))
        .collect();
    assert_eq!(
        lines,
        vec![
            "phase 0: create service lphases_migrate",
            "phase 0: wait for lphases_migrate",
            "phase 1: create service lphases_app",
            "phase 1: wait for lphases_migrate, lphases_app, stable for the monitor window",
        ]
    );
    let o = loader_json(loader(&state).arg("activate").arg(&v1));
    assert_eq!(o["result"], "activated");
    let st = loader_json(loader(&state).arg("status"));
    let health: Vec<(&str, &str)> = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["health"].as_str().unwrap()))
        .collect();
    assert_eq!(
        health,
        vec![("lphases_migrate", "completed"), ("lphases_app", "healthy")]
    );
    let migrate_v1 = service_image("lphases_migrate");

    // --only app while the job (phase 0) also changes: refused, nothing changed
    let refused = fails(loader(&state).args(["activate", "--only", "app"]).arg(&v2));
    assert!(
        refused.contains("--only app: this bundle also changes migrate (phase 0, before app)")
            && refused.contains("--out-of-order")
            && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert_eq!(service_image("lphases_migrate"), migrate_v1);
    // the dry run says what restarts
    let o = loader_json(loader(&state).args(["activate", "--dry-run"]).arg(&v2));
    let notes = o["notes"].to_string();
    assert!(notes.contains("restarts: "), "{notes}");
    assert!(notes.contains("app"), "{notes}");
    // --only app --out-of-order: the job keeps its v1 spec
    let o = loader_json(
        loader(&state)
            .args(["activate", "--only", "app", "--out-of-order"])
            .arg(&v2),
    );
    let touched: Vec<&str> = o["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .filter(|l| l.contains("service"))
        .collect();
    assert_eq!(touched.len(), 1, "{touched:?}");
    assert!(
        touched[0].contains("update service lphases_app"),
        "{touched:?}"
    );
    assert_eq!(service_image("lphases_migrate"), migrate_v1);
    assert_ne!(service_image("lphases_app"), migrate_v1);
    let err = String::from_utf8_lossy(
        &loader(&state)
            .args(["activate", "--dry-run", "--only", "nope"])
            .arg(&v2)
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(
        err.contains("--only nope: the bundle has no such service or tag (services migrate, app)"),
        "{err}"
    );

    // a failing job stops the activation before phase 1 and names itself
    let out = loader(&state)
        .args(["activate", "--timeout", "60s"])
        .arg(&v3)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("service lphases_migrate failed"), "{err}");
    assert!(err.contains("exit code 3"), "{err}");
    assert!(
        !err.contains("update service lphases_app"),
        "phase 1 ran after a failed job: {err}"
    );
    let st = loader_json(loader(&state).arg("status"));
    assert_eq!(st["version"], "2.0.0");
    assert_eq!(service_image("lphases_migrate"), migrate_v1);

    remove_stack(STACK);
    for g in loader_json(loader(&state).arg("generations"))["generations"]
        .clone()
        .as_array()
        .unwrap()
    {
        let n = g["number"].as_u64().unwrap();
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(state.join(format!("generations/{n}.json"))).unwrap(),
        )
        .unwrap();
        for img in rec["desired"]["images"].as_array().unwrap() {
            let _ = docker()
                .args(["image", "rm", img["id"].as_str().unwrap()])
                .output();
        }
    }
}
