//! The Reemo service stand-ins (`standin/`, `bundles/standin.toml`) for the tests that run
//! them: the stand-in appliance built from source, its image saved as a vendor-style
//! `docker save` archive, and an appliance that takes that archive as a fixed input (the
//! path a vendor's image takes). Plus clients: the stand-ins' health over mutual TLS (curl)
//! and the `mysql` stand-in's row protocol.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{bin, build_def, docker, repo_root, run_ok};

/// The shipped stand-in appliance (`bundles/standin.toml`) with stack name `stack`, built
/// with the shared store into `dir/out`. Returns the bundle path.
pub fn build_source(dir: &Path, stack: &str) -> PathBuf {
    let def = super::shipped_def(dir, "standin", "standins", stack, |t| t);
    build_def(&def, &dir.join("out"))
}

/// `reemo-bundle save BUNDLE --image IMAGE --out OUT --json`: the JSON result (`sha256`,
/// `reference`, `id`).
pub fn save(bundle: &Path, image: &str, out: &Path) -> serde_json::Value {
    let o = run_ok(
        Command::new(bin())
            .arg("save")
            .arg(bundle)
            .args(["--image", image, "--out"])
            .arg(out)
            .arg("--json"),
    );
    serde_json::from_str(&o).unwrap_or_else(|e| panic!("save --json: {e}: {o}"))
}

/// An appliance in `dir` whose one image is the vendor archive `archive` taken as it is
/// (`fixed` recipe `standin-archive` with `format = "docker-archive"`, image recipe
/// `vendor-standin` with that base and nothing added), running the shipped stand-in stack
/// passed through `edit_stack`, as stack `stack`, at `version`. Built into `dir/out` with
/// the shared store; returns the bundle path.
pub fn build_vendor(
    dir: &Path,
    stack: &str,
    archive: &Path,
    version: &str,
    edit_stack: impl Fn(String) -> String,
) -> PathBuf {
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let w = |name: &str, text: String| std::fs::write(recipes.join(name), text).unwrap();
    w(
        "standin-archive.toml",
        format!(
            "# the vendor's docker save archive, pinned\nkind = \"fixed\"\npath = {:?}\nsha256 = \"{}\"\nformat = \"docker-archive\"\n",
            archive.display().to_string(),
            super::sha256_of(archive)
        ),
    );
    w(
        "vendor-standin.toml",
        "# the vendor's image as it is: a base and nothing added\nkind = \"image\"\nrepository = \"reemo/vendor-standin\"\nversion = \"1.0.0\"\nbase = \"standin-archive\"\n"
            .into(),
    );
    let shipped = std::fs::read_to_string(repo_root().join("recipes/standin-stack.yml")).unwrap();
    let yml = shipped.replace("${image:standin-image}", "${image:vendor-standin}");
    assert!(yml.contains("${image:vendor-standin}"));
    w("v-stack.yml", edit_stack(yml));
    let toml = std::fs::read_to_string(repo_root().join("recipes/standin-stack.toml"))
        .unwrap()
        .replace(
            "template = \"standin-stack.yml\"",
            "template = \"v-stack.yml\"",
        );
    w("v-stack.toml", toml);
    let def = dir.join("bundles/v.toml");
    std::fs::write(
        &def,
        format!(
            "name = \"reemo-standins-vendor\"\nversion = \"{version}\"\nstack_name = \"{stack}\"\nstack = \"v-stack\"\nrecipes = [\"../recipes\"]\n"
        ),
    )
    .unwrap();
    build_def(&def, &dir.join("out"))
}

/// `GET /api/healthcheck` on `127.0.0.1:port` over TLS as `localhost`, verified with `ca`,
/// with a client certificate or none: Ok((HTTP status, JSON body)) or Err(curl's error).
pub fn health(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<(u16, serde_json::Value), String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let o = c
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{port}/api/healthcheck"))
        .output()
        .expect("running curl (the test script installs it)");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').ok_or(out.clone())?;
    let code: u16 = code.trim().parse().map_err(|_| out.clone())?;
    let v = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    Ok((code, v))
}

/// [`health`] repeated (every 250 ms, up to `tries` times) until `want` accepts an answer;
/// panics with the last answer otherwise. Containers restart and listeners come and go
/// while Swarm converges: this waits for a state, it asserts no duration.
pub fn health_until(
    port: u16,
    ca: &Path,
    client: (&Path, &Path),
    tries: usize,
    want: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..tries {
        match health(port, ca, Some(client)) {
            Ok((code, v)) if want(code, &v) => return v,
            Ok((code, v)) => last = format!("HTTP {code} {v}"),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let tasks = docker()
        .args(["ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Ports}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    panic!("port {port} never gave the awaited health answer; last: {last}\ncontainers:\n{tasks}");
}

/// Send `lines` to the `mysql` stand-in on `127.0.0.1:port`; the answer lines (a `SELECT`
/// is answered up to its `END` line).
pub fn db(port: u16, lines: &[&str]) -> std::io::Result<Vec<String>> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    for l in lines {
        writeln!(w, "{l}")?;
        loop {
            let mut answer = String::new();
            if r.read_line(&mut answer)? == 0 {
                return Err(std::io::Error::other("the database closed the connection"));
            }
            let answer = answer.trim_end().to_string();
            let last = *l != "SELECT" || answer.starts_with("END") || answer.starts_with("ERR");
            out.push(answer);
            if last {
                break;
            }
        }
    }
    Ok(out)
}

/// The rows the `mysql` stand-in on `port` holds, retried (every 250 ms, up to 240 times)
/// until it answers: its task may be restarting.
pub fn rows(port: u16) -> Vec<String> {
    let mut last = String::new();
    for _ in 0..240 {
        match db(port, &["SELECT"]) {
            Ok(lines) if lines.last().is_some_and(|l| l.starts_with("END")) => {
                return lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("ROW ").map(str::to_string))
                    .collect()
            }
            Ok(lines) => last = format!("{lines:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("the stand-in database on port {port} never answered SELECT; last: {last}");
}

/// Remove a named volume once no container uses it (a stack's tasks linger a moment
/// after `docker stack rm`); false when it is still there after 30 s.
pub fn remove_volume(name: &str) -> bool {
    for _ in 0..60 {
        let o = docker().args(["volume", "rm", "-f", name]).output();
        if o.is_ok_and(|o| o.status.success()) {
            let ls = docker()
                .args(["volume", "ls", "-q", "--filter"])
                .arg(format!("name=^{name}$"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if ls.is_empty() {
                return true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    false
}
