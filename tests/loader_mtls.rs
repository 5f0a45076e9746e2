//! Mutual TLS with the site PKI on the real engine: haproxy (the Debian-package image) as a
//! service that requires client certificates of the site CA (its certificate and the trust
//! bundle delivered as a Swarm secret and config). A client certificate from
//! `pki issue-client` is accepted; one of another CA, and none, are refused. Then
//! `pki rotate-ca`: three generations (trust both CAs, move the leaves, drop the old CA),
//! each one served and verified; afterwards the old CA's client is refused and a new one
//! accepted. Needs Docker, a swarm manager and the Debian archive (to fetch the .debs the
//! haproxy lock names into the shared test store).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const STACK: &str = "lmtls";

const HAPROXY_CFG: &str = "\
global
    log stdout format raw local0 info
defaults
    log global
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend control
    bind :8443 ssl crt /run/secrets/control.pem ca-file /etc/haproxy/site-ca.pem verify required
    http-request return status 200 content-type text/plain lf-string \"client %[ssl_c_s_dn(cn)]\\n\"
";

/// A bundle with haproxy requiring client certificates on `port`.
fn build_mtls(dir: &Path, port: u16) -> std::path::PathBuf {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(recipes.join("files")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    std::fs::write(recipes.join("files/control.cfg"), HAPROXY_CFG).unwrap();
    std::fs::write(
        recipes.join("m-stack.toml"),
        "kind = \"stack\"\ntemplate = \"m-stack.yml\"\n[configs]\n\"control.cfg\" = \"files/control.cfg\"\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("m-stack.yml"),
        format!(
            "version: \"3.8\"
services:
  control:
    image: ${{image:haproxy}}
    x-reemo-overlay: false
    configs:
      - source: haproxy_cfg
        target: /etc/haproxy/haproxy.cfg
      - source: site_ca
        target: /etc/haproxy/site-ca.pem
    secrets:
      - source: control_pem
        target: control.pem
    ports:
      - target: 8443
        published: {port}
        protocol: tcp
        mode: host
    deploy:
      update_config:
        order: stop-first
configs:
  haproxy_cfg:
    file: ../configs/control.cfg
  site_ca:
    external: true
    x-reemo-ca: true
secrets:
  control_pem:
    external: true
    x-reemo-certificate: control.pem
x-reemo-certificates:
  control:
    usage: server
    sans: [localhost, 127.0.0.1, control, tasks.control]
"
        ),
    )
    .unwrap();
    let def = dir.join("bundles/m.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"mtls\"\nversion = \"1.0.0\"\nstack_name = \"{STACK}\"\nstack = \"m-stack\"\nrecipes = [\"../recipes\", \"{}\"]\n",
            repo_root().join("recipes").display()
        ),
    )
    .unwrap();
    fetch_haproxy();
    build_def(&def, &dir.join("out"))
}

/// `curl` to the control port verifying the server with `ca`, with a client certificate
/// (`cert`, `key`) or none; Ok(body) or Err(curl's error).
fn call(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> Result<String, String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let o = c
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("running curl");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// [`call`] retried for up to 15 s until it succeeds (the listener of a new task).
fn call_ok(port: u16, ca: &Path, client: (&Path, &Path)) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        match call(port, ca, Some(client)) {
            Ok(b) => return b,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("the control port never answered with {client:?}: {last}");
}

/// A client certificate of a CA that is not the site's, made by openssl in `dir`.
fn foreign_client(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "other.key", "-out", "other.pem", "-days", "2"],
        &[
            "-subj",
            "/CN=Other CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    ]
    .concat());
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "fc.key",
            "-out",
            "fc.csr",
            "-subj",
            "/CN=intruder",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "fc.csr",
        "-CA",
        "other.pem",
        "-CAkey",
        "other.key",
        "-CAcreateserial",
        "-out",
        "fc.pem",
        "-days",
        "2",
        "-extfile",
        "client.ext",
    ]);
    (dir.join("fc.pem"), dir.join("fc.key"))
}

fn pem_count(text: &str) -> usize {
    text.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn client_certificates_of_the_site_ca_only_and_ca_rotation_with_overlap() {
    let fx = StackFixture::new(STACK);
    let port = fx.port;
    let bundle = build_mtls(&fx.path("m"), port);
    let o = loader_json(
        fx.loader()
            .arg("activate")
            .arg(&bundle)
            .args(["--timeout", "120s"]),
    );
    assert_eq!(o["result"], "activated", "{o}");
    let ca = fx.path("ca.pem");
    let export_ca = || {
        let pem = run_ok(fx.loader().args(["pki", "ca-cert"]));
        std::fs::write(&ca, &pem).unwrap();
        pem
    };
    assert_eq!(pem_count(&export_ca()), 1);

    // an integrator's client certificate from the site CA is accepted
    let out = fx.path("clients");
    let said = run_ok(
        fx.loader()
            .args(["pki", "issue-client", "integrator", "--out"])
            .arg(&out),
    );
    assert!(said.contains("issued by reemo-bundle site CA"), "{said}");
    let (c1, k1) = (out.join("integrator.crt"), out.join("integrator.key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&k1).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the client key is 0600");
    let body = call_ok(port, &ca, (&c1, &k1));
    assert_eq!(body.trim(), "client integrator");
    // none, and one of another CA, are refused (the server itself verifies with the CA)
    let e = call(port, &ca, None).expect_err("no client certificate was accepted");
    assert!(!e.is_empty());
    let (fc, fk) = foreign_client(fx.tmp.path());
    let e = call(port, &ca, Some((&fc, &fk))).expect_err("a foreign client was accepted");
    assert!(!e.is_empty());

    // CA rotation: three generations, each healthy and serving
    let gens = |fx: &StackFixture| run_ok(fx.loader().arg("generations")).lines().count();
    let before = gens(&fx);
    let said = run_ok(fx.loader().args(["pki", "rotate-ca", "--timeout", "120s"]));
    for step in [
        "certificate control: kept (signed by the previous CA) until every service trusts the new CA",
        "trust bundle: the signing CA and 1 previous CA(s) while leaves move",
        "certificate control: issued (the CA changed)",
    ] {
        assert!(said.contains(step), "rotate-ca did not say {step:?}:\n{said}");
    }
    assert_eq!(
        gens(&fx) - before,
        3,
        "trust both, move the leaves, drop the old CA"
    );
    let g = loader_json(fx.loader().arg("generations"));
    let list = g["generations"].as_array().unwrap();
    let last3: Vec<_> = list[list.len() - 3..].iter().collect();
    for x in &last3 {
        assert_eq!(x["result"], "succeeded", "{x}");
    }
    // after the rotation: only the new CA is exported, trusted and signing
    let pem = export_ca();
    assert_eq!(pem_count(&pem), 1, "{pem}");
    assert!(pem != std::fs::read_to_string(out.join("ca.pem")).unwrap());
    let e = call(port, &ca, Some((&c1, &k1)));
    assert!(
        e.is_err(),
        "a client of the old CA is refused after the rotation: {e:?}"
    );
    let out2 = fx.path("clients2");
    run_ok(
        fx.loader()
            .args(["pki", "issue-client", "integrator", "--out"])
            .arg(&out2),
    );
    let body = call_ok(
        port,
        &ca,
        (&out2.join("integrator.crt"), &out2.join("integrator.key")),
    );
    assert_eq!(body.trim(), "client integrator");
    let st = run_ok(fx.loader().arg("status"));
    assert!(st.contains("certificate control:"), "{st}");
}
