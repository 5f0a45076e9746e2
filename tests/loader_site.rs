//! Site parameters on the real engine and swarm: one relay bundle, its published port set per
//! site (`--set`, `--site FILE`), kept across activations, a change of value alone making a
//! new generation, rollback restoring the previous value, bad values refused with nothing
//! changed, the values shown by status and generations, and `configure` changing a value
//! with no bundle file at hand.

mod common;

use common::*;

const STACK: &str = "lsite";

/// The relay appliance with the test fixture's stack recipe (its parameters included).
fn build(fx: &StackFixture) -> std::path::PathBuf {
    let root = repo_root();
    let dir = fx.path("b");
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(recipes.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/relay-stack.yml"),
        recipes.join("site-stack.yml"),
    )
    .unwrap();
    std::fs::copy(
        root.join("tests/fixtures/relay.toml"),
        recipes.join("relay.toml"),
    )
    .unwrap();
    let toml = std::fs::read_to_string(root.join("tests/fixtures/relay-stack.toml"))
        .unwrap()
        .replace("relay-stack.yml", "site-stack.yml");
    assert!(toml.contains("[parameters.RELAY_PORT]"), "{toml}");
    std::fs::write(recipes.join("site-stack.toml"), toml).unwrap();
    let def = dir.join("bundles/site.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"relayws\"\nversion = \"1.0.0\"\nstack_name = \"{STACK}\"\nstack = \"site-stack\"\nrecipes = [\"../recipes\", {:?}]\n[binaries]\nws-relay-server = \"relay-bin\"\n",
            root.join("recipes").display().to_string()
        ),
    )
    .unwrap();
    build_def(&def, &dir.join("out"))
}

fn generations(fx: &StackFixture) -> serde_json::Value {
    loader_json(fx.loader().arg("generations"))["generations"].clone()
}

#[test]
fn site_values_make_generations_and_roll_back() {
    let fx = StackFixture::new(STACK);
    let bundle = build(&fx);
    let relay = extract_relay(&bundle, fx.tmp.path());
    let inspect = run_ok(common::bin_cmd(&["inspect"]).arg(&bundle));
    assert!(
        inspect.contains("RELAY_PORT (port, default 8080)"),
        "{inspect}"
    );
    let (p1, p2) = (fx.port, free_port());

    // bad values are refused before anything changes
    for (set, want) in [
        (
            "RELAY_PORT=0".to_string(),
            "--set: parameter RELAY_PORT = \"0\": expected a port number from 1 to 65535"
                .to_string(),
        ),
        (
            "RELAY_PROT=1".to_string(),
            "--set: unknown parameter RELAY_PROT (did you mean RELAY_PORT?)".to_string(),
        ),
        (
            "RELAY_MAX_CONNECTIONS=many".into(),
            "parameter RELAY_MAX_CONNECTIONS = \"many\": expected an integer".into(),
        ),
    ] {
        let err = fails(
            fx.loader()
                .arg("activate")
                .arg(&bundle)
                .args(["--set", &set]),
        );
        assert!(err.contains(&want), "{set}: {err}");
        assert!(err.contains("nothing was changed"), "{err}");
    }
    let site_file = fx.path("site.toml");
    std::fs::write(&site_file, "RELAY_PORT = 8080\nNOT_A_PARAMETER = \"x\"\n").unwrap();
    let err = fails(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .arg("--site")
            .arg(&site_file),
    );
    assert!(
        err.contains(&format!(
            "{}: unknown parameter NOT_A_PARAMETER",
            site_file.display()
        )),
        "{err}"
    );
    assert!(
        !fx.state.join("current").exists(),
        "a refusal activated something"
    );

    // generation 1 on port p1
    let o = loader_json(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .args(["--set", &format!("RELAY_PORT={p1}")]),
    );
    assert_eq!(o["result"], "activated", "{o}");
    relay_probe(&relay, p1, &fx.state).expect("generation 1 serves on its port");
    let st = run_ok(fx.loader().arg("status"));
    assert!(st.contains(&format!("site RELAY_PORT = {p1}")), "{st}");
    assert!(st.contains("site RELAY_MAX_CONNECTIONS = 100000"), "{st}");

    // the same bundle again: the values are kept, nothing to do
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "unchanged", "{o}");

    // a dry run of a new value shows it and changes nothing
    let dry = run_ok(fx.loader().arg("activate").arg(&bundle).args([
        "--dry-run",
        "--set",
        &format!("RELAY_PORT={p2}"),
    ]));
    assert!(
        dry.contains(&format!("site value RELAY_PORT: {p1} -> {p2} (--set)")),
        "{dry}"
    );
    assert_eq!(generations(&fx).as_array().unwrap().len(), 1);

    // a site file changes only a value: generation 2, same bundle, on port p2
    std::fs::write(&site_file, format!("RELAY_PORT = {p2}\n")).unwrap();
    let o = loader_json(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .arg("--site")
            .arg(&site_file),
    );
    assert_eq!(o["result"], "activated", "{o}");
    assert_eq!(o["generation"], 2);
    relay_probe(&relay, p2, &fx.state).expect("generation 2 serves on the new port");
    let gens = generations(&fx);
    assert_eq!(gens[0]["site"]["RELAY_PORT"], p1.to_string(), "{gens}");
    assert_eq!(gens[1]["site"]["RELAY_PORT"], p2.to_string(), "{gens}");
    assert_eq!(gens[0]["identity"], gens[1]["identity"], "same bundle");

    // rollback restores the previous value
    let o = loader_json(fx.loader().arg("rollback"));
    assert_eq!(o["result"], "rolled-back", "{o}");
    relay_probe(&relay, p1, &fx.state).expect("the rollback serves on the first port again");
    let st = run_ok(fx.loader().arg("status"));
    assert!(st.contains(&format!("site RELAY_PORT = {p1}")), "{st}");

    // configure: a value changed without the bundle file (read from the host store)
    std::fs::remove_file(&bundle).unwrap();
    let err = fails(fx.loader().args(["configure", "--set", "RELAY_PORT=http"]));
    assert!(err.contains("expected a port number"), "{err}");
    let p3 = free_port();
    let o = loader_json(
        fx.loader()
            .args(["configure", "--set", &format!("RELAY_PORT={p3}")]),
    );
    assert_eq!(o["result"], "activated", "{o}");
    assert_eq!(o["generation"], 3, "{o}");
    relay_probe(&relay, p3, &fx.state).expect("the configured port serves");
    let gens = generations(&fx);
    assert_eq!(gens[2]["site"]["RELAY_PORT"], p3.to_string(), "{gens}");
    assert_eq!(gens[2]["identity"], gens[0]["identity"], "same bundle");
}
