//! The site PKI on the real engine: a relay stack declares a server certificate; the first
//! activation makes the host's internal CA and issues it as Swarm secrets; real TLS clients
//! (`curl --cacert`, `openssl s_client -verify_return_error`, the relay's own probe) verify it
//! against the CA exported by `pki ca-cert`, and fail without it; status lists it; the CA key
//! appears nowhere but its file; a short lifetime is renewed by `configure`.

mod common;

use common::*;
use std::process::Command;

const STACK: &str = "lpki";

/// The shipped relay stack (it serves TLS with a certificate of the internal CA) with the
/// certificate's lifetime set to `lifetime`.
fn tls_stack(template: String, lifetime: &str) -> String {
    assert!(
        template
            .trim_end()
            .ends_with("sans: [\"${PUBLIC_HOST}\", \"${PUBLIC_IP}\", relay, tasks.relay]"),
        "the relay certificate ends the shipped template:\n{template}"
    );
    format!("{}\n    lifetime: {lifetime}\n", template.trim_end())
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl (the test script installs it)")
}

/// The serial of the certificate the relay serves, verified against `ca`.
fn served_serial(port: u16, ca: &std::path::Path) -> String {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-verify_return_error",
        "-servername",
        "localhost",
    ])
    .arg("-connect")
    .arg(format!("127.0.0.1:{port}"))
    .arg("-CAfile")
    .arg(ca)
    .stdin(std::process::Stdio::null());
    let o = c.output().expect("running openssl s_client");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "s_client did not verify:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let start = out.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = out.find("-----END CERTIFICATE-----").unwrap() + 25;
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x.stdin
        .take()
        .unwrap()
        .write_all(&out.as_bytes()[start..end])
        .unwrap();
    let o = x.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn internal_ca_certificates_verify_with_real_clients_and_renew() {
    let fx = StackFixture::new(STACK);
    let port = fx.port;
    let bundle = build_relay_variant_with(
        &fx.path("v1"),
        STACK,
        port,
        "1.0.0",
        |c| c,
        |t| tls_stack(t, "40s"),
    );
    let relay = extract_relay(&bundle, fx.tmp.path());
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "activated", "{o}");
    let notes = o["notes"].to_string();
    assert!(notes.contains("internal CA created"), "{notes}");
    assert!(notes.contains("certificate relay: issued"), "{notes}");

    let ca = fx.path("ca.pem");
    let pem = run_ok(fx.loader().args(["pki", "ca-cert"]));
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    std::fs::write(&ca, &pem).unwrap();
    let url = format!("https://localhost:{port}/healthz");
    // wait for the TLS listener (the task is healthy, the port may lag a moment)
    let mut ok = None;
    for _ in 0..40 {
        let o = curl(&["--cacert", ca.to_str().unwrap(), &url]);
        if o.status.success() {
            ok = Some(String::from_utf8_lossy(&o.stdout).into_owned());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let body = ok.expect("curl --cacert never verified the relay");
    assert!(body.contains("\"OK\""), "{body}");
    // without the CA, verification fails (system trust does not know it)
    let o = curl(&[&url]);
    assert!(
        !o.status.success(),
        "curl trusted the relay without the site CA"
    );
    let serial1 = served_serial(port, &ca);
    // the relay's own client, verifying against the CA, pairs sessions over TLS
    let o = Command::new(&relay)
        .args(["probe", "--url", &format!("https://localhost:{port}")])
        .arg("--ca-file")
        .arg(&ca)
        .arg("--control-secret-file")
        .arg(fx.state.join("secrets/relay_control_secret"))
        .args(["--wait-secs", "20", "--messages", "3"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "probe over TLS failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let st = run_ok(fx.loader().arg("status"));
    assert!(
        st.contains("certificate relay: subject localhost, names localhost,127.0.0.1,relay,tasks.relay, issuer reemo-bundle site CA"),
        "{st}"
    );
    assert!(
        st.contains("expires in 0 day(s)"),
        "a 40 s certificate is flagged: {st}"
    );

    // the CA key is in its file only
    let key = std::fs::read_to_string(fx.state.join("pki/ca.key")).unwrap();
    let needle: String = key.lines().nth(1).unwrap().to_string();
    assert!(needle.len() > 20);
    let mut searched = 0;
    for f in walk(&fx.state)
        .into_iter()
        .chain(walk(&fx.path("v1")))
        .filter(|p| !p.ends_with("pki/ca.key"))
    {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains(&needle),
            "the CA key is in {}",
            f.display()
        );
        searched += 1;
    }
    assert!(searched > 5);
    assert!(!format!("{o:?}{st}{notes}").contains(&needle));

    // renewal: with less than a third of 40 s left, configure issues a new certificate
    std::thread::sleep(std::time::Duration::from_secs(28));
    let o = loader_json(fx.loader().arg("configure"));
    assert_eq!(o["result"], "activated", "{o}");
    assert!(
        o["notes"].to_string().contains("certificate relay: issued"),
        "{o}"
    );
    let mut serial2 = String::new();
    for _ in 0..40 {
        serial2 = served_serial(port, &ca);
        if serial2 != serial1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_ne!(serial1, serial2, "the renewed certificate is served");
    // and a second configure right away keeps it
    let o = loader_json(fx.loader().arg("configure"));
    assert_eq!(o["result"], "unchanged", "{o}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// An ECDSA P-256 CA made by openssl in `dir` (`name.pem`, `name.key`).
fn openssl_ca(
    dir: &std::path::Path,
    name: &str,
    ca: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "30", "-subj", &format!("/CN={name}/O=Customer")])
        .args([
            "-addext",
            if ca {
                "basicConstraints=critical,CA:TRUE"
            } else {
                "basicConstraints=critical,CA:FALSE"
            },
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cert, key)
}

#[test]
fn the_operators_ca_is_checked_before_it_is_imported() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let (cert, key) = openssl_ca(d.path(), "site-root", true);
    let (_, other_key) = openssl_ca(d.path(), "other", true);
    let (leaf, leaf_key) = openssl_ca(d.path(), "leaf", false);
    let import = |c: &std::path::Path, k: &std::path::Path| {
        let mut cmd = loader(&state);
        cmd.args(["pki", "import-ca", "--cert"])
            .arg(c)
            .arg("--key")
            .arg(k);
        cmd
    };
    let err = fails(&mut import(&cert, &other_key));
    assert!(
        err.contains(&format!(
            "{} is not the key of {}",
            other_key.display(),
            cert.display()
        )),
        "{err}"
    );
    let err = fails(&mut import(&leaf, &leaf_key));
    assert!(err.contains("not a CA certificate"), "{err}");
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    let err = fails(&mut import(&junk, &key));
    assert!(
        err.contains(&format!("{}: not a PEM certificate", junk.display())),
        "{err}"
    );
    assert!(
        !state.join("pki/ca.key").exists(),
        "a refused import stored something"
    );
    let out = run_ok(&mut import(&cert, &key));
    assert!(out.contains("imported CA \"site-root\""), "{out}");
    let pem = run_ok(loader(&state).args(["pki", "ca-cert"]));
    assert_eq!(pem.trim(), std::fs::read_to_string(&cert).unwrap().trim());
    let err = fails(&mut import(&cert, &key));
    assert!(err.contains("already has a CA"), "{err}");
}
