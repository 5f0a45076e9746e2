//! `load`: streams a bundle's images into the engine without unpacking the bundle, reports
//! progress, skips images the engine already holds and checks the resulting IDs.

mod common;

use common::*;

#[test]
fn load_streams_skips_present_images_and_checks_ids() {
    require_docker();
    let tmp = tempfile::tempdir().unwrap();
    let def = write_tiny_appliance(tmp.path(), "1.0.0", "loader-load");
    let bundle = build_def(&def, &tmp.path().join("out"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new("tar")
            .arg("-xOf")
            .arg(&bundle)
            .arg("bundle.json")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id = manifest["images"][0]["config_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let reference = format!(
        "{}:{}",
        manifest["images"][0]["repository"].as_str().unwrap(),
        manifest["images"][0]["tag"].as_str().unwrap()
    );
    let _ = docker().args(["image", "rm", "-f", &id]).output();
    let state = tmp.path().join("state");

    let out = loader(&state).arg("load").arg(&bundle).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("loading 1 image(s)") && err.contains("MB"),
        "progress: {err}"
    );
    let got = run_ok(docker().args(["image", "inspect", "--format", "{{.Id}}", &reference]));
    assert_eq!(
        got.trim(),
        id,
        "the loaded image has the ID bundle.json promises"
    );

    let r = loader_json(loader(&state).arg("load").arg(&bundle))["engines"].clone();
    assert_eq!(r[0]["loaded"], 0, "{r}");
    assert_eq!(r[0]["skipped"], 1, "{r}");
    assert!(!state.exists(), "load does not touch the state directory");

    // two engine addresses (here the same engine twice) are loaded in parallel
    let _ = docker().args(["image", "rm", "-f", &id]).output();
    let sock = "unix:///var/run/docker.sock";
    let r = loader_json(
        loader(&state)
            .arg("load")
            .arg(&bundle)
            .args(["--engine", sock, "--engine", sock]),
    )["engines"]
        .clone();
    assert_eq!(r.as_array().unwrap().len(), 2, "{r}");
    let _ = docker().args(["image", "rm", "-f", &id]).output();
}
