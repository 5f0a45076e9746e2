//! Registry-less image loading: an image archive is generated on the fly from the bundle's
//! OCI blobs and streamed into `POST /images/load` of every engine in parallel; images an
//! engine already holds are skipped, and what each engine reports afterwards is checked
//! against `bundle.json`.
//!
//! The archive is a docker-archive and an OCI layout over the same blobs, as Docker 25+'s
//! `docker save` writes: the classic store (Docker 20.10 …) reads `manifest.json` and names
//! the image by its config digest; the containerd store reads `index.json` and keeps our
//! manifest, so the image's ID there is our manifest digest. (Given only `manifest.json`,
//! the containerd store writes a manifest of its own and the ID is neither of ours.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::bundle::layers::{CheckedReader, Expected};
use crate::bundle::manifest::ImageEntry;
use crate::bundle::reader::BundleFile;
use crate::engine::{Engine, EngineFacts, ImageFacts, ImageKey, ImageStore};
use crate::events::{Event, Events};
use crate::oci::{self, blob_path, DockerArchiveImage};

/// What loading did on one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Engine address.
    pub engine: String,
    /// Images loaded.
    pub loaded: usize,
    /// Images already present.
    pub skipped: usize,
    /// Bytes streamed.
    pub bytes: u64,
}

/// Writer that hands chunks to an async channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
    sent: Arc<AtomicU64>,
}

const CHUNK: usize = 256 << 10;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "engine closed the upload")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn layers(img: &ImageEntry) -> Vec<&crate::bundle::manifest::BlobRef> {
    img.layers
        .iter()
        .filter(|l| l.digest != img.config.digest)
        .collect()
}

/// The docker-archive `manifest.json` for `images`.
pub fn archive_manifest(images: &[&ImageEntry]) -> Vec<u8> {
    let v: Vec<_> = images
        .iter()
        .map(|i| DockerArchiveImage {
            config: blob_path(&i.config.digest),
            repo_tags: vec![i.reference()],
            layers: layers(i).iter().map(|l| blob_path(&l.digest)).collect(),
        })
        .collect();
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The OCI layout `index.json` for `images`: one manifest descriptor each, named.
pub fn archive_index(bundle_images: &[(&ImageEntry, u64)]) -> Vec<u8> {
    let descriptors: Vec<(oci::Descriptor, String)> = bundle_images
        .iter()
        .map(|(i, size)| {
            let d = oci::Descriptor {
                digest: i.manifest_digest.clone(),
                size: *size,
                media_type: oci::MT_MANIFEST.to_string(),
            };
            (d, i.reference())
        })
        .collect();
    let entries: Vec<oci::IndexEntry> = descriptors
        .iter()
        .zip(bundle_images)
        .map(|((d, r), (i, _))| oci::IndexEntry {
            manifest: d,
            reference: r,
            tag: &i.tag,
        })
        .collect();
    oci::index_json_of(&entries)
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Path of an image's manifest blob in the bundle.
fn manifest_entry(i: &ImageEntry) -> String {
    format!(
        "oci/blobs/sha256/{}",
        i.manifest_digest.trim_start_matches("sha256:")
    )
}

/// The size of each image's manifest blob, from the bundle's file list.
fn manifest_sizes<'a>(
    bundle: &BundleFile,
    images: &[&'a ImageEntry],
) -> Result<Vec<(&'a ImageEntry, u64)>> {
    images
        .iter()
        .map(|i| {
            let f = bundle
                .manifest()
                .file(&manifest_entry(i))
                .with_context(|| {
                    format!(
                        "image {}: manifest {} is not in the bundle",
                        i.reference(),
                        i.manifest_digest
                    )
                })?;
            Ok((*i, f.size))
        })
        .collect()
}

/// Bytes the archive of `images` carries (blobs, deduplicated; manifests not counted).
pub fn archive_size(images: &[&ImageEntry]) -> u64 {
    let mut seen = BTreeSet::new();
    let mut n = 0;
    for i in images {
        for b in std::iter::once(&i.config).chain(layers(i)) {
            if seen.insert(&b.digest) {
                n += b.size;
            }
        }
    }
    n
}

/// Why an engine does not hold exactly our image after loading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadMismatch {
    /// Nothing answers to the ID the engine's store should give the image.
    #[error("engine {engine} ({store} image store) does not hold image {image} as {id} after loading; the tag names {found} there")]
    Missing {
        /// Engine address.
        engine: String,
        /// Its store.
        store: ImageStore,
        /// `repository:tag`.
        image: String,
        /// The ID expected on that store.
        id: String,
        /// The ID the tag names on that engine (`no image` when absent).
        found: String,
    },
    /// The image has other layers than ours.
    #[error("engine {engine} holds image {image} with layers {found:?}, not {expected:?}")]
    Layers {
        /// Engine address.
        engine: String,
        /// `repository:tag`.
        image: String,
        /// Our diff IDs.
        expected: Vec<String>,
        /// The engine's.
        found: Vec<String>,
    },
}

/// Check what an engine reports after loading `image`: `by_id` inspected by the ID its
/// store gives the image, `by_tag` by its `repository:tag`; the layers must be `diff_ids`.
pub fn check_loaded(
    engine: &str,
    facts: &EngineFacts,
    image: &ImageKey,
    diff_ids: &[String],
    by_id: Option<&ImageFacts>,
    by_tag: Option<&ImageFacts>,
) -> Result<(), LoadMismatch> {
    let ok = by_id.filter(|i| crate::engine::holds(facts, image, i));
    let Some(i) = ok else {
        return Err(LoadMismatch::Missing {
            engine: engine.to_string(),
            store: facts.store,
            image: image.reference.clone(),
            id: image.id_on(facts.store).unwrap_or("(unknown)").to_string(),
            found: by_tag.map_or("no image".to_string(), |t| t.id.clone()),
        });
    };
    if i.layers != diff_ids {
        return Err(LoadMismatch::Layers {
            engine: engine.to_string(),
            image: image.reference.clone(),
            expected: diff_ids.to_vec(),
            found: i.layers.clone(),
        });
    }
    Ok(())
}

/// Write the docker-archive tar of `images` to `w`, reading blobs straight from the bundle.
pub fn write_archive(bundle: &BundleFile, images: &[&ImageEntry], w: impl Write) -> Result<()> {
    let mut tar = tar::Builder::new(w);
    let add = |tar: &mut tar::Builder<_>, name: &str, size: u64, r: &mut dyn Read| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, r)
            .with_context(|| format!("streaming {name}"))
    };
    let manifest = archive_manifest(images);
    add(
        &mut tar,
        "manifest.json",
        manifest.len() as u64,
        &mut &manifest[..],
    )?;
    let sized = manifest_sizes(bundle, images)?;
    let index = archive_index(&sized);
    add(
        &mut tar,
        "oci-layout",
        OCI_LAYOUT.len() as u64,
        &mut &OCI_LAYOUT[..],
    )?;
    add(&mut tar, "index.json", index.len() as u64, &mut &index[..])?;
    let mut seen = BTreeSet::new();
    for (i, size) in &sized {
        if !seen.insert(i.manifest_digest.clone()) {
            continue;
        }
        let r = bundle
            .open_entry(&manifest_entry(i))
            .with_context(|| format!("image {}: manifest {}", i.reference(), i.manifest_digest))?;
        add(&mut tar, &blob_path(&i.manifest_digest), *size, &mut { r })?;
    }
    for i in images {
        // Each layer passes through a check of its expansion: one that inflates past its
        // declared size, or to other content than its diff-id, ends the stream with an error
        // before the engine has the whole layer.
        let expected: BTreeMap<String, Expected> = bundle
            .layer_expectations(i)?
            .into_iter()
            .map(|(b, e)| (b.digest, e))
            .collect();
        for b in std::iter::once(&i.config).chain(layers(i)) {
            if !seen.insert(b.digest.clone()) {
                continue;
            }
            let r = bundle
                .open_entry(&b.path())
                .with_context(|| format!("image {}: blob {}", i.reference(), b.digest))?;
            match expected.get(&b.digest) {
                Some(e) => add(
                    &mut tar,
                    &blob_path(&b.digest),
                    b.size,
                    &mut CheckedReader::new(r, e.clone()),
                )?,
                None => add(&mut tar, &blob_path(&b.digest), b.size, &mut { r })?,
            }
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

/// Load the images with the given IDs (all of the bundle's when `ids` is None) into one
/// engine, skipping those it holds; checks the IDs afterwards.
pub async fn load_into(
    bundle: Arc<BundleFile>,
    engine: Arc<dyn Engine>,
    ids: Option<&BTreeSet<String>>,
    events: Arc<dyn Events>,
) -> Result<LoadReport> {
    let mut missing = Vec::new();
    let mut skipped = 0;
    for img in &bundle.manifest().images {
        if ids.is_some_and(|ids| !ids.contains(&img.config_digest)) {
            continue;
        }
        if engine.has_image(&img.into()).await? {
            skipped += 1;
        } else {
            missing.push(img.clone());
        }
    }
    let mut report = LoadReport {
        engine: engine.url().to_string(),
        loaded: missing.len(),
        skipped,
        bytes: 0,
    };
    if missing.is_empty() {
        return Ok(report);
    }
    let total = archive_size(&missing.iter().collect::<Vec<_>>());
    events.emit(Event::info(format!(
        "loading {} image(s), {} into {} ({} already present)",
        missing.len(),
        mb(total),
        engine.url(),
        skipped
    )));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let sent = Arc::new(AtomicU64::new(0));
    let writer_sent = sent.clone();
    let b = bundle.clone();
    let imgs = missing.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            sent: writer_sent,
        };
        let r = write_archive(&b, &imgs.iter().collect::<Vec<_>>(), &mut w);
        if let Err(e) = &r {
            let _ = tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
        }
        r
    });
    let stream: crate::engine::ArchiveStream =
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
    let started = Instant::now();
    let progress_sent = sent.clone();
    let url = engine.url().to_string();
    let ticker_events = events.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            ticker_events.emit(Event::Transfer {
                engine: url.clone(),
                sent: progress_sent.load(Ordering::Relaxed),
                total,
            });
        }
    });
    let res = engine.load_archive(stream).await;
    ticker.abort();
    let produced = producer.await.context("image archive writer")?;
    res?;
    produced?;
    report.bytes = sent.load(Ordering::Relaxed);
    let facts = engine.facts().await?;
    for img in &missing {
        let key = ImageKey::from(img);
        let by_id = match key.id_on(facts.store) {
            Some(id) => engine.inspect_image(id).await?,
            None => None,
        };
        let by_tag = engine.inspect_image(&key.reference).await?;
        let diff_ids: Vec<String> = bundle
            .layer_expectations(img)?
            .into_iter()
            .map(|(_, e)| e.diff_id)
            .collect();
        check_loaded(
            engine.url(),
            &facts,
            &key,
            &diff_ids,
            by_id.as_ref(),
            by_tag.as_ref(),
        )?;
    }
    events.emit(Event::info(format!(
        "loaded {} image(s), {} into {} in {:.1}s",
        missing.len(),
        mb(report.bytes),
        engine.url(),
        started.elapsed().as_secs_f64()
    )));
    Ok(report)
}

/// Load into every engine in parallel.
pub async fn load_all(
    bundle: Arc<BundleFile>,
    engines: &[Arc<dyn Engine>],
    ids: Option<&BTreeSet<String>>,
    events: Arc<dyn Events>,
) -> Result<Vec<LoadReport>> {
    let futs = engines
        .iter()
        .map(|e| load_into(bundle.clone(), e.clone(), ids, events.clone()));
    let results = futures_util::future::join_all(futs).await;
    results.into_iter().collect()
}

/// Load each engine of a plan its own images (`load`), every engine at once.
pub async fn load_each(
    bundle: Arc<BundleFile>,
    engines: &[Arc<dyn Engine>],
    load: &[crate::loader::pipeline::EngineLoad],
    events: Arc<dyn Events>,
) -> Result<()> {
    let ids: Vec<BTreeSet<String>> = load
        .iter()
        .map(|l| l.images.iter().cloned().collect())
        .collect();
    let futs = load.iter().zip(&ids).map(|(l, ids)| {
        load_into(
            bundle.clone(),
            engines[l.engine].clone(),
            Some(ids),
            events.clone(),
        )
    });
    for r in futures_util::future::join_all(futs).await {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ApiVersion;

    fn entry() -> ImageEntry {
        let blob = |d: &str| crate::bundle::manifest::BlobRef {
            digest: d.into(),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: None,
            uncompressed_size: None,
        };
        ImageEntry {
            name: "relay-image".into(),
            repository: "reemo/ws-relay-server".into(),
            tag: "1.0.0-a0452bf7f296".into(),
            config_digest: "sha256:cc".into(),
            manifest_digest:
                "sha256:62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a".into(),
            layers: vec![blob("sha256:l1")],
            config: blob("sha256:cc"),
            size: 2,
        }
    }

    #[test]
    fn the_oci_index_names_each_manifest() {
        let e = entry();
        let v: serde_json::Value = serde_json::from_slice(&archive_index(&[(&e, 727)])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a",
                    "size": 727,
                    "annotations": {
                        "io.containerd.image.name": "docker.io/reemo/ws-relay-server:1.0.0-a0452bf7f296",
                        "org.opencontainers.image.ref.name": "1.0.0-a0452bf7f296",
                    },
                }],
            })
        );
    }

    #[test]
    fn a_loaded_image_must_be_ours_by_id_and_layers() {
        let key = ImageKey::from(&entry());
        let diff = vec!["sha256:d1".to_string()];
        let facts = |store| EngineFacts {
            version: "26.1.5".into(),
            api: ApiVersion(1, 45),
            store,
        };
        let img = |id: &str, layers: &[&str]| ImageFacts {
            id: id.into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let ctrd = facts(ImageStore::Containerd);
        let classic = facts(ImageStore::Classic);
        check_loaded(
            "e",
            &ctrd,
            &key,
            &diff,
            Some(&img(
                "sha256:62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a",
                &["sha256:d1"],
            )),
            None,
        )
        .unwrap();
        check_loaded(
            "e",
            &classic,
            &key,
            &diff,
            Some(&img("sha256:cc", &["sha256:d1"])),
            None,
        )
        .unwrap();
        // what the containerd store made of a docker-archive: another manifest
        let e = check_loaded(
            "unix:///e.sock",
            &ctrd,
            &key,
            &diff,
            None,
            Some(&img("sha256:56d3", &["sha256:d1"])),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "engine unix:///e.sock (containerd image store) does not hold image reemo/ws-relay-server:1.0.0-a0452bf7f296 as sha256:62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a after loading; the tag names sha256:56d3 there"
        );
        let e = check_loaded(
            "e",
            &classic,
            &key,
            &diff,
            Some(&img("sha256:cc", &["sha256:x"])),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, LoadMismatch::Layers { .. }), "{e}");
        let e = check_loaded("e", &classic, &key, &diff, None, None).unwrap_err();
        assert!(
            e.to_string().ends_with("the tag names no image there"),
            "{e}"
        );
    }
}
