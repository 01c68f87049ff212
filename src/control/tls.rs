//! The gateway listener's TLS: certificate, key and optional client CA read from files,
//! built into a rustls server config, rebuilt by the reload task when the files change.
//! Each new connection takes the current config; established ones keep theirs.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::ListenerTls;

/// A built server config and the digest of the files it came from.
pub struct TlsMaterial {
    pub server: Arc<rustls::ServerConfig>,
    pub digest: [u8; 32],
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// SHA-256 over the files' bytes (and whether client certs are optional): equal digests
/// mean nothing to rebuild.
pub fn digest(cfg: &ListenerTls, optional_client_cert: bool) -> Result<[u8; 32], String> {
    let mut h = Sha256::new();
    h.update([u8::from(optional_client_cert)]);
    for f in files(cfg) {
        h.update(read(f)?);
        h.update([0]);
    }
    Ok(h.finalize().into())
}

fn files(cfg: &ListenerTls) -> impl Iterator<Item = &Path> {
    [
        Some(cfg.cert_file.as_path()),
        Some(cfg.key_file.as_path()),
        cfg.client_ca_file.as_deref(),
    ]
    .into_iter()
    .flatten()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Builds the server config. With `client_ca_file`, client certificates are verified
/// against it; `optional_client_cert` lets token callers connect without one (a presented
/// certificate must still verify).
pub fn build(cfg: &ListenerTls, optional_client_cert: bool) -> Result<TlsMaterial, String> {
    let digest = digest(cfg, optional_client_cert)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&cfg.cert_file)?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", cfg.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate",
            cfg.cert_file.display()
        ));
    }
    // The key file's error never quotes its content.
    let key = PrivateKeyDer::from_pem_slice(&read(&cfg.key_file)?)
        .map_err(|_| format!("{} holds no usable PEM private key", cfg.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no PEM certificate", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if optional_client_cert {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} / {}: {e}",
            cfg.cert_file.display(),
            cfg.key_file.display()
        )
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        server: Arc::new(server),
        digest,
    })
}

/// The names a verified client certificate carries: URI and DNS SANs, then the subject's
/// common names. Parsed once per connection.
pub fn peer_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u) => names.push((*u).to_owned()),
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    for cn in parsed.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    #[test]
    fn uri_and_dns_sans_and_the_cn_are_read() {
        let ca = Ca::new("clients").unwrap();
        let leaf = ca
            .leaf_with(&["tool.internal"], |p| {
                p.subject_alt_names.push(rcgen::SanType::URI(
                    rcgen::string::Ia5String::try_from("spiffe://corp/billing").unwrap(),
                ));
            })
            .unwrap();
        let names = peer_names(&leaf.chain[0]);
        assert_eq!(
            names,
            [
                "tool.internal",
                "spiffe://corp/billing",
                "sidekey test server"
            ]
        );
        assert!(peer_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }
}
