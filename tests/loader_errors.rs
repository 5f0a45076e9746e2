//! Clear errors, and nothing changed, when the loader cannot do its job: daemon unreachable,
//! swarm inactive, a worker node, a corrupted bundle, a second activation, a full disk.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const STACK: &str = "lerrors";

fn tiny_bundle(dir: &Path) -> PathBuf {
    let def = tiny_appliance_on(dir, "1.0.0", "loader-errors", STACK, None);
    build_def(&def, &dir.join("out"))
}

fn stack_services() -> String {
    run_ok(docker().args([
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
    ]))
}

/// A fake Docker engine on a unix socket answering every request with `info`.
fn fake_engine(dir: &Path, info: serde_json::Value) -> String {
    let path = dir.join(format!("fake-{}.sock", rand_suffix()));
    let listener = UnixListener::bind(&path).unwrap();
    let body = info.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    let mut headers_done = false;
                    while !headers_done {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        headers_done = line == "\r\n";
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nApi-Version: 1.41\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("unix://{}", path.display())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn clear_errors_and_nothing_changed() {
    require_swarm_manager();
    remove_stack(STACK);
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(&tmp.path().join("tiny"));
    let state = tmp.path().join("state");

    // daemon unreachable
    let err = fails(
        loader(&state)
            .arg("activate")
            .arg(&bundle)
            .args(["--engine", "unix:///nonexistent/docker.sock"]),
    );
    assert!(err.contains("unreachable"), "{err}");
    assert!(
        !state.exists(),
        "state directory created although nothing was done"
    );

    // swarm inactive
    let inactive = fake_engine(
        tmp.path(),
        serde_json::json!({"ServerVersion": "20.10.24",
            "Swarm": {"LocalNodeState": "inactive", "ControlAvailable": false}}),
    );
    let err = fails(
        loader(&state)
            .arg("activate")
            .arg(&bundle)
            .args(["--engine", &inactive]),
    );
    assert!(
        err.contains("not part of an active swarm") && err.contains("swarm init"),
        "{err}"
    );
    let err = fails(loader(&state).arg("status").args(["--engine", &inactive]));
    assert!(err.contains("swarm init"), "{err}");

    // a worker node
    let worker = fake_engine(
        tmp.path(),
        serde_json::json!({"ServerVersion": "20.10.24",
            "Swarm": {"LocalNodeState": "active", "ControlAvailable": false, "NodeID": "w1"}}),
    );
    let err = fails(
        loader(&state)
            .arg("activate")
            .arg(&bundle)
            .args(["--engine", &worker]),
    );
    assert!(err.contains("worker") && err.contains("manager"), "{err}");
    assert!(!state.exists());

    // swarm init refuses to re-initialise the active swarm
    let err = fails(loader(&state).args(["swarm", "init", "--advertise-addr", "127.0.0.1"]));
    assert!(
        err.contains("already part of a swarm") && err.contains("cannot change"),
        "{err}"
    );
    let err = fails(loader(&state).args(["swarm", "init", "--default-addr-pool", "10.9.0.0/26"]));
    assert!(err.contains("smaller than /24"), "{err}");

    // a corrupted bundle: one byte flipped in the middle
    let bad = tmp.path().join("bad.bundle");
    let mut data = std::fs::read(&bundle).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&bad, data).unwrap();
    let err = fails(loader(&state).arg("activate").arg(&bad));
    assert!(
        err.contains("verifying bundle") && err.contains("entry"),
        "{err}"
    );
    assert!(stack_services().trim().is_empty(), "a service was created");
    assert!(
        !state.join("generations").exists()
            || std::fs::read_dir(state.join("generations"))
                .unwrap()
                .count()
                == 0
    );

    // a second activation while one runs (the test holds the lock as a running one would)
    std::fs::create_dir_all(&state).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    (&lock).write_all(b"4242\n").unwrap();
    let err = fails(loader(&state).arg("activate").arg(&bundle));
    assert!(
        err.contains("another reemo-bundle command (pid 4242)"),
        "{err}"
    );
    let err = fails(loader(&state).arg("rollback"));
    assert!(err.contains("another reemo-bundle command"), "{err}");
    drop(lock);
    assert!(stack_services().trim().is_empty(), "a service was created");

    // a full disk in the state directory: a small tmpfs, filled up
    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&full),
    );
    let result = std::panic::catch_unwind(|| {
        let mut filler = std::fs::File::create(full.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
        let err = fails(loader(&full.join("state")).arg("activate").arg(&bundle));
        assert!(err.contains("No space left on device"), "{err}");
        assert!(stack_services().trim().is_empty(), "a service was created");
    });
    let _ = Command::new("umount").arg(&full).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }

    // and with the engine reachable the same bundle activates (the errors were the cause)
    let o = loader_json(loader(&state).arg("activate").arg(&bundle));
    assert_eq!(o["result"], "activated");
    let mut s = String::new();
    BufReader::new(std::fs::File::open(state.join("current")).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s.trim(), "1");
    remove_stack(STACK);
    let st = std::fs::read_to_string(state.join("generations/1.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&st).unwrap();
    for img in g["desired"]["images"].as_array().unwrap() {
        let _ = docker()
            .args(["image", "rm", img["id"].as_str().unwrap()])
            .output();
    }
}
