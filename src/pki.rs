//! Throwaway certificates for `sidekey demo` and the tests: a CA minted at start and leaf
//! certificates it signs. Nothing here is used on the proxy's request path.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A leaf certificate chain and its private key, ready for a rustls server.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The same certificate and key as PEM (for files a listener reads).
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (what a client trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate whose only name is the URI SAN `uri` (a SPIFFE id, say).
    pub fn client(&self, uri: &str) -> Result<Leaf, rcgen::Error> {
        let uri = rcgen::string::Ia5String::try_from(uri)?;
        self.leaf_with(&[], |p| {
            p.subject_alt_names.push(rcgen::SanType::URI(uri));
            p.distinguished_name = rcgen::DistinguishedName::new();
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        self.leaf_with(names, |_| {})
    }

    /// A server certificate with its parameters adjusted first (validity, say).
    pub fn leaf_with(
        &self,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Leaf, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sidekey test server");
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
