//! Desired state of a stack: everything a generation needs to be re-applied exactly, built
//! purely from a bundle (manifest, stack file, config contents) and the host's generated
//! secrets. Stored verbatim in each generation record.

use std::collections::BTreeMap;

pub use super::model::{
    BundleInfo, DesiredImage, DesiredNetwork, DesiredObject, DesiredService, DesiredStack, HostDir,
    ObjectSource,
};
use crate::bundle::manifest::BundleManifest;
pub use crate::hash::sha256_hex;
use crate::stack::{self, ComposeFile};
use anyhow::{bail, Context, Result};

/// Inputs of [`build`] that come from files: config contents by bundle path and generated
/// secret contents by key (`None` = not generated yet; a dry run shows a placeholder).
pub struct Contents<'a> {
    /// Bundle file contents by entry path (configs and secrets the stack references).
    pub files: &'a BTreeMap<String, Vec<u8>>,
    /// Generated secrets by compose key.
    pub generated: &'a BTreeMap<String, Vec<u8>>,
    /// Secrets given as site values (`x-reemo-value`), by compose key.
    pub values: &'a BTreeMap<String, Vec<u8>>,
    /// Objects made by the host's PKI (certificate parts, the CA certificate), by
    /// `config:<key>` or `secret:<key>`.
    pub pki: &'a BTreeMap<String, PkiContent>,
}

/// A config or secret made by the host's PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiContent {
    /// Its PEM objects under `pki/objects/`, in order.
    pub objects: Vec<String>,
    /// Their concatenation.
    pub data: Vec<u8>,
}

/// Generate content for a `x-reemo-generate` template.
pub fn generate_secret(template: &str) -> Vec<u8> {
    use rand::RngCore;
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{hex32}") {
        out.push_str(&rest[..i]);
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        out.push_str(&hex::encode(b));
        rest = &rest[i + "{hex32}".len()..];
    }
    out.push_str(rest);
    out.push('\n');
    out.into_bytes()
}

/// Bundle entry paths of configs and secrets with `file:`, by compose key.
pub fn file_paths(manifest: &BundleManifest, compose: &ComposeFile) -> Result<Vec<String>> {
    let mut v = Vec::new();
    let files = compose
        .configs
        .iter()
        .map(|(k, c)| ("config", k, c.file.as_ref()))
        .chain(
            compose
                .secrets
                .iter()
                .map(|(k, s)| ("secret", k, s.file.as_ref())),
        );
    for (kind, key, file) in files {
        if let Some(f) = file {
            let p = stack::resolve_relative(&manifest.stack_file, f)
                .with_context(|| format!("{kind} {key}: file {f:?} leaves the bundle"))?;
            v.push(p);
        }
    }
    Ok(v)
}

/// Build the desired state of a bundle. Pure: every input is data.
pub fn build(
    manifest: &BundleManifest,
    compose: &ComposeFile,
    contents: &Contents<'_>,
) -> Result<DesiredStack> {
    let stack = manifest.stack.clone();
    let role_nodes = compose.role_nodes();
    let mut images = Vec::new();
    let mut by_ref: BTreeMap<String, &crate::bundle::manifest::ImageEntry> = BTreeMap::new();
    for i in &manifest.images {
        by_ref.insert(i.reference(), i);
        by_ref.insert(i.name.clone(), i);
    }
    let mut configs = Vec::new();
    for (key, def) in &compose.configs {
        if def.ca == Some(true) {
            let c = contents
                .pki
                .get(&format!("config:{key}"))
                .with_context(|| format!("config {key}: the CA certificate was not made"))?;
            let sha = sha256_hex(&c.data);
            configs.push(DesiredObject {
                key: key.clone(),
                name: format!("{stack}_{key}_{}", &sha[..8]),
                sha256: sha,
                source: ObjectSource::Pki {
                    objects: c.objects.clone(),
                },
            });
            continue;
        }
        if def.external == Some(true) {
            bail!("config {key}: external configs are not supported by the loader");
        }
        let f = def.file.as_deref().unwrap_or_default();
        let path = stack::resolve_relative(&manifest.stack_file, f)
            .with_context(|| format!("config {key}: file {f:?} leaves the bundle"))?;
        let data = contents
            .files
            .get(&path)
            .with_context(|| format!("config {key}: {path} is not in the bundle"))?;
        let sha = sha256_hex(data);
        configs.push(DesiredObject {
            key: key.clone(),
            name: format!("{stack}_{key}_{}", &sha[..8]),
            sha256: sha,
            source: ObjectSource::Store {
                identity: manifest.identity.clone(),
                path,
            },
        });
    }
    let mut secrets = Vec::new();
    for (key, def) in &compose.secrets {
        let (sha, source) = if def.certificate.is_some() {
            let c = contents
                .pki
                .get(&format!("secret:{key}"))
                .with_context(|| format!("secret {key}: its certificate was not issued"))?;
            (
                sha256_hex(&c.data),
                ObjectSource::Pki {
                    objects: c.objects.clone(),
                },
            )
        } else if let Some(v) = contents.values.get(key) {
            (sha256_hex(v), ObjectSource::Value { key: key.clone() })
        } else if def.generate.is_some() {
            let sha = match contents.generated.get(key) {
                Some(d) => sha256_hex(d),
                // dry run on a fresh host: named in the plan, never created
                None => "(generated)".to_string(),
            };
            (sha, ObjectSource::Generated { key: key.clone() })
        } else if let Some(f) = &def.file {
            let path = stack::resolve_relative(&manifest.stack_file, f)
                .with_context(|| format!("secret {key}: file {f:?} leaves the bundle"))?;
            let data = contents
                .files
                .get(&path)
                .with_context(|| format!("secret {key}: {path} is not in the bundle"))?;
            (
                sha256_hex(data),
                ObjectSource::Store {
                    identity: manifest.identity.clone(),
                    path,
                },
            )
        } else {
            bail!("secret {key}: external secrets without x-reemo-generate are not supported by the loader");
        };
        secrets.push(DesiredObject {
            key: key.clone(),
            name: if sha.starts_with('(') {
                format!("{stack}_{key}_{sha}")
            } else {
                format!("{stack}_{key}_{}", &sha[..8])
            },
            sha256: sha,
            source,
        });
    }
    let mut networks = Vec::new();
    for key in compose.used_networks() {
        let def = compose
            .networks
            .get(&key)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let external = def.external == Some(true);
        networks.push(DesiredNetwork {
            name: def.name.clone().unwrap_or_else(|| {
                if external {
                    key.clone()
                } else {
                    format!("{stack}_{key}")
                }
            }),
            key,
            driver: def.driver.unwrap_or_else(|| "overlay".into()),
            attachable: def.attachable.unwrap_or(false),
            external,
        });
    }
    let mut services = Vec::new();
    for summary in compose.services() {
        let svc = &compose.services[summary.name];
        let img = by_ref.get(summary.image).with_context(|| {
            format!(
                "service {}: image {:?} is not one of the bundle's images",
                summary.name, summary.image
            )
        })?;
        if !images
            .iter()
            .any(|i: &DesiredImage| i.id == img.config_digest)
        {
            images.push(DesiredImage {
                name: img.name.clone(),
                reference: img.reference(),
                id: img.config_digest.clone(),
                manifest: Some(img.manifest_digest.clone()),
            });
        }
        let cfg_names: Vec<String> = svc
            .configs
            .iter()
            .map(|c| {
                configs
                    .iter()
                    .find(|o| o.key == c.source())
                    .map(|o| o.name.clone())
                    .unwrap_or_default()
            })
            .collect();
        let sec_names: Vec<String> = svc
            .secrets
            .iter()
            .map(|c| {
                secrets
                    .iter()
                    .find(|o| o.key == c.source())
                    .map(|o| o.name.clone())
                    .unwrap_or_default()
            })
            .collect();
        // a role constrains placement only when it names nodes
        let role = svc.role.clone().filter(|r| role_nodes.contains_key(r));
        let input = super::spec::ServiceInput {
            stack: &stack,
            name: summary.name,
            service: svc,
            role: role.as_deref(),
            image_id: &img.config_digest,
            image_ref: &img.reference(),
            configs: &cfg_names,
            secrets: &sec_names,
            networks: &networks,
        };
        let spec = super::spec::service_spec(&input)
            .with_context(|| format!("service {}", summary.name))?;
        let (spec, hash, task_hash) = super::spec::seal(spec);
        services.push(DesiredService {
            name: summary.name.to_string(),
            full_name: format!("{stack}_{}", summary.name),
            phase: summary.phase,
            job: summary.job,
            tags: svc.tags.clone(),
            role: role.clone(),
            image_id: img.config_digest.clone(),
            configs: cfg_names,
            secrets: sec_names,
            spec_hash: hash,
            task_hash,
            spec,
        });
    }
    let mut d = DesiredStack {
        stack,
        bundle: BundleInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            identity: manifest.identity.clone(),
            pinned: manifest.pinned.clone(),
        },
        images,
        networks,
        configs,
        secrets,
        services,
        certificates: vec![],
        site: BTreeMap::new(),
        node_roles: role_nodes,
        host_dirs: host_dirs(compose)?,
    };
    d.prune();
    Ok(d)
}

/// The bind mounts' host folders to create when missing (`x-reemo-create`), one per path.
pub(crate) fn host_dirs(compose: &ComposeFile) -> Result<Vec<HostDir>> {
    let mut out: Vec<HostDir> = Vec::new();
    for (name, s) in &compose.services {
        for v in &s.volumes {
            let v = v.long()?;
            let (Some(c), Some(path)) = (&v.create, &v.source) else {
                continue;
            };
            let d = HostDir {
                path: crate::fsutil::normalize(std::path::Path::new(path))
                    .display()
                    .to_string(),
                uid: c.uid,
                gid: c.gid,
                mode: c.mode,
                service: name.clone(),
            };
            match out.iter().find(|o| o.path == d.path) {
                Some(o) if (o.uid, o.gid, o.mode) != (d.uid, d.gid, d.mode) => bail!(
                    "services {} and {name} ask x-reemo-create for {} with different owners or modes",
                    o.service,
                    d.path
                ),
                Some(_) => {}
                None => out.push(d),
            }
        }
    }
    Ok(out)
}

/// `--only`: the named services from `new`, every other service as in `previous`.
pub fn merge_only(
    new: &DesiredStack,
    previous: Option<&DesiredStack>,
    only: &[String],
) -> Result<DesiredStack> {
    for o in only {
        if new.service(o).is_none() {
            let names: Vec<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "--only {o}: the bundle has no such service (it has {})",
                names.join(", ")
            );
        }
    }
    let mut out = new.clone();
    out.services.clear();
    for s in &new.services {
        if only.contains(&s.name) {
            out.services.push(s.clone());
        } else if let Some(p) = previous.and_then(|p| p.service(&s.name)) {
            out.services.push(p.clone());
        }
    }
    if let Some(p) = previous {
        for s in &p.services {
            if out.service(&s.name).is_none() {
                out.services.push(s.clone());
            }
        }
        out.images.extend(p.images.iter().cloned());
        out.configs.extend(p.configs.iter().cloned());
        out.secrets.extend(p.secrets.iter().cloned());
        for n in &p.networks {
            if !out.networks.iter().any(|x| x.name == n.name) {
                out.networks.push(n.clone());
            }
        }
    }
    out.services
        .sort_by(|a, b| (a.phase, &a.name).cmp(&(b.phase, &b.name)));
    out.prune();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{BlobRef, ImageEntry, BUNDLE_FORMAT};

    fn manifest() -> BundleManifest {
        let blob = |d: &str| BlobRef {
            digest: format!("sha256:{d}"),
            size: 1,
            media_type: "x".into(),
            ..Default::default()
        };
        BundleManifest {
            format: BUNDLE_FORMAT,
            mtime: Some(0),
            name: "relayws".into(),
            version: "1.0.0".into(),
            identity: "ab".repeat(32),
            stack: "relayws".into(),
            stack_file: "stack/docker-stack.yml".into(),
            pinned: BTreeMap::new(),
            images: vec![ImageEntry {
                name: "relay-image".into(),
                repository: "reemo/ws-relay-server".into(),
                tag: "1.0.0-0123456789ab".into(),
                config_digest: format!("sha256:{}", "c".repeat(64)),
                manifest_digest: format!("sha256:{}", "d".repeat(64)),
                layers: vec![blob(&"e".repeat(64))],
                config: blob(&"c".repeat(64)),
                size: 2,
            }],
            services: vec![],
            files: vec![],
            inputs: vec![],
            parameters: vec![],
        }
    }

    fn compose() -> ComposeFile {
        crate::stack::parse(
            &crate::stack::relay_template("reemo/ws-relay-server:1.0.0-0123456789ab"),
            "t",
        )
        .unwrap()
    }

    /// The relay certificate's two secrets, as the host's PKI makes them.
    fn pki() -> BTreeMap<String, PkiContent> {
        let part = |data: &[u8]| PkiContent {
            objects: vec![sha256_hex(data)],
            data: data.to_vec(),
        };
        BTreeMap::from([
            ("secret:relay_tls_chain".to_string(), part(b"chain")),
            ("secret:relay_tls_key".to_string(), part(b"key")),
        ])
    }

    #[test]
    fn desired_state_pins_image_id_and_names_objects_by_content() {
        let files = BTreeMap::from([("configs/relay.toml".to_string(), b"listen = 1\n".to_vec())]);
        let generated = BTreeMap::from([
            ("relay_token_keys".to_string(), b"k1=aa\n".to_vec()),
            ("relay_control_secret".to_string(), b"bb\n".to_vec()),
        ]);
        let d = build(
            &manifest(),
            &compose(),
            &Contents {
                values: &BTreeMap::new(),
                files: &files,
                generated: &generated,
                pki: &pki(),
            },
        )
        .unwrap();
        let relay = d.service("relay").unwrap();
        assert_eq!(relay.full_name, "relayws_relay");
        assert_eq!(relay.image_id, format!("sha256:{}", "c".repeat(64)));
        assert_eq!(
            relay.spec["TaskTemplate"]["ContainerSpec"]["Image"],
            relay.image_id
        );
        let cfg_hash = sha256_hex(b"listen = 1\n");
        assert_eq!(
            d.configs[0].name,
            format!("relayws_relay_config_{}", &cfg_hash[..8])
        );
        assert_eq!(
            d.configs[0].source,
            ObjectSource::Store {
                identity: "ab".repeat(32),
                path: "configs/relay.toml".into()
            }
        );
        assert_eq!(relay.secrets.len(), 4);
        let generated_count = d
            .secrets
            .iter()
            .filter(|s| matches!(s.source, ObjectSource::Generated { .. }))
            .count();
        assert_eq!(generated_count, 2);
        let key = d.secrets.iter().find(|s| s.key == "relay_tls_key").unwrap();
        assert_eq!(
            key.source,
            ObjectSource::Pki {
                objects: vec![sha256_hex(b"key")]
            }
        );
        assert_eq!(
            key.name,
            format!("relayws_relay_tls_key_{}", &sha256_hex(b"key")[..8])
        );
        assert!(d.networks.is_empty(), "the relay joins no overlay network");

        // a changed config changes the config name and the spec hash, nothing else
        let files2 = BTreeMap::from([("configs/relay.toml".to_string(), b"listen = 2\n".to_vec())]);
        let d2 = build(
            &manifest(),
            &compose(),
            &Contents {
                values: &BTreeMap::new(),
                files: &files2,
                generated: &generated,
                pki: &pki(),
            },
        )
        .unwrap();
        assert_ne!(d2.configs[0].name, d.configs[0].name);
        assert_ne!(d2.services[0].spec_hash, d.services[0].spec_hash);
        assert_eq!(d2.secrets, d.secrets);
    }

    #[test]
    fn unknown_image_is_an_error_naming_the_service() {
        let mut m = manifest();
        m.images[0].tag = "other".into();
        let e = build(
            &m,
            &compose(),
            &Contents {
                values: &BTreeMap::new(),
                files: &BTreeMap::from([("configs/relay.toml".to_string(), vec![])]),
                generated: &BTreeMap::new(),
                pki: &pki(),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("service relay") && e.contains("not one of the bundle's images"),
            "{e}"
        );
    }

    #[test]
    fn generated_secrets_look_right() {
        let s = String::from_utf8(generate_secret("k1={hex32}")).unwrap();
        assert!(s.starts_with("k1=") && s.ends_with('\n'));
        assert_eq!(s.trim().len(), 3 + 64);
        assert_ne!(generate_secret("{hex32}"), generate_secret("{hex32}"));
    }
}
