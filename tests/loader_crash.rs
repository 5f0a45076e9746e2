//! Crash safety: the loader is SIGKILLed after each step of an activation (fault injection
//! through REEMO_BUNDLE_FAULT); `status` reports the interrupted activation without touching
//! it, `recover` finishes or reverts it and says so, and the relay serves. (Steps that fail,
//! and reverts that fail too, are tested on the in-memory engine: `src/loader/tests.rs`.)

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
        // `status` reports it and changes nothing; `recover` finishes or reverts it.
        let st = loader_json(loader(&state).arg("status"));
        if journaled {
            let j = st["journal"].as_str().unwrap_or_default();
            assert!(j.contains("reemo-bundle recover"), "after:{point}: {st}");
            assert!(
                state.join("journal.json").exists(),
                "after:{point}: status touched the journal"
            );
        }
        let r = loader_json(loader(&state).arg("recover"));
        assert_eq!(r["format"], 1, "{r}");
        if journaled {
            let rec = r["recovered"].as_str().unwrap_or_default();
            assert!(
                rec.contains("recovered an interrupted activate"),
                "after:{point}: {r}"
            );
        }
        assert!(
            !state.join("journal.json").exists(),
            "after:{point}: journal left"
        );
        let st = loader_json(loader(&state).arg("status"));
        assert!(st["journal"].is_null(), "after:{point}: {st}");
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
    // Interrupted attempts are listed as failed; the stack still activates normally.
    let gens = loader_json(loader(&state).arg("generations"))["generations"].clone();
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
