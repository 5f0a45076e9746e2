//! The loader's verify step on the real engine and swarm: with a trusted key configured,
//! unsigned, foreign-signed and tampered bundles are refused by `activate`, `activate
//! --dry-run` and `load`, and nothing changes (no store entry, no image, no generation, no
//! stack object); a bundle signed by a trusted key activates. The downgrade guard refuses a
//! lower version unless `--allow-downgrade`; `rollback` is never blocked. Uses the small
//! busybox appliance (no published port).

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Build the tiny appliance as stack `stack`; returns the bundle path.
fn tiny(dir: &Path, stack: &str, version: &str, motd: &str) -> PathBuf {
    build_def(
        &tiny_appliance_on(dir, version, motd, stack, None),
        &dir.join("out"),
    )
}

fn manifest(bundle: &Path) -> serde_json::Value {
    serde_json::from_str(&run_ok(bin_cmd(&["inspect", "--json"]).arg(bundle))).unwrap()
}

fn image_id(bundle: &Path) -> String {
    manifest(bundle)["images"][0]["config_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bundle_identity(bundle: &Path) -> String {
    manifest(bundle)["identity"].as_str().unwrap().to_string()
}

fn has_image(id: &str) -> bool {
    docker()
        .args(["image", "inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

fn stack_objects(stack: &str) -> String {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let mut all = String::new();
    for kind in ["service", "network", "config", "secret"] {
        all += &run_ok(docker().args([kind, "ls", "-q", "--filter", &filter]));
    }
    all.trim().to_string()
}

fn generations(state: &Path) -> Vec<serde_json::Value> {
    loader_json(loader(state).arg("generations"))["generations"]
        .clone()
        .as_array()
        .unwrap()
        .clone()
}

fn current(state: &Path) -> Option<String> {
    std::fs::read_to_string(state.join("current"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Remove the stack (the fixture), then the bundles' images.
fn remove_images(fx: StackFixture, bundles: &[&PathBuf]) {
    let ids: Vec<String> = bundles.iter().map(|b| image_id(b)).collect();
    drop(fx);
    for id in ids {
        let _ = docker().args(["image", "rm", &id]).output();
    }
}

#[test]
fn trusted_keys_refuse_unsigned_foreign_and_tampered_bundles() {
    const STACK: &str = "ltrust";
    let fx = StackFixture::new(STACK);
    let tmp = &fx.tmp;
    let unsigned = tiny(&tmp.path().join("v1"), STACK, "1.0.0", "loader-trust-1");
    let v2 = tiny(&tmp.path().join("v2"), STACK, "2.0.0", "loader-trust-2");
    let id_v1 = image_id(&unsigned);
    let id_v2 = image_id(&v2);
    // leftovers of an earlier failed run would hide a load that should not happen
    for id in [&id_v1, &id_v2] {
        let _ = docker().args(["image", "rm", id]).output();
    }
    let key = tmp.path().join("site");
    let key_id = keygen(&key);
    let other = tmp.path().join("other");
    let other_id = keygen(&other);
    let sign = |bundle: &Path, key: &Path, name: &str| {
        let out = tmp.path().join(name);
        run_ok(
            bin_cmd(&["sign", "--key"])
                .arg(key)
                .arg(bundle)
                .arg("--out")
                .arg(&out),
        );
        out
    };
    let signed = sign(&unsigned, &key, "v1-signed.bundle");
    let foreign = sign(&unsigned, &other, "v1-other.bundle");
    let tampered = tmp.path().join("v1-tampered.bundle");
    {
        let mut bytes = std::fs::read(&signed).unwrap();
        // the bundle name: same length, still valid JSON, and no file hash covers it
        let name_at = bytes
            .windows(b"\"name\": \"tiny\"".len())
            .position(|w| w == b"\"name\": \"tiny\"")
            .unwrap();
        bytes[name_at + "\"name\": \"tin".len()] = b'z';
        std::fs::write(&tampered, bytes).unwrap();
    }

    let state = tmp.path().join("state");
    std::fs::create_dir_all(state.join("trusted-keys")).unwrap();
    std::fs::copy(pub_of(&key), state.join("trusted-keys").join("site.pub")).unwrap();

    let nothing_changed = |what: &str| {
        assert!(!has_image(&id_v1), "{what}: the image was loaded");
        assert_eq!(current(&state), None, "{what}: current");
        let store: Vec<_> = std::fs::read_dir(state.join("store"))
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(store.is_empty(), "{what}: store entries {store:?}");
        assert!(generations(&state).is_empty(), "{what}: generations");
        assert_eq!(stack_objects(STACK), "", "{what}: stack objects");
    };
    let refused = |bundle: &Path, args: &[&str], want: &str| {
        let err = fails(loader(&state).args(args).arg(bundle));
        assert!(
            err.contains(&format!("bundle {} refused: {want}", bundle.display())),
            "{args:?} {}: {err}",
            bundle.display()
        );
        assert!(err.contains("nothing was changed"), "{err}");
        nothing_changed(&format!("{args:?} {}", bundle.display()));
    };
    let unsigned_msg = format!(
        "it is unsigned, and this host accepts only bundles signed by a trusted key ({key_id} from {})",
        state.join("trusted-keys/site.pub").display()
    );
    for args in [&["activate"][..], &["activate", "--dry-run"], &["load"]] {
        refused(&unsigned, args, &unsigned_msg);
    }
    refused(
        &foreign,
        &["activate"],
        &format!("it is signed by key id {other_id}, which is not a trusted key here"),
    );
    refused(
        &tampered,
        &["activate"],
        &format!("its signature by key id {key_id} does not verify"),
    );

    // --trusted-key adds a key for one command
    let plan = loader_json(
        loader(&state)
            .args(["activate", "--dry-run", "--trusted-key"])
            .arg(pub_of(&other))
            .arg(&foreign),
    );
    assert_eq!(plan["result"], "planned");
    assert_eq!(plan["signed_by"], other_id.as_str());
    nothing_changed("dry run with --trusted-key");

    // signed by the trusted key: activates, and says so
    let o = loader_json(loader(&state).arg("activate").arg(&signed));
    assert_eq!(o["result"], "activated", "{o}");
    assert_eq!(o["signed_by"], key_id.as_str());
    let notes = o["notes"].to_string();
    assert!(
        notes.contains(&format!("signature: signed by key id {key_id}, trusted")),
        "{notes}"
    );
    assert_eq!(current(&state).as_deref(), Some("1"));
    assert_eq!(service_image(&format!("{STACK}_app")), id_v1);

    // with a generation running, an unsigned v2 changes nothing either
    let err = fails(loader(&state).arg("activate").arg(&v2));
    assert!(
        err.contains(&format!("bundle {} refused: it is unsigned", v2.display())),
        "{err}"
    );
    assert_eq!(current(&state).as_deref(), Some("1"));
    assert_eq!(generations(&state).len(), 1);
    assert!(!has_image(&id_v2), "v2's image was loaded");
    assert_eq!(service_image(&format!("{STACK}_app")), id_v1);

    remove_images(fx, &[&unsigned, &v2]);
}

fn pub_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

#[test]
fn downgrade_is_refused_unless_allowed_and_rollback_is_not_blocked() {
    const STACK: &str = "ldowngrade";
    let fx = StackFixture::new(STACK);
    let tmp = &fx.tmp;
    let state = tmp.path().join("state");
    let v1 = tiny(&tmp.path().join("v1"), STACK, "1.0.0", "loader-downgrade-1");
    let v1b = tiny(
        &tmp.path().join("v1b"),
        STACK,
        "1.0.0",
        "loader-downgrade-1b",
    );
    let v2 = tiny(&tmp.path().join("v2"), STACK, "2.0.0", "loader-downgrade-2");
    let app = format!("{STACK}_app");
    let fast = ["--monitor", "1s"];

    // no trusted key: unsigned accepted, with one warning line
    let o = loader(&state)
        .arg("activate")
        .args(fast)
        .arg(&v2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: bundle {} is unsigned, accepted because no trusted key is configured",
            v2.display()
        )),
        "{err}"
    );
    assert_eq!(current(&state).as_deref(), Some("1"));

    // v1 after v2: refused, dry run included, and nothing changes
    let want = "tiny 1.0.0 is older than tiny 2.0.0 of the current generation 1: refusing to downgrade without --allow-downgrade";
    for args in [&["activate"][..], &["activate", "--dry-run"]] {
        let err = fails(loader(&state).args(args).arg(&v1));
        assert!(
            err.contains(&format!("bundle {}: {want}", v1.display())),
            "{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(current(&state).as_deref(), Some("1"));
        assert_eq!(generations(&state).len(), 1);
        assert_eq!(service_image(&app), image_id(&v2));
        assert!(
            !state.join("store").join(bundle_identity(&v1)).exists(),
            "v1 was imported"
        );
    }

    // accepted with --allow-downgrade, and the plan says so
    let plan = run_ok(
        loader(&state)
            .args(["activate", "--dry-run", "--allow-downgrade"])
            .arg(&v1),
    );
    assert!(
        plan.contains("note: downgrade from 2.0.0 to 1.0.0 (allowed by --allow-downgrade)"),
        "{plan}"
    );
    let o = loader_json(
        loader(&state)
            .args(["activate", "--allow-downgrade"])
            .args(fast)
            .arg(&v1),
    );
    assert_eq!(o["result"], "activated", "{o}");
    assert_eq!(o["generation"], 2, "{o}");
    assert_eq!(service_image(&app), image_id(&v1));

    // same version, other build: allowed, and the plan says so
    let plan = run_ok(loader(&state).args(["activate", "--dry-run"]).arg(&v1b));
    assert!(
        plan.contains("note: same version 1.0.0 as the current generation, different build"),
        "{plan}"
    );

    // rollback from 2.0.0 to the 1.0.0 generation is the operator's explicit choice: no
    // flag needed
    let o = loader_json(loader(&state).arg("activate").args(fast).arg(&v2));
    assert_eq!(o["generation"], 3, "{o}");
    let o = loader_json(loader(&state).arg("rollback").args(fast));
    assert_eq!(o["result"], "rolled-back", "{o}");
    assert_eq!(o["version"], "1.0.0");
    assert_eq!(current(&state).as_deref(), Some("2"));
    assert_eq!(service_image(&app), image_id(&v1));
    let st = loader_json(loader(&state).arg("status"));
    assert_eq!(st["version"], "1.0.0");
    assert_eq!(st["services"][0]["health"], "healthy", "{st}");

    remove_images(fx, &[&v1, &v1b, &v2]);
}
