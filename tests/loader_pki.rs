//! The site PKI on the real engine: a relay stack declares a server certificate; the first
//! activation makes the host's internal CA and issues it as Swarm secrets; real TLS clients
//! (`curl --cacert`, `openssl s_client -verify_return_error`, the relay's own probe) verify it
//! against the CA exported by `pki ca-cert`, and fail without it; status lists it; the CA key
//! appears nowhere but its file; a short lifetime is renewed by `configure`.

mod common;

use common::*;
use std::process::Command;

const STACK: &str = "lpki";

/// The relay fixture stack (it serves TLS with a certificate of the internal CA) with the
/// certificate's lifetime set to `lifetime`.
fn tls_stack(template: String, lifetime: &str) -> String {
    assert!(
        template
            .trim_end()
            .ends_with("sans: [\"${PUBLIC_HOST}\", \"${PUBLIC_IP}\"]"),
        "the relay certificate ends the fixture template:\n{template}"
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
        |t| tls_stack(t, "90s"),
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
        st.contains("certificate relay: subject localhost, names localhost,127.0.0.1, issuer reemo-bundle site CA"),
        "{st}"
    );
    assert!(
        st.contains("expires in 0 day(s)"),
        "a 90 s certificate is flagged: {st}"
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

    // ... nor in the stack's Swarm configs (their data is readable) or its services' logs
    let configs = run_ok(docker().args([
        "config",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
    ]));
    let ids: Vec<&str> = configs.split_whitespace().collect();
    assert!(!ids.is_empty());
    for id in ids {
        let data =
            run_ok(docker().args(["config", "inspect", "--format", "{{json .Spec.Data}}", id]));
        assert!(!data.contains(&needle), "the CA key is in config {id}");
    }
    let logs = docker()
        .args(["service", "logs", "--raw", &format!("{STACK}_relay")])
        .output()
        .unwrap();
    assert!(
        !format!("{logs:?}").contains(&needle),
        "the CA key is in the logs"
    );

    // renewal: with less than a third of 90 s left, configure issues a new certificate
    // (its validity starts 9 s back: 99 s in all, renewed under 33 s left; wait for 31 s)
    let st = loader_json(fx.loader().arg("status"));
    let not_after = st["certificates"][0]["not_after"]
        .as_i64()
        .expect("not_after");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    assert!(not_after - now() > 60, "{st}");
    while not_after - now() > 31 {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let o = loader_json(fx.loader().arg("configure"));
    assert_eq!(o["result"], "activated", "{o}");
    assert!(
        o["notes"].to_string().contains("certificate relay: issued"),
        "{o}"
    );
    let serial2 = served_serial_until(port, &ca, |s| s != serial1);
    assert_ne!(serial1, serial2, "the renewed certificate is served");
    // sessions work on the new certificate
    relay_probe(&relay, port, &fx.state).expect("a session relays after renewal");
    // a second configure right away keeps it
    let o = loader_json(fx.loader().arg("configure"));
    assert_eq!(o["result"], "unchanged", "{o}");
    // rollback: the previous generation with its certificate (still valid for ~20 s)
    let o = loader_json(fx.loader().arg("rollback"));
    assert_eq!(o["result"], "rolled-back", "{o}");
    let back = served_serial_until(port, &ca, |s| s == serial1);
    assert_eq!(
        back, serial1,
        "rollback serves the previous certificate again"
    );
}

/// The serial served once `done` accepts it (or the last one after 10 s).
fn served_serial_until(port: u16, ca: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
    let mut s = String::new();
    for _ in 0..40 {
        s = served_serial(port, ca);
        if done(&s) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    s
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
    let constraint = if ca {
        "basicConstraints=critical,CA:TRUE"
    } else {
        "basicConstraints=critical,CA:FALSE"
    };
    openssl_self_signed(
        &cert,
        &key,
        &format!("/CN={name}/O=Customer"),
        30,
        &["-addext", constraint],
    );
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

/// `openssl` with args; panics with its stderr on failure.
fn openssl(args: &[&str], dir: &std::path::Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A customer PKI made by openssl in `dir`: root.pem, int.pem (intermediate), leaf.pem +
/// leaf.key for `host` (ECDSA P-256), full.pem (leaf then intermediate), and weak.pem +
/// weak.key (RSA 1024, same host).
fn customer_pki(dir: &std::path::Path, host: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
                "-days",
                "30",
                "-subj",
                "/CN=Customer Root",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
        dir,
    );
    std::fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .unwrap();
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "int.key",
                "-out",
                "int.csr",
                "-subj",
                "/CN=Customer Intermediate",
            ],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "int.pem",
            "-days",
            "30",
            "-extfile",
            "ca.ext",
        ],
        dir,
    );
    let subj = format!("/CN={host}");
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subj],
        ]
        .concat(),
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "int.pem",
            "-CAkey",
            "int.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
        ],
        dir,
    );
    openssl(
        &[
            "req", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out", "weak.csr",
            "-subj", &subj,
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "weak.csr",
            "-CA",
            "int.pem",
            "-CAkey",
            "int.key",
            "-CAcreateserial",
            "-out",
            "weak.pem",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
        ],
        dir,
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    std::fs::write(dir.join("full.pem"), read("leaf.pem") + &read("int.pem")).unwrap();
    std::fs::write(
        dir.join("reversed.pem"),
        read("int.pem") + &read("leaf.pem"),
    )
    .unwrap();
    std::fs::write(
        dir.join("weakfull.pem"),
        read("weak.pem") + &read("int.pem"),
    )
    .unwrap();
}

/// `curl --cacert ca --resolve host:port:127.0.0.1 https://host:port/healthz`, retried up
/// to 10 s until it verifies; its body.
fn curl_verified(host: &str, port: u16, ca: &std::path::Path) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..40 {
        let o = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            &format!("https://{host}:{port}/healthz"),
        ]);
        if o.status.success() {
            return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    Err(last)
}

/// The operator's own certificate for the relay's external certificate: each bad input is
/// refused naming its file, with nothing changed (same generation, same certificate
/// served); a good chain is served (verified with the customer's root only) in the same
/// generation as the PUBLIC_HOST it names; `cert remove` goes back to the site CA's.
#[test]
fn the_operators_certificate_is_checked_then_served() {
    let fx = StackFixture::new("lcert");
    let port = fx.port;
    let host = "relay.example.test";
    let pki = fx.path("customer");
    std::fs::create_dir_all(&pki).unwrap();
    customer_pki(&pki, host);
    let bundle = fx.relay_variant("v1", "1.0.0", |c| c);
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "activated", "{o}");
    let site_ca = fx.path("site-ca.pem");
    std::fs::write(&site_ca, run_ok(fx.loader().args(["pki", "ca-cert"]))).unwrap();
    curl_verified("localhost", port, &site_ca).expect("the site CA's certificate is served");
    let gens = || run_ok(fx.loader().arg("generations")).lines().count();
    let before = gens();

    let p = |f: &str| pki.join(f);
    let import = |cert: &str, key: &str, extra: &[&str]| {
        let mut c = fx.loader();
        c.args(["cert", "import", "relay", "--cert"])
            .arg(p(cert))
            .arg("--key")
            .arg(p(key))
            .args(extra);
        c
    };
    let refused = |cert: &str, key: &str, extra: &[&str], want: String| {
        let err = fails(&mut import(cert, key, extra));
        assert!(
            err.contains(&want),
            "{cert}/{key}: wanted {want:?} in:\n{err}"
        );
        assert!(
            err.contains("nothing was changed") || !err.contains("generation"),
            "{err}"
        );
        // and each refusal on its own leaves the generations as they were
        assert_eq!(
            gens(),
            before,
            "{cert}/{key}: a refused import made a generation"
        );
    };
    let full = p("full.pem").display().to_string();
    // the key of another certificate
    refused(
        "full.pem",
        "int.key",
        &[],
        format!("{} is not the key of {full}", p("int.key").display()),
    );
    // the chain out of order
    refused(
        "reversed.pem",
        "leaf.key",
        &[],
        format!("{}: the first certificate", p("reversed.pem").display()),
    );
    // a chain that does not link: the leaf then the root (the intermediate is missing)
    let broken = fx.path("broken.pem");
    std::fs::write(
        &broken,
        std::fs::read_to_string(p("leaf.pem")).unwrap()
            + &std::fs::read_to_string(p("root.pem")).unwrap(),
    )
    .unwrap();
    std::fs::copy(&broken, p("broken.pem")).unwrap();
    refused(
        "broken.pem",
        "leaf.key",
        &[],
        format!("{}: the chain is out of order", p("broken.pem").display()),
    );
    // RSA under 2048 bits
    refused(
        "weakfull.pem",
        "weak.key",
        &[],
        format!("{}: an RSA key of 1024 bits", p("weak.key").display()),
    );
    // not a PEM
    std::fs::write(p("junk.pem"), "hello").unwrap();
    refused(
        "junk.pem",
        "leaf.key",
        &[],
        format!("{}: not a PEM certificate", p("junk.pem").display()),
    );
    // its names do not cover PUBLIC_HOST (still localhost)
    refused(
        "full.pem",
        "leaf.key",
        &[],
        format!("names {host} but not localhost"),
    );
    assert_eq!(gens(), before, "a refused import made a generation");
    assert!(
        !fx.state.join("pki/imported").exists()
            || std::fs::read_dir(fx.state.join("pki/imported"))
                .unwrap()
                .next()
                .is_none()
    );
    curl_verified("localhost", port, &site_ca).expect("the site CA's certificate is still served");

    // good: with PUBLIC_HOST naming it, in one generation
    let o = loader_json(&mut import(
        "full.pem",
        "leaf.key",
        &[&format!("--set=PUBLIC_HOST={host}")],
    ));
    assert_eq!(o["result"], "activated", "{o}");
    assert!(
        o["notes"].to_string().contains("does not name 127.0.0.1"),
        "{o}"
    );
    let body =
        curl_verified(host, port, &p("root.pem")).expect("served, verified with the customer root");
    assert!(body.contains("\"OK\""), "{body}");
    assert!(
        curl_verified(host, port, &site_ca).is_err(),
        "the site CA does not verify the customer's certificate"
    );
    let st = run_ok(fx.loader().arg("status"));
    assert!(
        st.contains(&format!(
            "certificate relay: subject {host}, names {host}, issuer Customer Intermediate"
        )),
        "{st}"
    );
    // an activation keeps serving it
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "unchanged", "{o}");

    // remove: back to the site CA's certificate, for the same host name
    let o = loader_json(fx.loader().args(["cert", "remove", "relay"]));
    assert_eq!(o["result"], "activated", "{o}");
    curl_verified(host, port, &site_ca).expect("the site CA's certificate for the host name");
}
