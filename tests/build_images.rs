//! The default bundle's images against the real engine: `POST /images/load` (through
//! `docker load`) of the bundle's OCI layout gives image IDs equal to the config digests in
//! bundle.json; the relay image runs as a container and as a Swarm service and reports
//! healthy through its own HEALTHCHECK; the shipped executables are static.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reemo_bundle::bundle::reader::BundleFile;

/// Write the bundle's `oci/` folder as a tar that `docker load` reads.
fn oci_tar(bundle: &BundleFile, dest: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(dest).unwrap());
    for f in &bundle.manifest().files {
        let Some(rel) = f.path.strip_prefix("oci/") else {
            continue;
        };
        let mut data = Vec::new();
        bundle
            .open_entry(&f.path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, rel, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// Whether `data` is a 64-bit ELF executable without a PT_INTERP program header (that is,
/// it needs no dynamic loader).
fn is_static_elf(data: &[u8]) -> bool {
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) != 3
    })
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes a container when dropped, so a failing assertion leaves nothing running.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = common::docker().args(["rm", "-f", &self.0]).output();
    }
}

fn secrets_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("keys"),
        "k1=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    std::fs::write(d.path().join("control"), "control-secret-for-tests\n").unwrap();
    for f in ["keys", "control"] {
        std::fs::set_permissions(d.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn images_load_with_matching_ids_and_relay_runs_healthy() {
    common::require_swarm_manager();
    let path = common::default_bundle();
    let bundle = BundleFile::open(&path).unwrap();
    let m = bundle.manifest().clone();
    let tmp = tempfile::tempdir().unwrap();

    // The executables shipped on the stick are static: ELF with no program interpreter
    // (the check itself rejects a dynamic executable of the host).
    assert!(!is_static_elf(&std::fs::read("/bin/sh").unwrap()));
    for exe in ["bin/ws-relay-server", "bin/reemo-bundle"] {
        let data = bundle.read_entry(exe).unwrap();
        assert!(is_static_elf(&data), "{exe} is not a static ELF executable");
        let p = tmp.path().join(exe.replace('/', "_"));
        std::fs::write(&p, &data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Load and compare IDs.
    let archive = tmp.path().join("oci.tar");
    oci_tar(&bundle, &archive);
    common::run_ok(common::docker().arg("load").arg("-i").arg(&archive));
    let relay = m.image("relay-image").expect("relay image in bundle.json");
    for img in &m.images {
        let id = common::run_ok(common::docker().args([
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &img.reference(),
        ]));
        assert_eq!(
            id.trim(),
            img.config_digest,
            "image ID of {}",
            img.reference()
        );
    }
    let user = common::run_ok(common::docker().args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        &relay.config_digest,
    ]));
    assert_eq!(user.trim(), "10001:10001");

    // As a container, with a port published on loopback; the bundle's own relay binary
    // then runs an end-to-end session through it.
    let secrets = secrets_dir();
    let port = common::free_port();
    let name = format!("reemo-build-test-{}", std::process::id());
    let _ = common::docker().args(["rm", "-f", &name]).output();
    let guard = ContainerGuard(name.clone());
    common::run_ok(common::docker().args(["run", "-d", "--name", &name]).args([
        "-v",
        &format!("{}:/run/secrets:ro", secrets.path().display()),
        "-e",
        "RELAY_TOKEN_KEYS_FILE=/run/secrets/keys",
        "-e",
        "RELAY_CONTROL_SECRET_FILE=/run/secrets/control",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &relay.config_digest,
    ]));
    let health = wait_for("container healthy", Duration::from_secs(60), || {
        let s = common::docker()
            .args([
                "inspect",
                "--format",
                "{{.State.Health.Status}} {{.State.Status}}",
                &name,
            ])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&s.stdout).trim().to_string();
        assert!(!s.ends_with("exited"), "relay container exited: {s}");
        s.starts_with("healthy").then_some(s)
    });
    assert!(health.starts_with("healthy"));
    let relay_bin = tmp.path().join("bin_ws-relay-server");
    let probe = Command::new(&relay_bin)
        .args([
            "probe",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--wait-secs",
            "20",
            "--control-secret-file",
        ])
        .arg(secrets.path().join("control"))
        .output()
        .unwrap();
    drop(guard);
    assert!(
        probe.status.success() && String::from_utf8_lossy(&probe.stdout).contains("\"ok\":true"),
        "probe through the container failed: {}{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );

    // As a Swarm service referenced by image ID (no registry), with Swarm secrets.
    let svc = format!("reemo-build-test-svc-{}", std::process::id());
    let (s_keys, s_ctl) = (format!("{svc}-keys"), format!("{svc}-ctl"));
    common::run_ok(
        common::docker()
            .args(["secret", "create", &s_keys])
            .arg(secrets.path().join("keys")),
    );
    common::run_ok(
        common::docker()
            .args(["secret", "create", &s_ctl])
            .arg(secrets.path().join("control")),
    );
    let created = common::docker()
        .args(["service", "create", "--detach", "--name", &svc])
        .args([
            "--secret",
            &format!("source={s_keys},target=keys,uid=10001,mode=0400"),
        ])
        .args([
            "--secret",
            &format!("source={s_ctl},target=control,uid=10001,mode=0400"),
        ])
        .args(["--env", "RELAY_TOKEN_KEYS_FILE=/run/secrets/keys"])
        .args(["--env", "RELAY_CONTROL_SECRET_FILE=/run/secrets/control"])
        .arg(&relay.config_digest)
        .output()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        wait_for("service task healthy", Duration::from_secs(90), || {
            let o = common::docker()
                .args([
                    "ps",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={svc}"),
                    "--format",
                    "{{.Status}}",
                ])
                .output()
                .ok()?;
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.contains("(healthy)").then_some(s)
        });
    });
    let _ = common::docker().args(["service", "rm", &svc]).output();
    wait_for("service removed", Duration::from_secs(30), || {
        let o = common::docker()
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=com.docker.swarm.service.name={svc}"),
                "-q",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .is_empty()
            .then_some(String::new())
    });
    let _ = common::docker()
        .args(["secret", "rm", &s_keys, &s_ctl])
        .output();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
