//! SPDX 2.3 JSON documents (one per image, under `sbom/` in the bundle): the image as the
//! described package, and each locked Debian package as a `pkg:deb/debian/…` purl with the
//! `.deb` sha256. Deterministic: the creation time is SOURCE_DATE_EPOCH and the namespace
//! is derived from the image's content.

use serde_json::{json, Value};

use super::lock::Lock;

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

/// The SPDX document of image `name` (`repository`, `version`), built at `created`
/// (RFC 3339), with the packages of `lock` if it has one. `identity` makes the namespace
/// unique per image content.
pub fn document(
    name: &str,
    repository: &str,
    version: &str,
    identity: &str,
    created: &str,
    lock: Option<&Lock>,
) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_checksums_and_relationships() {
        let mut lock = super::super::lock::tests_support::sample();
        lock.packages[0].version = "1:2.10-3+b1".into();
        let d = document(
            "hello-image",
            "reemo/hello",
            "1",
            "ab",
            "1970-01-01T00:00:00Z",
            Some(&lock),
        );
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
        assert_eq!(
            to_bytes(&d),
            to_bytes(&document(
                "hello-image",
                "reemo/hello",
                "1",
                "ab",
                "1970-01-01T00:00:00Z",
                Some(&lock)
            ))
        );
    }
}
