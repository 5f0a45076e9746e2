//! Secrets given as site values (`x-reemo-value`, seed 001's HMACSECRET and API_LICENSE) on
//! the real swarm, with the tiny appliance: generated on the host while the site gives none,
//! the site's value once it does (the task reads it), masked in every output, refused with
//! nothing changed when a secret that cannot be generated has no value, and a rollback
//! giving the task the previous content again.

mod common;

use common::*;

const STACK: &str = "lsecrets";

const STACK_YML: &str = r#"version: "3.8"
services:
  app:
    image: ${image:tiny-image}
    configs:
      - source: app_config
        target: /etc/app.conf
    secrets:
      - source: hmacsecret
        target: HMACSECRET
      - source: api_license
        target: API_LICENSE
configs:
  app_config:
    file: ../configs/app.conf
secrets:
  hmacsecret:
    external: true
    x-reemo-value: "${HMACSECRET}"
    x-reemo-generate: "{hex32}"
  api_license:
    external: true
    x-reemo-value: "${API_LICENSE}"
"#;

const PARAMS: &str = r#"
[parameters.HMACSECRET]
type = "string"
default = ""
secret = true
description = "the HMAC secret; generated on the host when empty"

[parameters.API_LICENSE]
type = "string"
default = ""
secret = true
description = "the vendor's licence; must be given"
"#;

/// What the running task reads from `/run/secrets/NAME`.
fn task_secret(name: &str) -> String {
    let id = run_ok(docker().args([
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={STACK}_app"),
    ]));
    let id = id.lines().next().expect("a running task").to_string();
    run_ok(docker().args([
        "exec",
        &id,
        "/bin/busybox",
        "cat",
        &format!("/run/secrets/{name}"),
    ]))
}

#[test]
fn secrets_from_site_values_generated_when_absent_masked_and_rolled_back() {
    let fx = StackFixture::new(STACK);
    let dir = fx.path("b");
    let def = tiny_appliance_on(&dir, "1.0.0", "secrets", STACK, Some(STACK_YML));
    let toml = dir.join("recipes/tiny-stack.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}{PARAMS}")).unwrap();
    let bundle = build_def(&def, &dir.join("out"));
    let activate = |sets: &[&str]| {
        let mut c = fx.loader();
        c.arg("activate").arg(&bundle).args(["--timeout", "90s"]);
        for s in sets {
            c.arg(format!("--set={s}"));
        }
        c
    };

    // no licence: refused before anything changes, naming the parameter
    let e = fails(&mut activate(&[]));
    assert!(
        e.contains("secret api_license: site parameter API_LICENSE is empty and the secret is not generated on the host")
            && e.contains("nothing was changed"),
        "{e}"
    );
    assert!(
        !fx.state.join("generations").exists()
            || std::fs::read_dir(fx.state.join("generations"))
                .unwrap()
                .count()
                == 0,
        "no generation was made"
    );

    // the licence given, the HMAC secret generated on the host
    let o = loader_json(&mut activate(&["API_LICENSE=lic-one-7f3a"]));
    assert_eq!(o["result"], "activated", "{o}");
    let generated = std::fs::read_to_string(fx.state.join("secrets/hmacsecret")).unwrap();
    assert_eq!(generated.trim().len(), 64, "{generated}");
    assert_eq!(task_secret("HMACSECRET"), generated);
    assert_eq!(task_secret("API_LICENSE"), "lic-one-7f3a");

    // the site's own HMAC secret and a new licence: a new generation, masked everywhere
    let plan = run_ok(
        activate(&["HMACSECRET=site-hmac-91c2", "API_LICENSE=lic-two-55d0"]).arg("--dry-run"),
    );
    let o = loader_json(&mut activate(&[
        "HMACSECRET=site-hmac-91c2",
        "API_LICENSE=lic-two-55d0",
    ]));
    assert_eq!(o["result"], "activated", "{o}");
    assert_eq!(task_secret("HMACSECRET"), "site-hmac-91c2");
    assert_eq!(task_secret("API_LICENSE"), "lic-two-55d0");
    let status = run_ok(fx.loader().arg("status"));
    let generations = run_ok(fx.loader().arg("generations"));
    let spec = run_ok(docker().args(["service", "inspect", &format!("{STACK}_app")]));
    for (what, text) in [
        ("plan", &plan),
        ("activate", &o.to_string()),
        ("status", &status),
        ("generations", &generations),
        ("service spec", &spec),
    ] {
        for secret in ["site-hmac-91c2", "lic-two-55d0", "lic-one-7f3a"] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    }
    assert!(
        plan.contains("HMACSECRET"),
        "the plan names the changed value: {plan}"
    );

    // rollback: the task reads the previous contents again
    let o = loader_json(fx.loader().arg("rollback"));
    assert_eq!(o["result"], "rolled-back", "{o}");
    assert_eq!(task_secret("HMACSECRET"), generated);
    assert_eq!(task_secret("API_LICENSE"), "lic-one-7f3a");
}
