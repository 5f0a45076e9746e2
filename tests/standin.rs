//! The Reemo service stand-ins on the real engine and swarm (issue 13, part 5). The
//! stand-in image is built from source, handed on as a `docker save` archive (`reemo-bundle
//! save`), and enters a second appliance the way a vendor's archive does: a `fixed` recipe
//! with `format = "docker-archive"` pinned by sha256, taken as it is (same image ID). That
//! appliance (mysql, its db migration job, api and portal stand-ins; mutual TLS with the site CA; HMACSECRET and
//! API_LICENSE as generated secrets) is activated as a stack of its own and checked: the
//! seed's health JSON, 503 while the database is down, mutual TLS (a client without a
//! certificate of the site CA is refused, the portal reaches the api with its own), a bad
//! configuration that makes a task exit non-zero (the loader names the service and rolls
//! back), and rows of the stand-in database that survive an update, a failed update's
//! rollback and a rollback. Needs Docker, a swarm manager, curl and openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::standin::{build_source, build_vendor, db, health, health_until, rows, save};
use common::*;

const STACK: &str = "tstandin";

/// The stand-in source bundle and its image saved as a vendor archive, shared by the tests
/// of this file (built in `dir`).
fn vendor_archive(dir: &Path) -> (PathBuf, PathBuf, serde_json::Value) {
    let source = build_source(&dir.join("source"), "standins");
    let archive = dir.join("vendor/reemo-standin.tar");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let saved = save(&source, "standin-image", &archive);
    (source, archive, saved)
}

#[test]
fn a_saved_image_enters_a_bundle_as_it_is_and_reproducibly() {
    let d = tempfile::tempdir().unwrap();
    let (source, archive, saved) = vendor_archive(d.path());
    // the archive is docker save's shape: manifest.json, an OCI layout, the blobs
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&archive));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(&names[..3], ["manifest.json", "oci-layout", "index.json"]);
    assert!(names[3..].iter().all(|n| n.starts_with("blobs/sha256/")));
    // the same bundle saves to the same bytes
    let second = save(
        &source,
        saved["reference"].as_str().unwrap(),
        &d.path().join("again.tar"),
    );
    assert_eq!(second["sha256"], saved["sha256"]);
    assert_eq!(sha256_of(&archive), saved["sha256"].as_str().unwrap());

    // taken as it is: the vendor bundle's image is the source image (config and layers)
    let b1 = build_vendor(&d.path().join("v1"), STACK, &archive, "1.0.0", |s| s);
    let b2 = build_vendor(&d.path().join("v2"), STACK, &archive, "1.0.0", |s| s);
    assert_eq!(
        std::fs::read(&b1).unwrap(),
        std::fs::read(&b2).unwrap(),
        "the same vendor archive and recipes in another folder give the same bundle bytes"
    );
    let src = reemo_bundle::bundle::reader::BundleFile::open(&source).unwrap();
    let ven = reemo_bundle::bundle::reader::BundleFile::open(&b1).unwrap();
    let s_img = src.manifest().image("standin-image").unwrap();
    let v_img = ven.manifest().image("vendor-standin").unwrap();
    assert_eq!(v_img.config_digest, s_img.config_digest, "same image ID");
    assert_eq!(saved["id"], s_img.config_digest.as_str());
    assert_eq!(
        v_img.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
        s_img.layers.iter().map(|l| &l.digest).collect::<Vec<_>>()
    );
    assert_eq!(
        v_img.tag,
        format!("1.0.0-{}", &s_img.config_digest[7..19]),
        "tag: the recipe's version and the vendor's image ID"
    );
    assert_eq!(
        ven.read_entry(&v_img.config.path()).unwrap(),
        src.read_entry(&s_img.config.path()).unwrap()
    );

    // an image that is not there is named with the ones that are
    let o = Command::new(bin())
        .arg("save")
        .arg(&source)
        .args(["--image", "nope", "--out"])
        .arg(d.path().join("nope.tar"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no image \"nope\" (images: standin-image (reemo/standin:1.0.0-"),
        "{err}"
    );
    assert!(!d.path().join("nope.tar").exists());
}

/// Run the stand-in binary (from the source bundle's `bin/`) with only `env`; exit code and
/// stderr.
fn run_standin(exe: &Path, env: &[(&str, String)], arg: &str) -> (Option<i32>, String) {
    let o = Command::new(exe)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg(arg)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_configurations_exit_2_naming_what_is_wrong() {
    let d = tempfile::tempdir().unwrap();
    let source = build_source(&d.path().join("source"), "standins");
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&source)
            .arg("-C")
            .arg(d.path())
            .arg("bin/reemo-standin"),
    );
    let exe = d.path().join("bin/reemo-standin");
    let secrets = d.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("HMACSECRET"), "h\n").unwrap();
    std::fs::write(secrets.join("API_LICENSE"), "l\n").unwrap();
    let s = |v: &str| v.to_string();
    let api = |extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("STANDIN_ROLE", s("api")),
            ("STANDIN_DB", s("127.0.0.1:1")),
            ("STANDIN_SECRETS_DIR", secrets.display().to_string()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let missing = d.path().join("missing.pem");
    for (env, want) in [
        (
            vec![("STANDIN_ROLE", s("traefik"))],
            "STANDIN_ROLE: unknown role \"traefik\" (one of: api,",
        ),
        (
            api(&[("STANDIN_PORT", s("70000"))]),
            "STANDIN_PORT: \"70000\" is not a port (1-65535)",
        ),
        (
            api(&[("API_LICENSE_FILE", s("/nonexistent/license"))]),
            "secret API_LICENSE: cannot read /nonexistent/license (",
        ),
        (
            api(&[
                ("STANDIN_TLS_CERT", missing.display().to_string()),
                ("STANDIN_TLS_KEY", missing.display().to_string()),
                ("STANDIN_TLS_CA", missing.display().to_string()),
            ]),
            &format!("STANDIN_TLS_CERT: {}: cannot read it (", missing.display()),
        ),
    ] {
        for cmd in ["serve", "healthcheck"] {
            let (code, err) = run_standin(&exe, &env, cmd);
            assert_eq!(code, Some(2), "{env:?} {cmd}: {err}");
            assert_eq!(err.matches("error:").count(), 1, "printed once: {err}");
            assert!(
                err.starts_with(&format!("reemo-standin: error: bad configuration: {want}")),
                "{env:?}: {err}"
            );
        }
    }
    // a good configuration whose database is down: unhealthy (exit 1), the JSON says why
    let [port] = common::free_ports::<1>();
    let mut env = api(&[("STANDIN_PORT", port.to_string())]);
    env.push(("STANDIN_VERSION", s("2.15.2")));
    let mut child = Command::new(&exe)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = None;
    for _ in 0..80 {
        let o = Command::new(&exe)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("healthcheck")
            .output()
            .unwrap();
        if !o.stdout.is_empty() {
            answer = Some((
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (code, body) = answer.expect("the plain-HTTP api stand-in never answered");
    assert_eq!(code, Some(1), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "KO");
    assert_eq!(v["version"], "2.15.2");
    assert_eq!(v["services"]["db"]["status"], "KO");
    assert!(
        v["services"]["db"]["error"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:1: "),
        "{v}"
    );
}

/// The stack's ports for this run.
struct Ports {
    db: u16,
    api: u16,
    portal: u16,
}

impl Ports {
    fn set_args(&self) -> Vec<String> {
        [
            ("DB_PORT", self.db),
            ("API_PORT", self.api),
            ("PORTAL_PORT", self.portal),
        ]
        .iter()
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect()
    }
}

/// Removes the mysql stand-in's volume after the stack (the fixture drops first).
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        if !try_remove_stack(STACK) || !common::standin::remove_volume(&self.0) {
            eprintln!("volume {} is still there", self.0);
        }
    }
}

fn service_env(service: &str) -> String {
    run_ok(docker().args([
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        service,
    ]))
}

#[test]
fn the_standin_stack_from_a_vendor_archive_on_the_swarm() {
    let fx = StackFixture::new(STACK);
    let _volume = VolumeGuard(format!("{STACK}_mysql_data"));
    common::standin::remove_volume(&format!("{STACK}_mysql_data"));
    let (_, archive, saved) = vendor_archive(fx.tmp.path());
    let v1 = build_vendor(&fx.path("v1"), STACK, &archive, "1.0.0", |s| s);
    // 1.0.1: the database's version changes (it restarts, stop-first) and the api is
    // misconfigured (its HMACSECRET file does not exist): the task exits 2
    let v2_broken = build_vendor(&fx.path("v2b"), STACK, &archive, "1.0.1", |s| {
        let t = s
            .replace("\"8.0.40-standin\"", "\"8.0.41-standin\"")
            .replace(
                "      STANDIN_ROLE: api\n",
                "      STANDIN_ROLE: api\n      HMACSECRET_FILE: /run/secrets/NO_SUCH_SECRET\n",
            );
        assert!(t.contains("NO_SUCH_SECRET") && t.contains("8.0.41"));
        t
    });
    // 1.0.2: the database update alone
    let v2 = build_vendor(&fx.path("v2"), STACK, &archive, "1.0.2", |s| {
        s.replace("\"8.0.40-standin\"", "\"8.0.41-standin\"")
    });
    let [db_port, api_port, portal_port] = common::free_ports::<3>();
    let ports = Ports {
        db: db_port,
        api: api_port,
        portal: portal_port,
    };
    let activate = |bundle: &Path| {
        fx.loader()
            .args(["activate", "--timeout", "120s"])
            .args(ports.set_args())
            .arg(bundle)
            .output()
            .unwrap()
    };
    let o = activate(&v1);
    assert!(
        o.status.success(),
        "activating the stand-ins failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Swarm runs the vendor's image by its own ID
    assert_eq!(
        service_image(&format!("{STACK}_api")),
        saved["id"].as_str().unwrap()
    );
    // the migration job ran to completion before the api started
    let job = run_ok(docker().args([
        "service",
        "ps",
        "--format",
        "{{.CurrentState}}",
        &format!("{STACK}_db"),
    ]));
    assert!(job.trim().starts_with("Complete"), "db job: {job}");

    let ca = fx.state.join("pki/ca.pem");
    let clients = fx.path("clients");
    run_ok(
        fx.loader()
            .args(["pki", "issue-client", "tester", "--out"])
            .arg(&clients),
    );
    let client = (clients.join("tester.crt"), clients.join("tester.key"));
    let client = (client.0.as_path(), client.1.as_path());

    // the seed's health JSON; the portal nests the api's answer, which it got over mTLS
    let v = health_until(ports.portal, &ca, client, 120, |c, _| c == 200);
    assert_eq!(v["status"], "OK", "{v}");
    assert_eq!(v["version"], "2.14.4-standin");
    let api = &v["services"]["api"];
    assert_eq!(api["status"], "OK", "{v}");
    assert_eq!(api["version"], "2.15.2-standin");
    assert_eq!(api["services"]["db"], serde_json::json!({"status": "OK"}));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status", "version", "services"], "the seed's order");

    // mutual TLS: no client certificate, or one the site CA did not issue, is refused
    let e = health(ports.api, &ca, None).expect_err("a client without a certificate got in");
    assert!(!e.is_empty());
    let (fc, fk) = (fx.path("foreign.crt"), fx.path("foreign.key"));
    openssl_self_signed(&fc, &fk, "/CN=intruder", 2, &[]);
    health(ports.api, &ca, Some((&fc, &fk))).expect_err("a certificate of another CA got in");
    let (code, _) = health(ports.api, &ca, Some(client)).unwrap();
    assert_eq!(code, 200);

    // rows written now must outlive every update and rollback below
    let ok = db(
        ports.db,
        &["PING", "INSERT before-update-1", "INSERT before-update-2"],
    )
    .unwrap();
    assert_eq!(ok, ["PONG", "OK 1", "OK 2"]);
    assert_eq!(rows(ports.db), ["before-update-1", "before-update-2"]);

    // the database down: the api says so with a 503 (its task may restart meanwhile)
    run_ok(docker().args(["service", "scale", "-d", &format!("{STACK}_mysql=0")]));
    let v = health_until(ports.api, &ca, client, 240, |c, _| c == 503);
    assert_eq!(v["status"], "KO", "{v}");
    assert_eq!(v["services"]["db"]["status"], "KO", "{v}");
    run_ok(docker().args(["service", "scale", "-d", &format!("{STACK}_mysql=1")]));
    health_until(ports.portal, &ca, client, 240, |c, _| c == 200);
    assert_eq!(rows(ports.db), ["before-update-1", "before-update-2"]);

    // a misconfigured api: its task exits 2, the loader names it and reverts the stack
    let o = activate(&v2_broken);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{STACK}_api")), "{err}");
    assert!(err.contains("exit code 2"), "{err}");
    assert!(
        err.contains("secret HMACSECRET: cannot read /run/secrets/NO_SUCH_SECRET"),
        "the task's own message: {err}"
    );
    let st = loader_json(fx.loader().arg("status"));
    assert_eq!(st["version"], "1.0.0", "{st}");
    let env = service_env(&format!("{STACK}_mysql"));
    assert!(env.contains("8.0.40-standin"), "mysql reverted: {env}");
    assert!(!service_env(&format!("{STACK}_api")).contains("NO_SUCH_SECRET"));
    health_until(ports.portal, &ca, client, 240, |c, _| c == 200);
    assert_eq!(rows(ports.db), ["before-update-1", "before-update-2"]);

    // the database updated (stop-first restart on its volume), then rolled back
    let o = activate(&v2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(service_env(&format!("{STACK}_mysql")).contains("8.0.41-standin"));
    assert_eq!(rows(ports.db), ["before-update-1", "before-update-2"]);
    assert_eq!(db(ports.db, &["INSERT after-update"]).unwrap(), ["OK 3"]);
    run_ok(fx.loader().args(["rollback", "--timeout", "120s"]));
    assert!(service_env(&format!("{STACK}_mysql")).contains("8.0.40-standin"));
    assert_eq!(
        rows(ports.db),
        ["before-update-1", "before-update-2", "after-update"]
    );
    let v = health_until(ports.portal, &ca, client, 240, |c, _| c == 200);
    assert_eq!(v["services"]["api"]["services"]["db"]["status"], "OK");
}
