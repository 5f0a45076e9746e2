//! Loader benchmarks against the real engine and swarm (`cargo bench --bench loader`):
//! 1. re-activating the current bundle (nothing to do, state verified), wall time;
//! 2. rollback to the previous generation until converged and the relay serves;
//! 3. cold `activate` of the relay bundle (the relay alone, serving TLS: the loader tests'
//!    fixture) until the relay answers, against `docker load` + `docker stack deploy` of the
//!    same images and stack file (with a certificate made by openssl for its TLS secrets).
//!
//! Prints one line per figure; run on an otherwise idle machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// One end-to-end probe of the relay (TLS, verified with `ca`).
fn probe_once(relay: &Path, port: u16, secret: &Path, ca: &Path) -> bool {
    Command::new(relay)
        .args(["probe", "--url", &format!("https://127.0.0.1:{port}")])
        .arg("--ca-file")
        .arg(ca)
        .arg("--control-secret-file")
        .arg(secret)
        .args(["--messages", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Every wait of this bench gives up (and fails) after this long.
const LIMIT: Duration = Duration::from_secs(120);

/// Panic when `since + LIMIT` has passed, killing `child` (by PID) first if given.
fn check_limit(since: Instant, what: &str, child: Option<&mut std::process::Child>) {
    if since.elapsed() > LIMIT {
        if let Some(c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        panic!("{what}: no result within {LIMIT:?}");
    }
}

/// Poll the relay until the probe succeeds; returns when it did (bounded by [`LIMIT`]).
fn wait_serving(relay: &Path, port: u16, secret: &Path, ca: &Path) -> Instant {
    let since = Instant::now();
    loop {
        if ca.exists() && probe_once(relay, port, secret, ca) {
            return Instant::now();
        }
        check_limit(since, "waiting for the relay to serve", None);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn remove_image(id: &str) {
    let _ = docker().args(["image", "rm", "-f", id]).output();
}

fn main() {
    require_swarm_manager();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();

    // 1 + 2: a relay variant pair on its own stack and port
    let stack = "lbench";
    remove_stack(stack);
    let port = free_port();
    let v1 = build_relay_variant(&work.join("v1"), stack, port, "1.0.0", |c| c);
    let v2 = build_relay_variant(&work.join("v2"), stack, port, "2.0.0", |c| {
        c.replace("pair_timeout_secs = 30", "pair_timeout_secs = 32")
    });
    let relay = extract_relay(&v1, work);
    let state = work.join("state");
    run_ok(loader(&state).arg("activate").arg(&v1));
    let mut noop = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        run_ok(loader(&state).arg("activate").arg(&v1));
        noop.push(t.elapsed());
    }
    println!(
        "re-activate current bundle (nothing to do): median {} over 10 (bundle {} bytes)",
        ms(median(noop)),
        std::fs::metadata(&v1).unwrap().len()
    );
    run_ok(loader(&state).arg("activate").arg(&v2));
    let secret = state.join("secrets/relay_control_secret");
    let (mut serving, mut converged) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let mut child = loader(&state)
            .arg("rollback")
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // The old relay answers until Swarm stops it (stop-first): the rolled-back one
        // serves from the first answer after the gap.
        let mut seen_down = false;
        let mut served = None;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "rollback failed");
                break;
            }
            check_limit(t, "rollback", Some(&mut child));
            let ok = probe_once(&relay, port, &secret, &state.join("pki/ca.pem"));
            if !ok {
                seen_down = true;
            } else if seen_down && served.is_none() {
                served = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let done = Instant::now();
        serving.push(served.unwrap_or(done) - t);
        converged.push(done - t);
        run_ok(loader(&state).arg("activate").arg(&v2));
    }
    println!(
        "rollback to the previous generation: serving after median {}, converged (healthy, update completed, monitor window) after median {}, over 3",
        ms(median(serving)),
        ms(median(converged))
    );
    remove_stack(stack);

    // 3: cold load + activate of the relay bundle vs docker load + docker stack deploy
    let bundle = build_relay_variant(&work.join("cold"), "relayws", 8080, "1.0.0", |c| c);
    let relay = extract_relay(&bundle, work);
    let manifest: serde_json::Value = serde_json::from_slice(&run_ok_bytes(
        Command::new("tar")
            .arg("-xOf")
            .arg(&bundle)
            .arg("bundle.json"),
    ))
    .unwrap();
    let image_id = manifest["images"][0]["config_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let default_stack = manifest["stack"].as_str().unwrap().to_string();
    let (unpacked, archive) = unpack_for_docker_load(&bundle, work);
    // the same bundle with the relay on the stack's overlay network, as `docker stack deploy`
    // runs it (it ignores `x-reemo-overlay`)
    let overlay = build_relay_variant_with(
        &work.join("overlay"),
        &default_stack,
        8080,
        manifest["version"].as_str().unwrap(),
        |c| c,
        |s| s.replace("x-reemo-overlay: false", ""),
    );
    let base_stack = "lbase";
    // the baseline's TLS pair: a self-signed certificate for localhost and 127.0.0.1
    let (tls_cert, tls_key) = (work.join("base-tls.pem"), work.join("base-tls.key"));
    openssl_self_signed(
        &tls_cert,
        &tls_key,
        "/CN=localhost",
        2,
        &["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    let mut ours = Vec::new();
    let mut ours_overlay = Vec::new();
    let mut base = Vec::new();
    for round in 0..3 {
        // ours: fresh state, image absent (as shipped, then with the overlay network)
        let st = work.join(format!("state-cold-{round}"));
        for (b, times, tag) in [
            (&bundle, &mut ours, ""),
            (&overlay, &mut ours_overlay, "-o"),
        ] {
            remove_stack(&default_stack);
            remove_stack(base_stack);
            remove_image(&image_id);
            let st = work.join(format!("state-cold-{round}{tag}"));
            let t = Instant::now();
            let mut child = loader(&st)
                .arg("activate")
                .arg(b)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let secret = st.join("secrets/relay_control_secret");
            while !secret.exists() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("activate ended ({status}) before writing its secrets");
                }
                check_limit(t, "activate writing its secrets", Some(&mut child));
                std::thread::sleep(Duration::from_millis(5));
            }
            let served = wait_serving(&relay, 8080, &secret, &st.join("pki/ca.pem"));
            times.push(served - t);
            assert!(child.wait().unwrap().success());
            remove_stack(&default_stack);
            remove_image(&image_id);
        }

        // baseline: docker load + docker stack deploy of the same stack file, its site
        // values exported and its secrets made by hand (the TLS pair by openssl)
        let secrets = [
            ("relay_token_keys", st.join("secrets/relay_token_keys")),
            (
                "relay_control_secret",
                st.join("secrets/relay_control_secret"),
            ),
            ("relay_tls_chain", tls_cert.clone()),
            ("relay_tls_key", tls_key.clone()),
        ];
        for (key, file) in &secrets {
            let _ = docker().args(["secret", "rm", key]).output();
            run_ok(docker().args(["secret", "create", key]).arg(file));
        }
        let t = Instant::now();
        run_ok(docker().arg("load").arg("-i").arg(&archive));
        run_ok(
            docker()
                .args(["stack", "deploy", "-c"])
                .arg(unpacked.join(manifest["stack_file"].as_str().unwrap()))
                .arg(base_stack)
                .env("PUBLIC_HOST", "localhost")
                .env("PUBLIC_IP", "127.0.0.1"),
        );
        let served = wait_serving(
            &relay,
            8080,
            &st.join("secrets/relay_control_secret"),
            &tls_cert,
        );
        base.push(served - t);
        remove_stack(base_stack);
        for (key, _) in &secrets {
            let _ = docker().args(["secret", "rm", key]).output();
        }
    }
    let (o, oo, b) = (median(ours), median(ours_overlay), median(base));
    println!(
        "cold activate until the relay answers: median {} vs docker load + stack deploy {}: ratio {:.2}",
        ms(o),
        ms(b),
        o.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "  the same with the relay on the overlay network (as stack deploy runs it): median {}: ratio {:.2}",
        ms(oo),
        oo.as_secs_f64() / b.as_secs_f64()
    );
}

fn run_ok_bytes(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}");
    o.stdout
}
