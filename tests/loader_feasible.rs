//! Services that could never converge on the nodes holding their images are refused before
//! anything changes (docs/swarm-notes.md, "Placement pitfalls"), instead of hanging until the timeout: more
//! host-port replicas than nodes, and a start-first update with no free node.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const STACK: &str = "lfeasible";

/// The tiny appliance on this stack: `replicas` tasks of busybox httpd on a host-mode port,
/// updated in `order`.
fn bundle(fx: &StackFixture, name: &str, version: &str, replicas: u32, order: &str) -> PathBuf {
    let dir = fx.path(name);
    let yml = format!(
        r#"version: "3.8"
services:
  app:
    image: ${{image:tiny-image}}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /etc & wait"]
    configs:
      - source: app_config
        target: /etc/app.conf
    ports:
      - target: 8080
        published: {port}
        mode: host
    deploy:
      replicas: {replicas}
      update_config:
        order: {order}
configs:
  app_config:
    file: ../configs/app.conf
"#,
        port = fx.port
    );
    let def = tiny_appliance_on(
        &dir,
        version,
        &format!("feasible-{name}"),
        STACK,
        Some(&yml),
    );
    build_def(&def, &dir.join("out"))
}

fn refused(state: &Path, bundle: &Path, extra: &[&str]) -> String {
    let err = fails(loader(state).arg("activate").arg(bundle).args(extra));
    assert!(err.contains("the stack was not changed"), "{err}");
    err
}

fn service_ids() -> String {
    run_ok(docker().args([
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Image}}",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
    ]))
}

#[test]
fn hopeless_placements_are_refused_before_anything_changes() {
    let fx = StackFixture::new(STACK);

    // two replicas on one host-mode port, one node
    let two = bundle(&fx, "two", "1.0.0", 2, "stop-first");
    for extra in [&["--dry-run"][..], &[][..]] {
        let err = refused(&fx.state, &two, extra);
        assert!(
            err.contains("service lfeasible_app: 2 replicas")
                && err.contains(&format!("host-mode published port {}", fx.port))
                && err.contains("allow 1"),
            "{err}"
        );
    }
    assert_eq!(service_ids(), "", "a service was created");
    let gens = loader_json(fx.loader().arg("generations"))["generations"].clone();
    assert_eq!(gens, serde_json::json!([]), "a generation was recorded");

    // start-first on a host-mode port: creating is fine, updating can never start the new
    // task next to the old one on a single node
    let v1 = bundle(&fx, "v1", "1.0.0", 1, "start-first");
    let v2 = bundle(&fx, "v2", "2.0.0", 1, "start-first");
    let o = loader_json(fx.loader().arg("activate").arg(&v1));
    assert_eq!(o["result"], "activated");
    let before = service_ids();
    let err = refused(&fx.state, &v2, &[]);
    assert!(
        err.contains("start-first") && err.contains("use order: stop-first"),
        "{err}"
    );
    assert_eq!(service_ids(), before, "the service was changed");
    let st = loader_json(fx.loader().arg("status"));
    assert_eq!(st["version"], "1.0.0", "{st}");
    assert_eq!(st["services"][0]["health"], "healthy", "{st}");
}
