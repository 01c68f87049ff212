//! The forward proxy's interception CA and the leaves it signs.
//!
//! A CA is a per-install P-256 key and certificate (`sidekey ca init`), name-constrained to
//! the configured API hosts so a stolen key cannot sign for other sites, or an ephemeral one
//! that lives in memory only (`sidekey exec`). Leaves are minted per configured host, each
//! with a fresh P-256 key, a SAN of exactly that host and a short validity (never past the
//! CA's); the CA key never leaves this module and is never printed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::config::CaFiles;

/// How long a leaf is valid (re-minted at two thirds of it).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Clock skew allowance on `notBefore`.
const SKEW: Duration = Duration::from_secs(300);

/// A loaded (or ephemeral) interception CA.
pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    /// Unix seconds.
    pub not_after: u64,
    /// Short SHA-256 of the certificate (DER), as shown in logs and `sidekey check`.
    pub fingerprint: String,
    /// SHA-256 over the files it came from (`None`: ephemeral).
    pub digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterceptCa")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// CA parameters: P-256, CA:TRUE pathlen 0, name-constrained to `hosts` (none: unconstrained).
fn ca_params(hosts: &[String], validity: Duration) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "sidekey interception CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sidekey (local)");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = offset(now - SKEW);
    params.not_after = offset(now + validity);
    if !hosts.is_empty() {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: hosts
                .iter()
                .map(|h| GeneralSubtree::DnsName(h.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    Ok(params)
}

impl InterceptCa {
    /// A new CA: the object and its key as PEM (for `ca init` to write, 0600).
    pub fn generate(hosts: &[String], validity: Duration) -> Result<(Self, String), String> {
        let params = ca_params(hosts, validity).map_err(|e| e.to_string())?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let key_pem = key.serialize_pem();
        let ca = Self {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            fingerprint: crate::credential::fingerprint(cert.der()),
            not_after: unix(SystemTime::now() + validity),
            issuer: Issuer::new(params, key),
            digest: None,
        };
        Ok((ca, key_pem))
    }

    /// An in-memory CA for one `sidekey exec` (a day; gone with the process).
    pub fn ephemeral(hosts: &[String]) -> Result<Self, String> {
        Self::generate(hosts, Duration::from_secs(24 * 3600)).map(|(ca, _)| ca)
    }

    /// Loads `files`. The key must be a regular file (not a symlink) that only its owner can
    /// read; the certificate must be a currently valid CA certificate.
    pub fn load(files: &CaFiles) -> Result<Self, String> {
        check_key_file(&files.key)?;
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        let mut h = Sha256::new();
        h.update(cert_pem.as_bytes());
        h.update([0]);
        h.update(key_pem.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{}: not a PEM private key ({e})", files.key.display()))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("{}: not a PEM certificate ({e})", files.cert.display()))?;
        let cert: CertificateDer<'static> = der;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        if !x509.is_ca() {
            return Err(format!("{}: not a CA certificate", files.cert.display()));
        }
        if *x509.public_key().subject_public_key.data != *key.public_key_raw() {
            return Err(format!(
                "{} does not hold the key of {}",
                files.key.display(),
                files.cert.display()
            ));
        }
        let not_after = u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0);
        let not_before = u64::try_from(x509.validity().not_before.timestamp()).unwrap_or(0);
        let now = unix(SystemTime::now());
        if now >= not_after || now < not_before {
            return Err(format!(
                "{}: the CA certificate is not valid now (expired or not yet valid): re-issue it with `sidekey ca init`",
                files.cert.display()
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| e.to_string())?;
        Ok(Self {
            fingerprint: crate::credential::fingerprint(&cert),
            cert_pem: cert_pem.clone(),
            cert,
            not_after,
            issuer,
            digest: Some(digest),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server config presenting a fresh leaf for exactly `host` (chain: leaf, CA),
    /// ALPN h2 and http/1.1.
    pub fn mint(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = offset(now - SKEW);
        let end = (now + LEAF_VALIDITY).min(UNIX_EPOCH + Duration::from_secs(self.not_after));
        params.not_after = offset(end);
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        // A serial unique to this leaf: its fresh public key's digest, positive, 128 bits.
        let mut serial: Vec<u8> = Sha256::digest(key.public_key_raw())
            .iter()
            .take(16)
            .copied()
            .collect();
        if let Some(first) = serial.first_mut() {
            *first &= 0x7f;
        }
        params.serial_number = Some(serial.into());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let chain = vec![cert.der().clone(), self.cert.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(intercept_provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| e.to_string())?;
        // Our order, not the client's: OpenSSL clients list AES-256-GCM-SHA384 first, whose
        // SHA-384 transcript and key schedule run without SHA extensions on most CPUs.
        tls.ignore_client_order = true;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        metrics::counter!(crate::telemetry::LEAF_CERTS_MINTED_TOTAL).increment(1);
        Ok(Arc::new(tls))
    }

    /// The hosts this CA's name constraints permit (`None`: unconstrained).
    pub fn permitted(&self) -> Option<Vec<String>> {
        let (_, x509) = x509_parser::parse_x509_certificate(&self.cert).ok()?;
        let nc = x509.name_constraints().ok().flatten()?;
        let subtrees = nc.value.permitted_subtrees.as_ref()?;
        Some(
            subtrees
                .iter()
                .filter_map(|s| match &s.base {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// The intercepting side's suites: ring's, with the SHA-256 ones first (AES-128-GCM, then
/// ChaCha20-Poly1305, then AES-256-GCM-SHA384), for TLS 1.3 and 1.2 alike. AES-128-GCM is
/// TLS 1.3's mandatory suite and matches the P-256 leaf's 128-bit strength; a new tunnel's
/// handshake then hashes with SHA-256, which CPUs accelerate (SHA-384 they mostly do not).
fn intercept_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::ring::default_provider();
            provider
                .cipher_suites
                .sort_by_key(|s| match s.suite().as_str().unwrap_or_default() {
                    n if n.contains("AES_128_GCM") => 0,
                    n if n.contains("CHACHA20") => 1,
                    _ => 2,
                });
            Arc::new(provider)
        })
        .clone()
}

/// Whether a name-constrained CA may sign for `host` (RFC 5280 DNS subtree: the name itself
/// or under it).
pub fn permits(permitted: &[String], host: &str) -> bool {
    permitted.iter().any(|p| {
        let p = p.trim_start_matches('.');
        host == p || host.ends_with(&format!(".{p}"))
    })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The CA key: a regular file readable by its owner only. The one symlink accepted is a
/// Kubernetes Secret volume's own layout (so the whole volume can be mounted and a new CA
/// arrives as a `..data` swap; a `subPath` mount never sees an update): `NAME -> ..data/NAME`
/// in the same directory, `..data -> ..<timestamp>` beside it, and there a regular file.
fn check_key_file(path: &Path) -> Result<(), String> {
    let mut meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        meta = secret_volume_target(path).map_err(|why| {
            format!(
                "{} is a symlink ({why}): the CA key must be a regular file, or a Secret volume's own `..data` link",
                path.display()
            )
        })?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by group or others (mode {mode:o}): chmod 600 it",
                path.display()
            ));
        }
    }
    Ok(())
}

/// The regular file behind a Secret volume's `NAME -> ..data/NAME` link (see
/// [`check_key_file`]); anything else is refused, saying why.
fn secret_volume_target(path: &Path) -> Result<std::fs::Metadata, &'static str> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("no directory");
    };
    let link = std::fs::read_link(path).map_err(|_| "unreadable link")?;
    if link != Path::new("..data").join(name) {
        return Err("not a link to ..data/ beside it");
    }
    let data = std::fs::read_link(dir.join("..data")).map_err(|_| "no ..data link beside it")?;
    let mut parts = data.components();
    let one_dot_dir = match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(c)), None) => c.to_string_lossy().starts_with(".."),
        _ => false,
    };
    if !one_dot_dir {
        return Err("..data does not name a ..<timestamp> directory beside it");
    }
    let target = dir.join(&data).join(name);
    let meta = std::fs::symlink_metadata(&target).map_err(|_| "the target is missing")?;
    if !meta.file_type().is_file() {
        return Err("the target is not a regular file");
    }
    Ok(meta)
}

/// `sidekey ca init`: writes `ca.crt` (0644) and `ca.key` (0600, created new) into `dir`;
/// refuses to overwrite either.
pub fn init(dir: &Path, hosts: &[String], validity: Duration) -> Result<InterceptCa, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    for p in [&cert_path, &key_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(format!("{} exists: refusing to overwrite it", p.display()));
        }
    }
    let (ca, key_pem) = InterceptCa::generate(hosts, validity)?;
    create_new(&key_path, 0o600, key_pem.as_bytes())?;
    create_new(&cert_path, 0o644, ca.cert_pem.as_bytes())?;
    Ok(ca)
}

/// Writes a file that must not exist yet, with `mode` from the start (never a window in
/// which a key file is readable by others).
fn create_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The system trust bundle followed by `ca_pem`, for variables that replace the trust store
/// (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, ...). Without a system bundle, the CA alone.
pub fn bundle(ca_pem: &str) -> String {
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(std::path::PathBuf::from),
        )
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut out = system;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(ca_pem);
    out
}

#[cfg(test)]
mod secret_volume_tests {
    use super::*;

    /// Writes `files` as kubelet does into `dir`: a `..<ts>` directory, `..data` pointing at
    /// it, and `NAME -> ..data/NAME` links (made once).
    fn kubelet_write(dir: &Path, ts: &str, files: &[(&str, &str)]) {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let versioned = dir.join(ts);
        std::fs::create_dir_all(&versioned).unwrap();
        for (name, text) in files {
            let p = versioned.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).unwrap();
            }
        }
        // The atomic swap: a new link renamed over `..data`.
        let tmp = dir.join("..data_tmp");
        symlink(ts, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    #[test]
    fn a_secret_volume_ca_loads_and_a_kubelet_swap_is_seen() {
        let base = std::env::temp_dir().join(format!("sidekey-ca-vol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (made, dir) = (base.join("made"), base.join("vol"));
        std::fs::create_dir_all(&dir).unwrap();
        let read = |sub: &str| {
            let d = made.join(sub);
            init(
                &d,
                &["api.example.test".to_owned()],
                Duration::from_secs(3600),
            )
            .unwrap();
            (
                std::fs::read_to_string(d.join("ca.crt")).unwrap(),
                std::fs::read_to_string(d.join("ca.key")).unwrap(),
            )
        };
        let files = CaFiles {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        let (c1, k1) = read("one");
        kubelet_write(
            &dir,
            "..2026_12_07_09_00_00.1",
            &[("ca.crt", &c1), ("ca.key", &k1)],
        );
        let first = InterceptCa::load(&files).unwrap();
        let (c2, k2) = read("two");
        kubelet_write(
            &dir,
            "..2026_12_07_09_05_00.2",
            &[("ca.crt", &c2), ("ca.key", &k2)],
        );
        let second = InterceptCa::load(&files).unwrap();
        assert_ne!(first.fingerprint, second.fingerprint, "the swap is seen");

        // Other symlinks stay refused: elsewhere, or a target readable by others.
        let stray = base.join("stray.key");
        std::fs::write(&stray, &k1).unwrap();
        let elsewhere = dir.join("other.key");
        std::os::unix::fs::symlink(&stray, &elsewhere).unwrap();
        let e = check_key_file(&elsewhere).unwrap_err();
        assert!(e.contains("not a link to ..data/"), "{e}");
        use std::os::unix::fs::PermissionsExt as _;
        let current = dir.join("..2026_12_07_09_05_00.2").join("ca.key");
        std::fs::set_permissions(&current, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_key_file(&files.key).unwrap_err();
        assert!(e.contains("readable by group or others"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
