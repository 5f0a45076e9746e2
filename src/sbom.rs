//! SPDX 2.3 JSON documents (one per image, under `sbom/` in the bundle): the image as the
//! described package; each locked Debian package as a `pkg:deb/debian/…` purl with the
//! `.deb` sha256; each executable of a `binary` recipe with the crates statically linked
//! into it as `pkg:cargo/…` purls with their `Cargo.lock` checksums and licences.
//! Deterministic: the creation time is SOURCE_DATE_EPOCH and the namespace is derived from
//! the image's identity.

use serde_json::{json, Value};

use crate::builder::crates::Crate;
use crate::debian::lock::Lock;

/// The image a document describes.
pub struct Image<'a> {
    /// Recipe name.
    pub name: &'a str,
    /// Repository.
    pub repository: &'a str,
    /// Version.
    pub version: &'a str,
    /// Recipe identity (makes the namespace unique).
    pub identity: &'a str,
    /// Creation time, RFC 3339.
    pub created: &'a str,
}

/// An executable of a `binary` recipe in the image.
pub struct Binary {
    /// Destination in the image.
    pub path: String,
    /// Cargo package it is built from.
    pub package: String,
    /// sha256 of the executable.
    pub sha256: String,
    /// Crates linked into it.
    pub crates: Vec<Crate>,
}

/// SPDX id of a package name (letters, digits, `.` and `-` only).
fn spdx_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{prefix}-{clean}")
}

/// The SPDX document of an image, with the packages of `lock` if it has one and the
/// executables of `binaries` with their crates.
pub fn document(img: &Image, lock: Option<&Lock>, binaries: &[Binary]) -> Value {
    let Image {
        name,
        repository,
        version,
        identity,
        created,
    } = *img;
    let image_id = spdx_id("Image", name);
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": repository,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    if let Some(lock) = lock {
        for p in &lock.packages {
            let id = spdx_id("Package-deb", &p.name);
            packages.push(json!({
                "SPDXID": id,
                "name": p.name,
                "versionInfo": p.version,
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!(
                        "pkg:deb/debian/{}@{}?arch={}",
                        p.name,
                        p.version.replace(':', "%3A").replace('+', "%2B"),
                        p.architecture
                    ),
                }],
                "comment": format!("from suite {}, file {}; {}", p.suite, p.filename, p.why.join(", ")),
            }));
            relationships.push(json!({
                "spdxElementId": image_id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": id,
            }));
        }
    }
    for b in binaries {
        let bid = spdx_id("Binary", b.path.trim_start_matches('/'));
        packages.push(json!({
            "SPDXID": bid,
            "name": b.path,
            "versionInfo": b.crates.iter().find(|c| c.name == b.package && c.source.is_none()).map_or("NOASSERTION", |c| c.version.as_str()),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": b.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "APPLICATION",
            "comment": format!("built by reemo-bundle from the workspace package {}", b.package),
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": bid,
        }));
        for c in &b.crates {
            let cid = spdx_id("Crate", &format!("{}-{}", c.name, c.version));
            if !packages.iter().any(|p| p["SPDXID"] == cid) {
                let mut p = json!({
                    "SPDXID": cid,
                    "name": c.name,
                    "versionInfo": c.version,
                    "downloadLocation": if c.source.is_some() {
                        format!("https://crates.io/api/v1/crates/{}/{}/download", c.name, c.version)
                    } else {
                        "NOASSERTION".to_string()
                    },
                    "filesAnalyzed": false,
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": c.license.as_deref().map_or("NOASSERTION".to_string(), |l| l.replace('/', " OR ")),
                    "copyrightText": "NOASSERTION",
                    "externalRefs": [{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
                    }],
                });
                if let Some(sum) = &c.checksum {
                    p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sum}]);
                }
                packages.push(p);
            }
            relationships.push(json!({
                "spdxElementId": bid,
                "relationshipType": "STATIC_LINK",
                "relatedSpdxElement": cid,
            }));
        }
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{repository}-{version}"),
        "documentNamespace": format!("https://reemo-bundle.invalid/spdx/{name}/{identity}"),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: reemo-bundle-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// Pretty bytes of a document, with a final newline.
pub fn to_bytes(doc: &Value) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(doc).expect("json serialises");
    v.push(b'\n');
    v
}

/// The same content as a CycloneDX 1.5 JSON document, converted from one of our SPDX
/// documents: the image as `metadata.component`, every other package as a component (purl,
/// SHA-256, licence expression), CONTAINS and STATIC_LINK relationships as dependencies.
pub fn cyclonedx(spdx: &Value) -> Value {
    let empty = Vec::new();
    let packages = spdx["packages"].as_array().unwrap_or(&empty);
    let described = spdx["relationships"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .find(|r| r["relationshipType"] == "DESCRIBES")
        .map(|r| r["relatedSpdxElement"].clone())
        .unwrap_or(Value::Null);
    let component = |p: &Value, kind: &str| {
        let mut c = json!({
            "bom-ref": p["SPDXID"],
            "type": kind,
            "name": p["name"],
        });
        if let Some(v) = p["versionInfo"].as_str().filter(|v| *v != "NOASSERTION") {
            c["version"] = json!(v);
        }
        if let Some(purl) = p["externalRefs"][0]["referenceLocator"].as_str() {
            c["purl"] = json!(purl);
        }
        if let Some(h) = p["checksums"][0]["checksumValue"].as_str() {
            c["hashes"] = json!([{"alg": "SHA-256", "content": h}]);
        }
        if let Some(l) = p["licenseDeclared"]
            .as_str()
            .filter(|l| *l != "NOASSERTION")
        {
            c["licenses"] = json!([{"expression": l}]);
        }
        if let Some(s) = p["supplier"]
            .as_str()
            .and_then(|s| s.strip_prefix("Organization: "))
        {
            c["supplier"] = json!({"name": s});
        }
        c
    };
    let mut meta = Value::Null;
    let mut components = Vec::new();
    for p in packages {
        if p["SPDXID"] == described {
            meta = component(p, "container");
        } else if p["primaryPackagePurpose"] == "APPLICATION" {
            components.push(component(p, "application"));
        } else {
            components.push(component(p, "library"));
        }
    }
    let mut deps: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for r in spdx["relationships"].as_array().unwrap_or(&empty) {
        if r["relationshipType"] == "CONTAINS" || r["relationshipType"] == "STATIC_LINK" {
            if let Some(from) = r["spdxElementId"].as_str() {
                deps.entry(from.to_string())
                    .or_default()
                    .push(r["relatedSpdxElement"].clone());
            }
        }
    }
    let ns = crate::hash::sha256_hex(spdx["documentNamespace"].as_str().unwrap_or("").as_bytes());
    // A name-based UUID (version 5 layout) from the namespace, so the output is reproducible.
    let uuid = format!(
        "{}-{}-5{}-{:x}{}-{}",
        &ns[0..8],
        &ns[8..12],
        &ns[13..16],
        8 | (u8::from_str_radix(&ns[16..17], 16).unwrap_or(0) & 3),
        &ns[17..20],
        &ns[20..32]
    );
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{uuid}"),
        "version": 1,
        "metadata": {
            "timestamp": spdx["creationInfo"]["created"],
            "tools": [{"name": "reemo-bundle", "version": env!("CARGO_PKG_VERSION")}],
            "component": meta,
        },
        "components": components,
        "dependencies": deps
            .into_iter()
            .map(|(k, v)| json!({"ref": k, "dependsOn": v}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_checksums_and_relationships() {
        let mut lock = crate::debian::lock::tests_support::sample();
        lock.packages[0].version = "1:2.10-3+b1".into();
        let img = Image {
            name: "hello-image",
            repository: "reemo/hello",
            version: "1",
            identity: "ab",
            created: "1970-01-01T00:00:00Z",
        };
        let bin = Binary {
            path: "/usr/bin/relay".into(),
            package: "relay".into(),
            sha256: "3".repeat(64),
            crates: vec![Crate {
                name: "tokio".into(),
                version: "1.0.0".into(),
                source: Some("registry+https://github.com/rust-lang/crates.io-index".into()),
                checksum: Some("4".repeat(64)),
                license: Some("MIT".into()),
            }],
        };
        let d = document(&img, Some(&lock), std::slice::from_ref(&bin));
        let p = &d["packages"][1];
        assert_eq!(
            p["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/hello@1%3A2.10-3%2Bb1?arch=amd64"
        );
        assert_eq!(p["checksums"][0]["checksumValue"], "2".repeat(64));
        assert_eq!(
            d["relationships"][1]["relatedSpdxElement"],
            "SPDXRef-Package-deb-hello"
        );
        let t = &d["packages"][3];
        assert_eq!(
            t["externalRefs"][0]["referenceLocator"],
            "pkg:cargo/tokio@1.0.0"
        );
        assert_eq!(t["checksums"][0]["checksumValue"], "4".repeat(64));
        assert_eq!(d["relationships"][3]["relationshipType"], "STATIC_LINK");
        assert_eq!(to_bytes(&d), to_bytes(&document(&img, Some(&lock), &[bin])));
        let c = cyclonedx(&d);
        assert_eq!(c["metadata"]["component"]["name"], "reemo/hello");
        assert_eq!(
            c["components"][0]["purl"],
            "pkg:deb/debian/hello@1%3A2.10-3%2Bb1?arch=amd64"
        );
        assert_eq!(c["components"][1]["type"], "application");
        assert_eq!(c["components"][2]["licenses"][0]["expression"], "MIT");
        assert_eq!(c["dependencies"][0]["ref"], "SPDXRef-Binary-usr-bin-relay");
        let serial = c["serialNumber"].as_str().unwrap();
        assert_eq!(serial.len(), 45, "{serial}");
        assert_eq!(&serial[23..24], "5");
    }
}
