//! The shipped RELAYWS appliance (haproxy in front of the relay replicas) for the tests that
//! run it: built from `bundles/relayws.toml` with a test's own stack name.

use std::path::{Path, PathBuf};

use super::build_def;

/// The shipped RELAYWS bundle definition with stack name `stack` (and without the loader binary,
/// which the test does not need), built with the shared store.
pub fn build(dir: &Path, stack: &str) -> PathBuf {
    let def = super::shipped_def(dir, "relayws", "relayws", stack, |t| {
        let t2 = t.replace("reemo-bundle = \"reemo-bundle-bin\"\n", "");
        assert_ne!(t, t2, "the shipped definition ships the loader");
        t2
    });
    super::fetch_haproxy();
    build_def(&def, &dir.join("out"))
}

/// `ws-relay-server probe` of the appliance at `ip`: a session made through the control
/// port with a client certificate of the site CA (issued into `clients` on first use),
/// paired through the TLS port, both verified against the site CA of `state`. Its JSON
/// line, or the failure output.
pub fn probe_at(
    relay: &Path,
    ip: &str,
    https_port: u16,
    control_port: u16,
    state: &Path,
) -> Result<String, String> {
    let clients = state.join("test-clients");
    let (cert, key) = (clients.join("probe.crt"), clients.join("probe.key"));
    if !cert.is_file() {
        super::run_ok(
            super::loader(state)
                .args(["pki", "issue-client", "probe", "--out"])
                .arg(&clients),
        );
    }
    let o = std::process::Command::new(relay)
        .args(["probe", "--url", &format!("https://{ip}:{https_port}")])
        .args(["--control-url", &format!("https://{ip}:{control_port}")])
        .arg("--ca-file")
        .arg(state.join("pki/ca.pem"))
        .arg("--client-cert")
        .arg(&cert)
        .arg("--client-key")
        .arg(&key)
        .arg("--control-secret-file")
        .arg(state.join("secrets/relay_control_secret"))
        .args(["--wait-secs", "30", "--messages", "3"])
        .output()
        .expect("running ws-relay-server probe");
    super::probe_outcome(&o)
}
