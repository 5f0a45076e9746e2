//! OCI image writing without a Docker daemon: deterministic layer tars (sorted entries, fixed
//! mtime, uid/gid 0 unless set, no atime/ctime), gzip with a fixed header, and the config,
//! manifest, index and Docker `manifest.json` documents. Pure functions over bytes. The OCI
//! documents are `oci-spec` values, written with fixed key orders and sorted maps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use anyhow::{bail, Context, Result};
use oci_spec::image as spec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// A symbolic link to this target (kept verbatim).
    Symlink(String),
    /// A hard link to another path of the same layer, which must sort before it.
    HardLink(String),
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
                Content::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &f.path, target)
                        .with_context(|| format!("adding /{} to a layer", f.path))?;
                }
                Content::HardLink(target) => {
                    // A hard link names an entry written before it, or it cannot be extracted.
                    if target.as_str() >= f.path.as_str()
                        || !matches!(all.get(target).map(|t| &t.content), Some(Content::Bytes(_)))
                    {
                        bail!(
                            "layer hard link /{} must name a regular file that sorts before it (/{target})",
                            f.path
                        );
                    }
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &f.path, target)
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

/// A blob descriptor; in the documents it is an oci-spec [`spec::Descriptor`] (see
/// [`Descriptor::to_oci`]).
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

    /// The oci-spec descriptor; an error when the digest is not a valid OCI digest.
    pub fn to_oci(&self) -> Result<spec::Descriptor> {
        let digest = spec::Digest::try_from(self.digest.as_str())
            .with_context(|| format!("descriptor digest {:?}", self.digest))?;
        Ok(spec::Descriptor::new(
            spec::MediaType::from(self.media_type.as_str()),
            self.size,
            digest,
        ))
    }

    /// [`Descriptor::to_oci`] for the documents this module writes, whose descriptors come from
    /// [`Descriptor::of`] or from blobs already stored under their digest.
    ///
    /// # Panics
    /// When the digest is not a valid OCI digest (`sha256:` and 64 lowercase hex digits).
    fn oci(&self) -> spec::Descriptor {
        self.to_oci().unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl From<&spec::Descriptor> for Descriptor {
    fn from(d: &spec::Descriptor) -> Descriptor {
        Descriptor {
            digest: d.digest().to_string(),
            size: d.size(),
            media_type: d.media_type().to_string(),
        }
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
    /// `Healthcheck` (already in Docker's JSON shape; not part of the OCI config, so it is
    /// written by [`config_json`] beside the oci-spec fields).
    pub healthcheck: Option<Value>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

// The documents are oci-spec values; their bytes are the oci-spec serialisation re-laid by the
// writer below: object keys in the fixed orders listed here, and the Go maps that oci-spec
// holds in a `HashMap` (`ExposedPorts`, `Labels`, `annotations`) written with sorted keys, so
// that the bytes, and hence every digest and image ID, depend on the content only.

/// Keys of the image config, in the order written.
const CONFIG_DOC_KEYS: &[&str] = &[
    "architecture",
    "os",
    "created",
    "config",
    "rootfs",
    "history",
];
/// Keys of the config's `config`, in the order written.
const CONFIG_KEYS: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Healthcheck",
    "WorkingDir",
    "Labels",
    "StopSignal",
];
/// Keys of `rootfs`.
const ROOTFS_KEYS: &[&str] = &["type", "diff_ids"];
/// Keys of a descriptor.
const DESCRIPTOR_KEYS: &[&str] = &["mediaType", "digest", "size", "annotations"];
/// Keys of a manifest.
const MANIFEST_KEYS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "annotations",
];
/// Keys of an index.
const INDEX_KEYS: &[&str] = &["schemaVersion", "mediaType", "manifests"];

/// A typed document as a JSON value.
fn to_value(doc: &impl Serialize) -> Value {
    serde_json::to_value(doc).expect("oci-spec documents serialise to JSON")
}

/// Compact bytes of a laid-out value.
fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialising JSON values cannot fail")
}

/// Apply `f` to the member `key` of an object, when present.
fn edit(v: &mut Value, key: &str, f: impl FnOnce(Value) -> Value) {
    if let Some(x) = v.get_mut(key) {
        *x = f(x.take());
    }
}

/// The object `v` with its keys in `order`. Every key must be listed: one that is not (a field
/// a newer oci-spec emits) is kept after the listed ones, and fails the tests.
fn ordered(v: Value, order: &[&str]) -> Value {
    let Value::Object(m) = v else { return v };
    let mut rest: Vec<(String, Value)> = m.into_iter().collect();
    let mut out = serde_json::Map::new();
    for key in order {
        if let Some(i) = rest.iter().position(|(k, _)| k == key) {
            let (k, x) = rest.remove(i);
            out.insert(k, x);
        }
    }
    debug_assert!(
        rest.is_empty(),
        "keys without a place in the written layout: {:?}",
        rest.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    out.extend(rest);
    Value::Object(out)
}

/// A map-valued object with its keys sorted (a Go map that oci-spec holds in a `HashMap`).
fn sorted(v: Value) -> Value {
    let Value::Object(m) = v else { return v };
    let mut entries: Vec<(String, Value)> = m.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Object(entries.into_iter().collect())
}

/// A descriptor as written.
fn descriptor_value(v: Value) -> Value {
    let mut v = ordered(v, DESCRIPTOR_KEYS);
    edit(&mut v, "annotations", sorted);
    v
}

/// Each element of an array, laid out by `f`.
fn each(v: Value, f: fn(Value) -> Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.into_iter().map(f).collect()),
        other => other,
    }
}

/// The OCI image config (linux/amd64) of `fields` over layers with `diff_ids`. `Healthcheck`
/// and `history` are not held here: [`config_json`] writes them as given.
pub fn image_config(
    fields: &ConfigFields,
    diff_ids: &[String],
    created: &str,
) -> spec::ImageConfiguration {
    let mut c = spec::ConfigBuilder::default();
    if let Some(u) = &fields.user {
        c = c.user(u.clone());
    }
    if !fields.exposed_ports.is_empty() {
        c = c.exposed_ports(fields.exposed_ports.iter().cloned().collect::<Vec<_>>());
    }
    if !fields.env.is_empty() {
        c = c.env(fields.env.clone());
    }
    if let Some(e) = &fields.entrypoint {
        c = c.entrypoint(e.clone());
    }
    if let Some(cmd) = &fields.cmd {
        c = c.cmd(cmd.clone());
    }
    if let Some(w) = &fields.workdir {
        c = c.working_dir(w.clone());
    }
    if !fields.labels.is_empty() {
        c = c.labels(fields.labels.clone().into_iter().collect::<HashMap<_, _>>());
    }
    if let Some(s) = &fields.stop_signal {
        c = c.stop_signal(s.clone());
    }
    let rootfs = spec::RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids.to_vec())
        .build()
        .expect("rootfs fields are all set");
    spec::ImageConfigurationBuilder::default()
        .architecture(spec::Arch::Amd64)
        .os(spec::Os::Linux)
        .created(created)
        .config(c.build().expect("config fields all have defaults"))
        .rootfs(rootfs)
        .build()
        .expect("image config fields are all set")
}

/// Build the image config JSON bytes (compact, keys in a fixed order): [`image_config`] plus
/// `Healthcheck` (Docker's, outside the OCI config) and `history`, whose entries are written
/// as given so that a base image's history (any keys, in its own order) is kept verbatim.
pub fn config_json(
    fields: &ConfigFields,
    diff_ids: &[String],
    history: &[Value],
    created: &str,
) -> Vec<u8> {
    let mut v = to_value(&image_config(fields, diff_ids, created));
    edit(&mut v, "config", |mut c| {
        edit(&mut c, "ExposedPorts", sorted);
        edit(&mut c, "Labels", sorted);
        if let (Some(h), Value::Object(m)) = (&fields.healthcheck, &mut c) {
            m.insert("Healthcheck".into(), h.clone());
        }
        ordered(c, CONFIG_KEYS)
    });
    edit(&mut v, "rootfs", |r| ordered(r, ROOTFS_KEYS));
    if let Value::Object(m) = &mut v {
        m.insert("history".into(), Value::Array(history.to_vec()));
    }
    to_bytes(&ordered(v, CONFIG_DOC_KEYS))
}

/// The OCI manifest of an image.
///
/// # Panics
/// When a descriptor's digest is not a valid OCI digest.
pub fn image_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> spec::ImageManifest {
    let mut b = spec::ImageManifestBuilder::default()
        .schema_version(spec::SCHEMA_VERSION)
        .media_type(spec::MediaType::ImageManifest)
        .config(config.oci())
        .layers(layers.iter().map(Descriptor::oci).collect::<Vec<_>>());
    if !annotations.is_empty() {
        b = b.annotations(annotations.clone().into_iter().collect::<HashMap<_, _>>());
    }
    b.build().expect("manifest fields are all set")
}

/// A manifest as written.
fn manifest_bytes(m: &spec::ImageManifest) -> Vec<u8> {
    let mut v = to_value(m);
    edit(&mut v, "config", descriptor_value);
    edit(&mut v, "layers", |l| each(l, descriptor_value));
    edit(&mut v, "annotations", sorted);
    to_bytes(&ordered(v, MANIFEST_KEYS))
}

/// Build the OCI manifest JSON bytes.
///
/// # Panics
/// When a descriptor's digest is not a valid OCI digest.
pub fn manifest_json(
    config: &Descriptor,
    layers: &[Descriptor],
    annotations: &BTreeMap<String, String>,
) -> Vec<u8> {
    manifest_bytes(&image_manifest(config, layers, annotations))
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

/// Annotation naming an image for containerd (and Docker 25+ loading an OCI layout).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `reference` as the containerd store names images: with its registry
/// (`docker.io/reemo/relay:1`, `docker.io/library/busybox:1`). The store takes
/// `io.containerd.image.name` verbatim; Docker finds only fully qualified names.
pub fn qualified(reference: &str) -> String {
    match reference.split_once('/') {
        None => format!("docker.io/library/{reference}"),
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            reference.to_string()
        }
        Some(_) => format!("docker.io/{reference}"),
    }
}

/// One manifest of an OCI layout's index: its descriptor, `repository:tag` and tag.
#[derive(Debug, Clone, Copy)]
pub struct IndexEntry<'a> {
    /// Manifest descriptor.
    pub manifest: &'a Descriptor,
    /// `repository:tag` (annotated fully qualified, as the containerd store names it).
    pub reference: &'a str,
    /// Tag alone (`org.opencontainers.image.ref.name`).
    pub tag: &'a str,
}

/// The OCI index of a layout, each manifest annotated with its names.
///
/// # Panics
/// When a manifest descriptor's digest is not a valid OCI digest.
pub fn image_index(entries: &[IndexEntry]) -> spec::ImageIndex {
    let manifests: Vec<spec::Descriptor> = entries
        .iter()
        .map(|e| {
            let mut d = e.manifest.oci();
            d.set_annotations(Some(HashMap::from([
                (
                    ANNOTATION_CONTAINERD_NAME.to_string(),
                    qualified(e.reference),
                ),
                (spec::ANNOTATION_REF_NAME.to_string(), e.tag.to_string()),
            ])));
            d
        })
        .collect();
    spec::ImageIndexBuilder::default()
        .schema_version(spec::SCHEMA_VERSION)
        .media_type(spec::MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .expect("index fields are all set")
}

/// `index.json` of an OCI layout (Docker 25+ reads it) holding `entries`.
///
/// # Panics
/// When a manifest descriptor's digest is not a valid OCI digest.
pub fn index_json_of(entries: &[IndexEntry]) -> Vec<u8> {
    let mut v = to_value(&image_index(entries));
    edit(&mut v, "manifests", |m| each(m, descriptor_value));
    to_bytes(&ordered(v, INDEX_KEYS))
}

/// `index.json` of the OCI layout holding all images.
///
/// # Panics
/// When a manifest descriptor's digest is not a valid OCI digest.
pub fn index_json(images: &[LayoutImage]) -> Vec<u8> {
    let entries: Vec<IndexEntry> = images.iter().map(LayoutImage::index_entry).collect();
    index_json_of(&entries)
}

impl LayoutImage {
    /// Its entry in the layout's index.
    pub fn index_entry(&self) -> IndexEntry<'_> {
        IndexEntry {
            manifest: &self.manifest,
            reference: &self.reference,
            tag: &self.tag,
        }
    }
}

/// One image of Docker's `manifest.json` (docker-archive format, which OCI does not define).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveImage {
    /// Path of the config blob.
    pub config: String,
    /// `repository:tag` names.
    pub repo_tags: Vec<String>,
    /// Paths of the layer blobs, bottom first.
    pub layers: Vec<String>,
}

/// Path of a blob in a layout or docker archive: `blobs/sha256/<hex>`.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Docker's `manifest.json` (docker-archive; Docker 20.10 reads it), paths relative to the
/// layout root.
pub fn docker_manifest_json(images: &[LayoutImage]) -> Vec<u8> {
    let doc: Vec<DockerArchiveImage> = images
        .iter()
        .map(|i| DockerArchiveImage {
            config: blob_path(&i.config.digest),
            repo_tags: vec![i.reference.clone()],
            layers: i.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        })
        .collect();
    serde_json::to_vec(&doc).expect("serialising a docker manifest cannot fail")
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

    /// Config fields using every key, with maps given out of order.
    fn full_fields() -> ConfigFields {
        ConfigFields {
            user: Some("app".into()),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: Some(vec!["/bin/app".into(), "-x".into()]),
            cmd: Some(vec![]),
            workdir: Some("/srv".into()),
            exposed_ports: ["8080/tcp".to_string(), "53/udp".to_string()].into(),
            labels: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
            healthcheck: Some(
                serde_json::json!({"Test": ["CMD", "true"], "Interval": 5_000_000_000u64}),
            ),
            stop_signal: Some("SIGTERM".into()),
        }
    }

    /// A base image's history (Docker's key order, keys OCI does not define) and ours.
    fn history() -> Vec<Value> {
        vec![
            serde_json::json!({"created": "2020-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD", "empty_layer": true, "comment": "c"}),
            serde_json::json!({"created_by": "x", "created": "y", "author": "z", "extra": 1}),
        ]
    }

    const EPOCH: &str = "1970-01-01T00:00:00Z";

    fn diff_ids() -> Vec<String> {
        vec!["sha256:aa".into(), "sha256:bb".into()]
    }

    fn layers() -> Vec<Descriptor> {
        vec![
            Descriptor::of(b"x", MT_LAYER_GZIP),
            Descriptor::of(b"y", MT_LAYER_TAR),
        ]
    }

    fn annotations() -> BTreeMap<String, String> {
        [
            (
                "org.opencontainers.image.version".to_string(),
                "1.0".to_string(),
            ),
            ("a.b".to_string(), "c".to_string()),
        ]
        .into()
    }

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    // Golden documents: the bytes of configs and manifests are image IDs and digests of every
    // bundle, so a change here must be deliberate.
    const GOLDEN_CONFIG: &str = r#"{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"app","ExposedPorts":{"53/udp":{},"8080/tcp":{}},"Env":["PATH=/bin","A=1"],"Entrypoint":["/bin/app","-x"],"Cmd":[],"Healthcheck":{"Test":["CMD","true"],"Interval":5000000000},"WorkingDir":"/srv","Labels":{"a":"1","b":"2"},"StopSignal":"SIGTERM"},"rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]},"history":[{"created":"2020-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD","empty_layer":true,"comment":"c"},{"created_by":"x","created":"y","author":"z","extra":1}]}"#;
    const GOLDEN_CONFIG_EMPTY: &str = r#"{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{},"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#;
    const GOLDEN_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:559a63f5b0c759a66b40d7b04668e6535d2ef90431d0b4ccc021a2bf585ddce4","size":570},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","size":1},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa","size":1}],"annotations":{"a.b":"c","org.opencontainers.image.version":"1.0"}}"#;
    const GOLDEN_MANIFEST_BARE: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:559a63f5b0c759a66b40d7b04668e6535d2ef90431d0b4ccc021a2bf585ddce4","size":570},"layers":[]}"#;
    const GOLDEN_INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0ce45a6563d809c28fc74b7247a4bd32c4d048c3c5c20f0f1b4e2f61428a655d","size":613,"annotations":{"io.containerd.image.name":"docker.io/r/x:1-abc","org.opencontainers.image.ref.name":"1-abc"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:620775e349df2fad1fe563d7fa948d24435a8899fe7a2808beaeb8b7e31ed024","size":248,"annotations":{"io.containerd.image.name":"docker.io/r/y:2-def","org.opencontainers.image.ref.name":"2-def"}}]}"#;
    const GOLDEN_INDEX_EMPTY: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    const GOLDEN_DOCKER_MANIFEST: &str = r#"[{"Config":"blobs/sha256/559a63f5b0c759a66b40d7b04668e6535d2ef90431d0b4ccc021a2bf585ddce4","RepoTags":["r/x:1-abc"],"Layers":["blobs/sha256/2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","blobs/sha256/a1fce4363854ff888cff4b8e7875d600c2682390412a8cf79b37d0b11148b0fa"]},{"Config":"blobs/sha256/559a63f5b0c759a66b40d7b04668e6535d2ef90431d0b4ccc021a2bf585ddce4","RepoTags":["r/y:2-def"],"Layers":[]}]"#;

    fn layout_images() -> Vec<LayoutImage> {
        let cfg = config_json(&full_fields(), &diff_ids(), &history(), EPOCH);
        let cd = Descriptor::of(&cfg, MT_CONFIG);
        let m = manifest_json(&cd, &layers(), &annotations());
        let m0 = manifest_json(&cd, &[], &BTreeMap::new());
        vec![
            LayoutImage {
                reference: "r/x:1-abc".into(),
                tag: "1-abc".into(),
                manifest: Descriptor::of(&m, MT_MANIFEST),
                config: cd.clone(),
                layers: layers(),
            },
            LayoutImage {
                reference: "r/y:2-def".into(),
                tag: "2-def".into(),
                manifest: Descriptor::of(&m0, MT_MANIFEST),
                config: cd,
                layers: vec![],
            },
        ]
    }

    #[test]
    fn golden_config() {
        assert_eq!(
            text(config_json(&full_fields(), &diff_ids(), &history(), EPOCH)),
            GOLDEN_CONFIG
        );
        assert_eq!(
            text(config_json(&ConfigFields::default(), &[], &[], EPOCH)),
            GOLDEN_CONFIG_EMPTY
        );
    }

    #[test]
    fn golden_manifest_and_index() {
        let cd = Descriptor::of(GOLDEN_CONFIG.as_bytes(), MT_CONFIG);
        assert_eq!(
            text(manifest_json(&cd, &layers(), &annotations())),
            GOLDEN_MANIFEST
        );
        assert_eq!(
            text(manifest_json(&cd, &[], &BTreeMap::new())),
            GOLDEN_MANIFEST_BARE
        );
        assert_eq!(text(index_json(&layout_images())), GOLDEN_INDEX);
        assert_eq!(text(index_json(&[])), GOLDEN_INDEX_EMPTY);
        assert_eq!(
            text(docker_manifest_json(&layout_images())),
            GOLDEN_DOCKER_MANIFEST
        );
    }

    #[test]
    fn documents_read_back_as_oci_spec_types() {
        let cfg = spec::ImageConfiguration::from_reader(GOLDEN_CONFIG.as_bytes()).unwrap();
        let typed = image_config(&full_fields(), &diff_ids(), EPOCH);
        // oci-spec reads `ExposedPorts` (a Go map) into a Vec in HashMap order.
        let ports_sorted = |c: &spec::ImageConfiguration| {
            let mut c = c.config().clone().unwrap();
            let mut p = c.exposed_ports().clone().unwrap_or_default();
            p.sort();
            c.set_exposed_ports(Some(p));
            c
        };
        assert_eq!(ports_sorted(&cfg), ports_sorted(&typed));
        assert_eq!(cfg.rootfs(), typed.rootfs());
        assert_eq!(cfg.created().as_deref(), Some(EPOCH));
        assert_eq!(cfg.history().as_ref().map(Vec::len), Some(2));
        let cd = Descriptor::of(GOLDEN_CONFIG.as_bytes(), MT_CONFIG);
        let m = spec::ImageManifest::from_reader(GOLDEN_MANIFEST.as_bytes()).unwrap();
        assert_eq!(m, image_manifest(&cd, &layers(), &annotations()));
        assert_eq!(Descriptor::from(m.config()), cd);
        let i = spec::ImageIndex::from_reader(GOLDEN_INDEX.as_bytes()).unwrap();
        let images = layout_images();
        let entries: Vec<IndexEntry> = images.iter().map(LayoutImage::index_entry).collect();
        assert_eq!(i, image_index(&entries));
        let l = spec::OciLayout::from_reader(OCI_LAYOUT).unwrap();
        assert_eq!(l.image_layout_version(), "1.0.0");
        assert_eq!(l.to_string().unwrap().as_bytes(), OCI_LAYOUT);
    }

    #[test]
    fn names_in_the_oci_index_are_qualified_as_the_containerd_store_keeps_them() {
        for (r, want) in [
            (
                "reemo/ws-relay-server:1.0.0-a0452bf7f296",
                "docker.io/reemo/ws-relay-server:1.0.0-a0452bf7f296",
            ),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("registry.local/x/y:1", "registry.local/x/y:1"),
            ("localhost/x:1", "localhost/x:1"),
            ("host:5000/x:1", "host:5000/x:1"),
        ] {
            assert_eq!(qualified(r), want, "{r}");
        }
    }

    #[test]
    fn media_types_are_oci_spec_ones() {
        for (ours, theirs) in [
            (MT_MANIFEST, spec::MediaType::ImageManifest),
            (MT_CONFIG, spec::MediaType::ImageConfig),
            (MT_LAYER_GZIP, spec::MediaType::ImageLayerGzip),
            (MT_LAYER_TAR, spec::MediaType::ImageLayer),
            (MT_INDEX, spec::MediaType::ImageIndex),
        ] {
            assert_eq!(ours, theirs.to_string());
            assert_eq!(spec::MediaType::from(ours), theirs);
        }
    }

    #[test]
    fn bad_digest_is_refused() {
        let d = Descriptor {
            digest: "sha256:../etc".into(),
            size: 1,
            media_type: MT_LAYER_TAR.into(),
        };
        let e = d.to_oci().unwrap_err();
        assert!(format!("{e:#}").contains("sha256:../etc"), "{e:#}");
        let ok = Descriptor::of(b"x", "application/x-other");
        assert_eq!(Descriptor::from(&ok.to_oci().unwrap()), ok);
    }
}
