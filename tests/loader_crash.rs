//! Crash safety: the loader is SIGKILLed after each step of an activation (fault injection
//! through REEMO_BUNDLE_FAULT); the next command finishes or reverts the interrupted
//! activation, says so, and the relay serves.

mod common;

use std::os::unix::process::ExitStatusExt;

use common::*;

const STACK: &str = "lcrash";

#[test]
fn sigkill_at_every_step_is_recovered_by_the_next_command() {
    let fx = StackFixture::new(STACK);
    let state = fx.state.clone();
    let port = fx.port;
    let v1 = fx.relay_variant("v1", "1.0.0", |c| c);
    let v2 = fx.relay_variant("v2", "2.0.0", |c| {
        c.replace("idle_timeout_secs = 300", "idle_timeout_secs = 301")
    });
    let relay = extract_relay(&v1, fx.tmp.path());
    run_ok(loader(&state).arg("activate").arg(&v1));
    relay_probe(&relay, port, &state).expect("v1 serves");

    // The update plan of v1 <-> v2 is: create config, update service, wait.
    let points = [
        ("verify", false),
        ("import", false),
        ("load", false),
        ("journal", true),
        ("step-1", true),
        ("step-2", true),
        ("step-3", true),
        ("commit", true),
    ];
    let mut current_version = "1.0.0".to_string();
    for (point, journaled) in points {
        let (target, target_version) = if current_version == "1.0.0" {
            (&v2, "2.0.0")
        } else {
            (&v1, "1.0.0")
        };
        let out = loader(&state)
            .arg("activate")
            .arg(target)
            .env("REEMO_BUNDLE_FAULT", format!("after:{point}"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "after:{point}: expected SIGKILL, got {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            state.join("journal.json").exists(),
            journaled,
            "after:{point}: journal presence"
        );
        // The next command (status) reports and finishes or reverts it.
        let st = loader_json(loader(&state).arg("status"));
        if journaled {
            let j = st["journal"].as_str().unwrap_or_default();
            assert!(
                j.contains("recovered an interrupted activate"),
                "after:{point}: {st}"
            );
        }
        assert!(
            !state.join("journal.json").exists(),
            "after:{point}: journal left"
        );
        let version = st["version"].as_str().unwrap().to_string();
        if point == "commit" {
            assert_eq!(
                version, target_version,
                "after:commit the new generation stays"
            );
        } else {
            assert_eq!(
                version, current_version,
                "after:{point} the old generation stays"
            );
        }
        assert_eq!(
            st["services"][0]["health"], "healthy",
            "after:{point}: {st}"
        );
        relay_probe(&relay, port, &state)
            .unwrap_or_else(|e| panic!("after:{point}: the relay does not serve: {e}"));
        current_version = version;
    }
    // A failed activation whose revert fails too: the journal stays, the error says the next
    // command retries, and the next command (status) reverts it.
    let target = if current_version == "1.0.0" { &v2 } else { &v1 };
    let out = loader(&state)
        .args(["activate", "--allow-downgrade"])
        .arg(target)
        .env("REEMO_BUNDLE_FAULT", "fail:step-2,fail:revert")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("fault injection: step-2 fails"), "{err}");
    assert!(
        err.contains("failed too") && err.contains("retries the revert"),
        "{err}"
    );
    assert!(state.join("journal.json").exists(), "journal kept: {err}");
    let st = loader_json(loader(&state).arg("status"));
    let j = st["journal"].as_str().unwrap_or_default();
    assert!(j.contains("recovered an interrupted activate"), "{st}");
    assert!(!state.join("journal.json").exists(), "journal left");
    assert_eq!(st["version"], current_version.as_str(), "{st}");
    assert_eq!(st["services"][0]["health"], "healthy", "{st}");
    relay_probe(&relay, port, &state).expect("serves after the retried revert");

    // Interrupted attempts are listed as failed; the stack still activates normally.
    let gens = loader_json(loader(&state).arg("generations"));
    assert!(
        gens.as_array()
            .unwrap()
            .iter()
            .any(|g| g["result"] == "failed"),
        "{gens}"
    );
    // (back to v1 after the committed v2 is a downgrade: allowed explicitly)
    let target = if current_version == "1.0.0" { &v2 } else { &v1 };
    let o = loader_json(
        loader(&state)
            .args(["activate", "--allow-downgrade"])
            .arg(target),
    );
    assert_eq!(o["result"], "activated");
    relay_probe(&relay, port, &state).expect("serves after a normal activation");
}
