//! Build-side benchmarks (`cargo bench --bench build`), printing figures, asserting nothing:
//! 1. no-op rebuild of the default bundle with everything cached (goal ≤ 100 ms wall);
//! 2. packing: rebuilding the image layers and the bundle from files already in the store,
//!    against `tar cf - FILES | gzip` of the same files in the same run (goal ≥ 1.5×).
//!
//! Uses the shared test store (target/test-store); the first run builds it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reemo-bundle"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build(store: &Path, out: &Path) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    let o = Command::new(bin())
        .current_dir(root())
        .args(["build", "bundles/relayws.toml", "--json", "--store"])
        .arg(store)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running reemo-bundle build");
    let el = t.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (el, serde_json::from_slice(&o.stdout).expect("json"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn copy_dir(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let store = root().join("target").join("test-store");
    let out = root().join("target").join("bench-out");
    eprintln!(
        "preparing: building the default bundle into {}",
        store.display()
    );
    let (_, first) = build(&store, &out);
    let bundle = PathBuf::from(first["bundle"].as_str().unwrap());

    // 1. No-op rebuild.
    let runs: Vec<Duration> = (0..15).map(|_| build(&store, &out).0).collect();
    let noop = median(runs.clone());
    println!(
        "no-op rebuild (default bundle, all cached): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} runs (goal <= 100 ms)",
        noop.as_secs_f64() * 1e3,
        runs.iter().min().unwrap().as_secs_f64() * 1e3,
        runs.iter().max().unwrap().as_secs_f64() * 1e3,
        runs.len()
    );

    // 2. Packing from the store: drop the image, stack and bundle entries and the layer cache
    // from a copy of the store, keep the binaries, rebuild.
    let ins = Command::new(bin())
        .args(["inspect", "--json"])
        .arg(&bundle)
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&ins.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut pack_times = Vec::new();
    let mut gzip_times = Vec::new();
    // The same input files: the binaries and the files the image and stack take in.
    let mut inputs: Vec<PathBuf> = Vec::new();
    for i in m["inputs"].as_array().unwrap() {
        let obj = store.join("objects").join(i["identity"].as_str().unwrap());
        if i["kind"] == "binary" {
            for e in std::fs::read_dir(obj.join("bin")).unwrap() {
                inputs.push(e.unwrap().path());
            }
        }
    }
    inputs.push(root().join("recipes/files/ca-certificates.crt"));
    inputs.push(root().join("recipes/files/relay.toml"));
    inputs.push(root().join("recipes/relayws-stack.yml"));
    let input_bytes: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    for round in 0..5 {
        let s = tmp.path().join(format!("store{round}"));
        std::fs::create_dir_all(&s).unwrap();
        copy_dir(&store.join("objects"), &s.join("objects"));
        for i in m["inputs"].as_array().unwrap() {
            if i["kind"] == "image" || i["kind"] == "stack" {
                let _ = std::fs::remove_dir_all(
                    s.join("objects").join(i["identity"].as_str().unwrap()),
                );
            }
        }
        let _ = std::fs::remove_dir_all(s.join("objects").join(m["identity"].as_str().unwrap()));
        let _ = std::fs::remove_dir_all(s.join("layers"));
        let o = tmp.path().join(format!("out{round}"));
        let (t, v) = build(&s, &o);
        let built: Vec<String> = v["built"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        assert!(
            !built.iter().any(|b| b.ends_with("-bin")),
            "binaries must come from the store: {built:?}"
        );
        pack_times.push(t);
        let _ = std::fs::remove_dir_all(&s);

        let t = Instant::now();
        let mut cmd = String::from("tar cf - -P");
        for p in &inputs {
            cmd.push(' ');
            cmd.push_str(&p.display().to_string());
        }
        cmd.push_str(" | gzip > /dev/null");
        let st = Command::new("sh").args(["-c", &cmd]).status().unwrap();
        assert!(st.success());
        gzip_times.push(t.elapsed());
    }
    let (p, g) = (median(pack_times), median(gzip_times));
    let mb = input_bytes as f64 / 1e6;
    println!(
        "packing from the store ({mb:.1} MB of input files): reemo-bundle {:.0} ms ({:.1} MB/s, whole `build` process), tar|gzip {:.0} ms ({:.1} MB/s); ratio {:.2}x (goal >= 1.5x)",
        p.as_secs_f64() * 1e3,
        mb / p.as_secs_f64(),
        g.as_secs_f64() * 1e3,
        mb / g.as_secs_f64(),
        g.as_secs_f64() / p.as_secs_f64()
    );
}
