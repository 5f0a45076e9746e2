//! OCI image writing without a Docker daemon: deterministic layer tars (sorted entries, fixed
//! mtime, uid/gid 0 unless set, no atime/ctime), gzip with a fixed header, and the config,
//! manifest, index and Docker `manifest.json` documents. Pure functions over bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::hash::sha256_hex;

/// Media type of an OCI manifest.
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI config.
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip layer.
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of an uncompressed layer.
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of an OCI index.
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// gzip level for layers: zlib-rs at level 6 (same as `gzip` by default).
pub const GZIP_LEVEL: u32 = 6;

/// Content of one layer entry.
#[derive(Debug, Clone)]
pub enum Content {
    /// File bytes.
    Bytes(std::sync::Arc<Vec<u8>>),
    /// A folder.
    Dir,
}

/// One entry of a layer, with a relative path (`usr/bin/x`).
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// Relative path inside the image.
    pub path: String,
    /// What it holds.
    pub content: Content,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// Write a deterministic uncompressed layer tar. Parent folders are added (0755, root) when
/// not listed; entries are sorted by path; a path listed twice is an error.
pub fn layer_tar(files: &[LayerFile], mtime: u64) -> Result<Vec<u8>> {
    let mut all: BTreeMap<String, LayerFile> = BTreeMap::new();
    for f in files {
        if all.insert(f.path.clone(), f.clone()).is_some() {
            bail!("layer lists /{} twice", f.path);
        }
    }
    let mut parents = BTreeSet::new();
    for p in all.keys() {
        let mut cur = p.as_str();
        while let Some(i) = cur.rfind('/') {
            cur = &cur[..i];
            parents.insert(cur.to_string());
        }
    }
    for p in parents {
        all.entry(p.clone()).or_insert(LayerFile {
            path: p,
            content: Content::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        for f in all.values() {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(mtime);
            h.set_uid(f.uid);
            h.set_gid(f.gid);
            h.set_mode(f.mode);
            match &f.content {
                Content::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{}/", f.path), std::io::empty())
                        .with_context(|| format!("adding /{} to a layer", f.path))?;
                }
                Content::Bytes(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &f.path, data.as_slice())
                        .with_context(|| format!("adding /{} to a layer", f.path))?;
                }
            }
        }
        b.finish().context("finishing layer tar")?;
    }
    Ok(out)
}

/// gzip with a fixed header (no name, mtime 0, OS unknown) so output depends on input only.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::new(GZIP_LEVEL),
        );
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// A blob descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

impl Descriptor {
    /// Describe bytes.
    pub fn of(data: &[u8], media_type: &str) -> Descriptor {
        Descriptor {
            digest: format!("sha256:{}", sha256_hex(data)),
            size: data.len() as u64,
            media_type: media_type.to_string(),
        }
    }

    /// Hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// RFC 3339 UTC time of a Unix timestamp (no clock is read).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Image configuration in Docker/OCI field names, before serialisation.
#[derive(Debug, Clone, Default)]
pub struct ConfigFields {
    /// `User`.
    pub user: Option<String>,
    /// `Env`, `K=V`, in order.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    pub workdir: Option<String>,
    /// `ExposedPorts` keys.
    pub exposed_ports: BTreeSet<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `Healthcheck` (already in Docker's JSON shape).
    pub healthcheck: Option<Value>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// Build the image config JSON bytes (compact, keys in a fixed order).
pub fn config_json(
    fields: &ConfigFields,
    diff_ids: &[String],
    history: &[Value],
    created: &str,
) -> Vec<u8> {
    let mut cfg = serde_json::Map::new();
    if let Some(u) = &fields.user {
        cfg.insert("User".into(), json!(u));
    }
    if !fields.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> = fields
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        cfg.insert("ExposedPorts".into(), Value::Object(ports));
    }
    if !fields.env.is_empty() {
        cfg.insert("Env".into(), json!(fields.env));
    }
    if let Some(e) = &fields.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &fields.cmd {
        cfg.insert("Cmd".into(), json!(c));
    }
    if let Some(h) = &fields.healthcheck {
        cfg.insert("Healthcheck".into(), h.clone());
    }
    if let Some(w) = &fields.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if !fields.labels.is_empty() {
        cfg.insert("Labels".into(), json!(fields.labels));
    }
    if let Some(s) = &fields.stop_signal {
        cfg.insert("StopSignal".into(), json!(s));
    }
    let doc = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": Value::Object(cfg),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    serde_json::to_vec(&doc).expect("serialising JSON values cannot fail")
}

/// Build the OCI manifest JSON bytes.
pub fn manifest_json(
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut doc = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config.json(),
        "layers": layers.iter().map(Descriptor::json).collect::<Vec<_>>(),
    });
    if !annotations.is_empty() {
        doc["annotations"] = json!(annotations);
    }
    serde_json::to_vec(&doc).expect("serialising JSON values cannot fail")
}

/// One image as the layout-level documents need it.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// `repository:tag`.
    pub reference: String,
    /// Tag alone.
    pub tag: String,
    /// Manifest descriptor.
    pub manifest: Descriptor,
    /// Config descriptor.
    pub config: Descriptor,
    /// Layer descriptors.
    pub layers: Vec<Descriptor>,
}

/// `index.json` of the OCI layout holding all images (Docker 25+ reads it).
pub fn index_json(images: &[LayoutImage]) -> Vec<u8> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.json();
            d["annotations"] = json!({
                "io.containerd.image.name": i.reference,
                "org.opencontainers.image.ref.name": i.tag,
            });
            d
        })
        .collect();
    let doc = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    serde_json::to_vec(&doc).expect("serialising JSON values cannot fail")
}

/// Docker's `manifest.json` (docker-archive; Docker 20.10 reads it), paths relative to the
/// layout root.
pub fn docker_manifest_json(images: &[LayoutImage]) -> Vec<u8> {
    let doc: Vec<Value> = images
        .iter()
        .map(|i| {
            json!({
                "Config": format!("blobs/sha256/{}", i.config.hex()),
                "RepoTags": [i.reference],
                "Layers": i.layers.iter().map(|l| format!("blobs/sha256/{}", l.hex())).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&doc).expect("serialising JSON values cannot fail")
}

/// `oci-layout` file content.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const GOLDEN_LAYER: &str = "f5268cd1382708d62464a30d770541cfe6d31e1d9c3ac06581b5efc365a03eb6";
    const GOLDEN_LAYER_GZ: &str =
        "65d4ace4983445d3f1108ed3e1b4b4ca50cddc4b80642bf75095e2327fa4291f";

    fn file(path: &str, data: &[u8], mode: u32) -> LayerFile {
        LayerFile {
            path: path.into(),
            content: Content::Bytes(Arc::new(data.to_vec())),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn layer_is_sorted_with_parents_and_deterministic() {
        let a = layer_tar(
            &[
                file("usr/bin/b", b"b", 0o755),
                file("etc/passwd", b"p", 0o644),
            ],
            0,
        )
        .unwrap();
        let b = layer_tar(
            &[
                file("etc/passwd", b"p", 0o644),
                file("usr/bin/b", b"b", 0o755),
            ],
            0,
        )
        .unwrap();
        assert_eq!(a, b);
        let mut ar = tar::Archive::new(&a[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["etc/", "etc/passwd", "usr/", "usr/bin/", "usr/bin/b"]
        );
        // Golden digest: a change in the tar encoding must be deliberate (it changes every
        // image ID of every bundle).
        assert_eq!(sha256_hex(&a), GOLDEN_LAYER);
        assert_eq!(sha256_hex(&gzip(&a)), GOLDEN_LAYER_GZ);
    }

    #[test]
    fn duplicate_path_is_an_error() {
        let e = layer_tar(&[file("a", b"1", 0o644), file("a", b"2", 0o644)], 0).unwrap_err();
        assert!(e.to_string().contains("/a twice"));
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let data = b"hello hello hello".repeat(100);
        let g1 = gzip(&data);
        assert_eq!(g1, gzip(&data));
        assert_eq!(&g1[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&g1[4..8], &[0, 0, 0, 0], "mtime must be zero");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&g1[..]), &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn docker_manifest_points_at_blobs() {
        let cfg = Descriptor::of(b"{}", MT_CONFIG);
        let l = Descriptor::of(b"x", MT_LAYER_GZIP);
        let img = LayoutImage {
            reference: "a/b:1-abc".into(),
            tag: "1-abc".into(),
            manifest: Descriptor::of(b"m", MT_MANIFEST),
            config: cfg.clone(),
            layers: vec![l.clone()],
        };
        let v: Value = serde_json::from_slice(&docker_manifest_json(&[img])).unwrap();
        assert_eq!(v[0]["Config"], format!("blobs/sha256/{}", cfg.hex()));
        assert_eq!(v[0]["Layers"][0], format!("blobs/sha256/{}", l.hex()));
        assert_eq!(v[0]["RepoTags"][0], "a/b:1-abc");
    }
}
