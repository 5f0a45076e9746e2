//! Bad recipes are rejected with the file and line at fault, and nothing is written:
//! malformed TOML, unknown field, missing input file, fixed-output hash mismatch, dependency
//! cycle, layer destination escaping the image root, a base that is not an image. And an
//! image recipe on another image recipe. No Docker needed.

mod common;

use std::path::Path;
use std::process::Command;

fn build(def: &Path, store: &Path, out: &Path) -> (bool, String) {
    let o = Command::new(common::bin())
        .args(["build"])
        .arg(def)
        .arg("--store")
        .arg(store)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Build the tiny appliance after `edit` changed one of its files; expect failure with all
/// `needles` in the message and no bundle written.
fn expect_error(edit: impl FnOnce(&Path), needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "hello");
    edit(d.path());
    let out = d.path().join("out");
    let (ok, err) = build(&def, &d.path().join("store"), &out);
    assert!(!ok, "build should fail");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in error:\n{err}");
    }
    let written = std::fs::read_dir(&out).map(|r| r.count()).unwrap_or(0);
    assert_eq!(written, 0, "a failed build must leave no bundle");
}

fn edit_file(dir: &Path, rel: &str, f: impl FnOnce(String) -> String) {
    let p = dir.join(rel);
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, f(t)).unwrap();
}

#[test]
fn malformed_toml() {
    expect_error(
        |d| {
            edit_file(d, "recipes/tiny-image.toml", |t| {
                t.replace("version = ", "version = = ")
            })
        },
        &["tiny-image.toml:3:"],
    );
}

#[test]
fn unknown_field() {
    expect_error(
        |d| {
            edit_file(d, "recipes/tiny-image.toml", |t| {
                t.replace("entrypoint", "entrypont")
            })
        },
        &["tiny-image.toml:17:", "entrypont"],
    );
}

#[test]
fn missing_input_file() {
    expect_error(
        |d| std::fs::remove_file(d.join("recipes/files/app.conf")).unwrap(),
        &["tiny-stack.toml:4:", "missing input file", "app.conf"],
    );
}

#[test]
fn fixed_output_hash_mismatch_shows_both_hashes() {
    let wrong = "0".repeat(64);
    let real = common::sha256_of(Path::new("/bin/busybox"));
    expect_error(
        |d| {
            edit_file(d, "recipes/busybox.toml", |t| t.replace(&real, &wrong));
        },
        &["busybox.toml:3:", &wrong, &real],
    );
}

#[test]
fn dependency_cycle() {
    expect_error(
        |d| {
            std::fs::write(
                d.join("recipes/loop-a.toml"),
                "kind = \"image\"\nrepository = \"t/a\"\nversion = \"1\"\nbase = \"loop-b\"\n",
            )
            .unwrap();
            std::fs::write(
                d.join("recipes/loop-b.toml"),
                "kind = \"image\"\nrepository = \"t/b\"\nversion = \"1\"\n[[layer]]\nentries = [\n  { dest = \"/x\", recipe = \"loop-a\" },\n]\n",
            )
            .unwrap();
            edit_file(d, "recipes/tiny-image.toml", |t| {
                t.replace("recipe = \"busybox\"", "recipe = \"loop-a\"")
            });
        },
        &[
            "loop-b.toml:6:",
            "dependency cycle: loop-a -> loop-b -> loop-a",
        ],
    );
}

#[test]
fn layer_destination_escaping_the_root() {
    expect_error(
        |d| {
            edit_file(d, "recipes/tiny-image.toml", |t| {
                t.replace("\"/etc/motd\"", "\"/etc/../../motd\"")
            })
        },
        &["tiny-image.toml:12:", "escapes the image root"],
    );
}

#[test]
fn unknown_recipe_names_the_reference() {
    expect_error(
        |d| {
            edit_file(d, "recipes/tiny-stack.yml", |t| {
                t.replace("${image:tiny-image}", "${image:tiny-imag}")
            })
        },
        &["tiny-stack.yml:4:", "unknown recipe \"tiny-imag\""],
    );
}

#[test]
fn unknown_stack_field_names_service_and_field() {
    expect_error(
        |d| {
            edit_file(d, "recipes/tiny-stack.yml", |t| {
                t.replace(
                    "    configs:\n      - source",
                    "    confgs:\n      - source",
                )
            })
        },
        &["tiny-stack.yml", "confgs"],
    );
}

#[test]
fn private_key_in_a_config_is_refused_unless_allowed() {
    let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
    expect_error(
        |d| std::fs::write(d.join("recipes/files/app.conf"), key).unwrap(),
        &[
            "tiny-stack.toml:",
            "config app.conf",
            "holds a private key",
            "allow_private_keys",
        ],
    );
    // listed explicitly, it is shipped
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "hello");
    std::fs::write(d.path().join("recipes/files/app.conf"), key).unwrap();
    edit_file(d.path(), "recipes/tiny-stack.toml", |t| {
        t.replace(
            "template = \"tiny-stack.yml\"\n",
            "template = \"tiny-stack.yml\"\nallow_private_keys = [\"app.conf\"]\n",
        )
    });
    let (ok, err) = build(&def, &d.path().join("store"), &d.path().join("out"));
    assert!(ok, "{err}");
}

/// An image recipe may take another image recipe as its base: its layers are the base's
/// (the same blobs), its config the base's with the recipe's additions; a base and nothing
/// added is the base image itself (same config digest). Another kind of base (a plain fixed
/// file) is refused, naming it.
#[test]
fn an_image_recipe_as_the_base_of_another() {
    let d = tempfile::tempdir().unwrap();
    let def = common::write_tiny_appliance(d.path(), "1.0.0", "hello");
    let recipes = d.path().join("recipes");
    std::fs::write(
        recipes.join("tiny-derived.toml"),
        "kind = \"image\"\nrepository = \"reemo-test/derived\"\nversion = \"2.0.0\"\nbase = \"tiny-image\"\n\n[config]\nenv = { ROLE = \"api\" }\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("tiny-same.toml"),
        "kind = \"image\"\nrepository = \"reemo-test/same\"\nversion = \"1.0.0\"\nbase = \"tiny-image\"\n",
    )
    .unwrap();
    edit_file(d.path(), "recipes/tiny-stack.yml", |t| {
        t.replace(
            "services:\n",
            "services:\n  derived:\n    image: ${image:tiny-derived}\n  same:\n    image: ${image:tiny-same}\n",
        )
    });
    let out = d.path().join("out");
    let (ok, err) = build(&def, &d.path().join("store"), &out);
    assert!(ok, "{err}");
    let bundle = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let b = reemo_bundle::bundle::reader::BundleFile::open(&bundle).unwrap();
    let image = |recipe: &str| b.manifest().image(recipe).unwrap().clone();
    let (base, derived, same) = (
        image("tiny-image"),
        image("tiny-derived"),
        image("tiny-same"),
    );
    let digests = |i: &reemo_bundle::bundle::manifest::ImageEntry| -> Vec<String> {
        i.layers.iter().map(|l| l.digest.clone()).collect()
    };
    assert_eq!(
        digests(&derived),
        digests(&base),
        "the base's layers, as they are"
    );
    assert_ne!(derived.config_digest, base.config_digest);
    assert_eq!(
        same.config_digest, base.config_digest,
        "nothing added: the base itself"
    );
    // the derived config keeps the base's settings and adds its own
    let cfg: serde_json::Value =
        serde_json::from_slice(&b.read_entry(&derived.config.path()).unwrap()).unwrap();
    let env: Vec<&str> = cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"TINY=1") && env.contains(&"ROLE=api"),
        "{env:?}"
    );
    assert_eq!(cfg["config"]["Entrypoint"][0], "/bin/busybox", "{cfg}");
    // a plain file is no base
    expect_error(
        |d| {
            std::fs::write(
                d.join("recipes/tiny-bad.toml"),
                "kind = \"image\"\nrepository = \"reemo-test/bad\"\nversion = \"1.0.0\"\nbase = \"busybox\"\n",
            )
            .unwrap();
            edit_file(d, "recipes/tiny-stack.yml", |t| {
                t.replace("services:\n", "services:\n  bad:\n    image: ${image:tiny-bad}\n")
            });
        },
        &[
            "tiny-bad.toml:4:",
            "base \"busybox\" must be an image recipe or a fixed recipe with format = \"docker-archive\"",
        ],
    );
}
