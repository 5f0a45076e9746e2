//! Mutual TLS from PEM files: the listener requires a client certificate issued by the
//! site CA, and calls to peers present the stand-in's own certificate and verify the peer
//! against the same CA by its service name. Errors name the variable and the file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ConfigError, TlsPaths};

/// The certificates, key and trust roots read from [`TlsPaths`].
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(var: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let what = |e: String| ConfigError(format!("{var}: {}: {e}", path.display()));
    std::fs::metadata(path).map_err(|e| what(format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| what(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(what("holds no certificate".into()));
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Read and check the PEM files.
    pub fn load(p: &TlsPaths) -> Result<TlsMaterial, ConfigError> {
        let chain = certs("STANDIN_TLS_CERT", &p.cert)?;
        std::fs::metadata(&p.key).map_err(|e| {
            ConfigError(format!(
                "STANDIN_TLS_KEY: {}: cannot read it ({e})",
                p.key.display()
            ))
        })?;
        let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|e| {
            ConfigError(format!(
                "STANDIN_TLS_KEY: {}: not a PEM private key ({e})",
                p.key.display()
            ))
        })?;
        let mut roots = RootCertStore::empty();
        for c in certs("STANDIN_TLS_CA", &p.ca)? {
            roots.add(c).map_err(|e| {
                ConfigError(format!(
                    "STANDIN_TLS_CA: {}: not a usable CA certificate ({e})",
                    p.ca.display()
                ))
            })?;
        }
        let m = TlsMaterial {
            chain,
            key,
            roots: Arc::new(roots),
        };
        // both configurations are built once here, so a key that does not match the
        // certificate is a configuration error at start, not a failed handshake later
        m.server().map_err(|e| {
            ConfigError(format!(
                "STANDIN_TLS_CERT/STANDIN_TLS_KEY: {} and {}: {e}",
                p.cert.display(),
                p.key.display()
            ))
        })?;
        m.client().map_err(|e| {
            ConfigError(format!(
                "STANDIN_TLS_CERT/STANDIN_TLS_KEY: {} and {}: {e}",
                p.cert.display(),
                p.key.display()
            ))
        })?;
        Ok(m)
    }

    /// The listener's configuration: our certificate, client certificates of the CA required.
    pub fn server(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The configuration for calls to peers: the CA as the only root, our certificate as
    /// the client's.
    pub fn client(&self) -> Result<Arc<ClientConfig>, rustls::Error> {
        let c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(d: &Path) -> TlsPaths {
        TlsPaths {
            cert: d.join("c.pem"),
            key: d.join("k.pem"),
            ca: d.join("ca.pem"),
        }
    }

    #[test]
    fn unreadable_or_bad_files_name_the_variable_and_file() {
        let d = tempfile::tempdir().unwrap();
        let p = paths(d.path());
        let e = TlsMaterial::load(&p).err().unwrap().0;
        assert!(
            e.starts_with(&format!(
                "STANDIN_TLS_CERT: {}: cannot read it",
                p.cert.display()
            )),
            "{e}"
        );
        std::fs::write(&p.cert, "not pem\n").unwrap();
        let e = TlsMaterial::load(&p).err().unwrap().0;
        assert_eq!(
            e,
            format!(
                "STANDIN_TLS_CERT: {}: holds no certificate",
                p.cert.display()
            )
        );
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&params, &ca);
        let leaf = rcgen::CertificateParams::new(vec!["api".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        std::fs::write(&p.cert, leaf.pem()).unwrap();
        let e = TlsMaterial::load(&p).err().unwrap().0;
        assert!(
            e.starts_with(&format!(
                "STANDIN_TLS_KEY: {}: cannot read it",
                p.key.display()
            )),
            "{e}"
        );
        std::fs::write(&p.key, "-----BEGIN NOTHING-----\n").unwrap();
        let e = TlsMaterial::load(&p).err().unwrap().0;
        assert!(e.contains("not a PEM private key"), "{e}");
        std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
        std::fs::write(&p.ca, ca_cert.pem()).unwrap();
        TlsMaterial::load(&p).unwrap();
        // a key of another certificate
        std::fs::write(&p.key, ca.serialize_pem()).unwrap();
        let e = TlsMaterial::load(&p).err().unwrap().0;
        assert!(e.starts_with("STANDIN_TLS_CERT/STANDIN_TLS_KEY: "), "{e}");
    }
}
