//! Debian-image benchmarks (`cargo bench --bench debian`), printing figures, asserting
//! nothing (goals from issue 10):
//! 1. resolving the haproxy closure from indices already fetched (goal ≤ 1 s);
//! 2. extracting and layering the haproxy closure from the store, against `dpkg-deb
//!    --fsys-tarfile | tar -x` of each `.deb`, then `tar -c | gzip`, in the same run
//!    (goal ≥ 1.5× faster);
//! 3. no-op rebuild of a bundle holding the haproxy and mariadb images (goal ≤ 100 ms).
//!
//! Needs the archive once (indices; `.deb`s fetched into target/test-store).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reemo_bundle::debian::{self, index::Index, release, resolve};
use reemo_bundle::recipe::Recipe;
use reemo_bundle::store::Store;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reemo-bundle"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("running a command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let store_dir = root().join("target/test-store");
    for r in ["haproxy", "mariadb"] {
        run(Command::new(bin())
            .arg("fetch")
            .arg(root().join(format!("recipes/{r}.toml")))
            .arg("--store")
            .arg(&store_dir));
    }
    let store = Store::open(&store_dir).unwrap();
    let recipe = Recipe::load(&root().join("recipes/haproxy.toml")).unwrap();
    let spec = debian::spec_of(&recipe).unwrap();
    let (_, lock) = debian::read_matching_lock(&recipe, spec).unwrap();

    // 1. Resolve.
    let mirrors = debian::mirrors_for(&spec.suites, None, Path::new("/etc/apt")).unwrap();
    let keyring = debian::keyring_path(&recipe, spec);
    let mut texts = Vec::new();
    for s in &spec.suites {
        let suite = release::fetch_suite(&mirrors[s], s, &keyring).unwrap();
        texts.push((
            s.clone(),
            release::fetch_index(&suite, "main", "amd64").unwrap(),
        ));
    }
    let mut parse = Vec::new();
    let mut solve = Vec::new();
    let req = debian::request_of(spec);
    let request = resolve::Request {
        wanted: req.packages.clone(),
        essential: req.essential.clone(),
        exclude: req.exclude.clone(),
        suites: req.suites.clone(),
    };
    for _ in 0..3 {
        let t = Instant::now();
        let mut ix = Index::default();
        for (s, text) in &texts {
            ix.add(text, s, "amd64", s).unwrap();
        }
        parse.push(t.elapsed());
        let t = Instant::now();
        let r = resolve::resolve(&ix, &request).unwrap();
        solve.push(t.elapsed());
        assert_eq!(r.len(), lock.packages.len());
    }
    let index_mb: usize = texts.iter().map(|(_, t)| t.len()).sum::<usize>() >> 20;
    println!("resolve haproxy closure ({} packages): {:?} (parsing the {index_mb} MiB of indices first: {:?}; goal ≤ 1 s)", lock.packages.len(), median(solve), median(parse));

    // 2. Extract and layer.
    let mut ours = Vec::new();
    let mut rootfs_mb = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let layers = debian::layers_from_store(&recipe, spec, &lock, &store).unwrap();
        let mut total = 0;
        for l in &layers {
            let tar = reemo_bundle::oci::layer_tar(l, 0).unwrap();
            total += tar.len();
            std::hint::black_box(reemo_bundle::oci::gzip(&tar));
        }
        ours.push(t.elapsed());
        rootfs_mb = total >> 20;
    }
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("root");
        std::fs::create_dir(&rootfs).unwrap();
        let t = Instant::now();
        for p in &lock.packages {
            let deb = store.fixed_input(&p.sha256);
            run(Command::new("sh").arg("-c").arg(format!(
                "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}'",
                deb.display(),
                rootfs.display()
            )));
        }
        run(Command::new("sh").arg("-c").arg(format!(
            "tar -c -C '{}' . | gzip -6 > '{}'",
            rootfs.display(),
            d.path().join("layer.tar.gz").display()
        )));
        theirs.push(t.elapsed());
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "extract + layer haproxy closure ({rootfs_mb} MiB rootfs, one thread): {o:?}; dpkg-deb | tar -x, tar -c | gzip: {t:?}; {:.2}× (goal ≥ 1.5×)",
        t.as_secs_f64() / o.as_secs_f64()
    );

    // 3. No-op rebuild of a bundle with both images.
    let d = tempfile::tempdir().unwrap();
    let recipes = d.path().join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::create_dir_all(d.path().join("bundles")).unwrap();
    std::fs::write(
        recipes.join("d-stack.toml"),
        "kind = \"stack\"\ntemplate = \"d-stack.yml\"\n",
    )
    .unwrap();
    std::fs::write(recipes.join("d-stack.yml"), "version: \"3.8\"\nservices:\n  proxy:\n    image: ${image:haproxy}\n  db:\n    image: ${image:mariadb}\n").unwrap();
    let def = d.path().join("bundles/d.toml");
    std::fs::write(&def, format!("name = \"d\"\nversion = \"1.0.0\"\nstack_name = \"d\"\nstack = \"d-stack\"\nrecipes = [\"../recipes\", \"{}\"]\n", root().join("recipes").display())).unwrap();
    let build = || {
        let t = Instant::now();
        run(Command::new(bin())
            .arg("build")
            .arg(&def)
            .arg("--store")
            .arg(&store_dir)
            .arg("--out")
            .arg(d.path().join("out")));
        t.elapsed()
    };
    let first = build();
    let noop = median((0..5).map(|_| build()).collect());
    println!("bundle with haproxy + mariadb: first build {first:?}, no-op rebuild {noop:?} (goal ≤ 100 ms)");
}
