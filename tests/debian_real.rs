//! The shipped Debian recipes against the real archive configured on this machine (apt's
//! sources; network): the committed locks still match their recipes, and haproxy locks
//! (InRelease verified with the Debian archive keyring), fetches and builds offline into the
//! same bytes from two folders and two stores. No Docker needed.

mod common;

use std::path::Path;

use common::{bin_cmd, repo_root, run_ok};

/// Copy the haproxy recipe (with its lock and files) and a one-service stack into `dir`.
fn haproxy_appliance(dir: &Path) -> std::path::PathBuf {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(recipes.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    for f in ["haproxy.toml", "haproxy.lock.json", "files/haproxy.cfg"] {
        std::fs::copy(repo_root().join("recipes").join(f), recipes.join(f)).unwrap();
    }
    std::fs::write(
        recipes.join("h-stack.toml"),
        "kind = \"stack\"\ntemplate = \"h-stack.yml\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("h-stack.yml"),
        "version: \"3.8\"\nservices:\n  proxy:\n    image: ${image:haproxy}\n",
    )
    .unwrap();
    let def = dir.join("bundles/h.toml");
    std::fs::write(
        &def,
        "name = \"h\"\nversion = \"1.0.0\"\nstack_name = \"h\"\nstack = \"h-stack\"\n",
    )
    .unwrap();
    def
}

#[test]
fn committed_locks_match_their_recipes() {
    for r in ["haproxy", "mariadb"] {
        let out = run_ok(
            bin_cmd(&["lock", "--check"]).arg(repo_root().join(format!("recipes/{r}.toml"))),
        );
        assert!(out.starts_with("ok: "), "{out}");
    }
}

#[test]
fn haproxy_locks_fetches_and_builds_reproducibly_from_the_real_archive() {
    let d1 = tempfile::tempdir().unwrap();
    let def1 = haproxy_appliance(d1.path());
    let recipe1 = d1.path().join("recipes/haproxy.toml");
    let store1 = d1.path().join("store");
    // Resolve again against today's archive (the committed lock may be behind it).
    let out = run_ok(
        bin_cmd(&["lock", "--update"])
            .arg(&recipe1)
            .arg("--store")
            .arg(&store1),
    );
    assert!(out.contains("haproxy.lock.json: "), "{out}");
    let lock: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d1.path().join("recipes/haproxy.lock.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = lock["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in ["haproxy", "libc6", "libssl3", "liblua5.3-0"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    for n in ["adduser", "perl-base", "dpkg"] {
        assert!(
            !names.contains(&n),
            "{n} is maintainer-script-only: {names:?}"
        );
    }
    for s in lock["sources"].as_array().unwrap() {
        assert!(!s["fingerprints"].as_array().unwrap().is_empty(), "{s}");
    }
    let build = |def: &Path, store: &Path, out: &Path| {
        let o = run_ok(
            bin_cmd(&["build"])
                .arg(def)
                .arg("--store")
                .arg(store)
                .arg("--out")
                .arg(out),
        );
        std::path::PathBuf::from(o.lines().next().unwrap().trim())
    };
    let b1 = build(&def1, &store1, &d1.path().join("out"));
    // Another folder and store: fetch the same lock, build, same bytes.
    let d2 = tempfile::tempdir().unwrap();
    let def2 = haproxy_appliance(d2.path());
    std::fs::copy(
        d1.path().join("recipes/haproxy.lock.json"),
        d2.path().join("recipes/haproxy.lock.json"),
    )
    .unwrap();
    let store2 = d2.path().join("store");
    run_ok(
        bin_cmd(&["fetch"])
            .arg(d2.path().join("recipes/haproxy.toml"))
            .arg("--store")
            .arg(&store2),
    );
    let b2 = build(&def2, &store2, &d2.path().join("out"));
    assert_eq!(
        common::sha256_of(&b1),
        common::sha256_of(&b2),
        "bit-reproducible"
    );
    let inspect = run_ok(bin_cmd(&["inspect"]).arg(&b1));
    assert!(
        inspect.contains(&format!("{} Debian packages", names.len())),
        "{inspect}"
    );
}
