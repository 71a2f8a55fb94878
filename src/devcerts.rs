//! `seb dev-certs`: a throwaway CA, a localhost server certificate and one agent client
//! certificate, so that TLS and mTLS can be tried locally without an external PKI.
//!
//! Agent names map onto the certificate like this (`agent:demo` as the example):
//! - subject CN: the name unchanged, `agent:demo`;
//! - URI SAN: `spiffe://seb.local/` followed by the name with each `:` turned into `/`,
//!   `spiffe://seb.local/agent/demo`. SPIFFE IDs only allow `[A-Za-z0-9._-]` in path
//!   segments, so names are restricted to those characters plus `:`, and may not have empty
//!   segments; anything else is refused rather than escaped, so the mapping stays reversible.
//!
//! [`crate::tls::peer_identity`] reports the URI SAN (not the CN) as the agent name.
//!
//! These are development credentials: keys are generated fresh on every run, existing files in
//! the directory are replaced, and nothing here is meant for production trust.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use sha2::{Digest, Sha256};

use crate::fsutil::write_atomic;

/// Trust domain of the agent URI SANs.
pub const SPIFFE_TRUST_DOMAIN: &str = "seb.local";

const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Backdating absorbs small clock differences between this machine and the peers checking
/// the certificates (containers, VMs).
const BACKDATE: Duration = Duration::from_secs(5 * 60);

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Paths of everything [`write_dev_certs`] wrote, plus the agent certificate's thumbprint.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub dir: PathBuf,
    /// `ca.pem`
    pub ca: PathBuf,
    /// `server.pem`
    pub server_cert: PathBuf,
    /// `server.key`
    pub server_key: PathBuf,
    /// `agent.pem`
    pub agent_cert: PathBuf,
    /// `agent.key`
    pub agent_key: PathBuf,
    /// x5t#S256 of `agent.pem`, also written (with a trailing newline) to `agent.x5t`.
    pub agent_x5t: String,
}

/// The URI SAN that [`write_dev_certs`] puts in the agent certificate for `agent_name`.
pub fn agent_spiffe_uri(agent_name: &str) -> anyhow::Result<String> {
    if agent_name.is_empty() {
        bail!("agent name is empty");
    }
    let mut path = String::with_capacity(agent_name.len());
    for (i, segment) in agent_name.split(':').enumerate() {
        if segment.is_empty() {
            bail!("agent name {agent_name:?} has an empty ':'-separated segment");
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            bail!(
                "agent name {agent_name:?} contains {c:?}; only ASCII letters, digits, '.', '_', '-' and ':' are allowed"
            );
        }
        // "." and ".." would be path traversal in a URI and are forbidden by SPIFFE.
        if segment == "." || segment == ".." {
            bail!("agent name {agent_name:?} has a {segment:?} segment");
        }
        if i > 0 {
            path.push('/');
        }
        path.push_str(segment);
    }
    Ok(format!("spiffe://{SPIFFE_TRUST_DOMAIN}/{path}"))
}

/// Creates `dir` (mode 0700) if needed and writes `ca.pem`, `ca.key`, `server.pem`,
/// `server.key`, `agent.pem`, `agent.key` and `agent.x5t` into it. Keys are ECDSA P-256,
/// written as PKCS#8 PEM with mode 0600.
/// `seb dev-certs`: writes them and prints the agent certificate's thumbprint (moved out of
/// main.rs, which is at its line limit).
pub fn run_cli(out: &Path, agent: &str) -> anyhow::Result<()> {
    let c = write_dev_certs(out, agent)?;
    eprintln!(
        "wrote CA, server and agent certificates to {}",
        c.dir.display()
    );
    println!("{}", c.agent_x5t);
    Ok(())
}

pub fn write_dev_certs(dir: &Path, agent_name: &str) -> anyhow::Result<DevCerts> {
    // Validate before touching the filesystem.
    let agent_uri = agent_spiffe_uri(agent_name)?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;

    let now = SystemTime::now();
    let not_before = now - BACKDATE;

    let ca_key = KeyPair::generate().context("generating CA key")?;
    let ca_cert = ca_params(&ca_key, not_before, now + CA_VALIDITY)
        .self_signed(&ca_key)
        .context("signing CA certificate")?;

    let server_key = KeyPair::generate().context("generating server key")?;
    let server_cert = server_params(not_before, now + LEAF_VALIDITY)?
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("signing server certificate")?;

    let agent_key = KeyPair::generate().context("generating agent key")?;
    let agent_cert = agent_params(agent_name, &agent_uri, not_before, now + LEAF_VALIDITY)?
        .signed_by(&agent_key, &ca_cert, &ca_key)
        .context("signing agent certificate")?;
    let agent_x5t = crate::tls::x5t_s256(agent_cert.der());

    let out = DevCerts {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        agent_cert: dir.join("agent.pem"),
        agent_key: dir.join("agent.key"),
        agent_x5t,
    };
    // Keys first: a crash midway then leaves no certificate whose key is missing.
    write_atomic(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        KEY_MODE,
    )?;
    write_atomic(&out.ca, ca_cert.pem().as_bytes(), CERT_MODE)?;
    write_pair(&out.server_cert, &out.server_key, &server_cert, &server_key)?;
    write_pair(&out.agent_cert, &out.agent_key, &agent_cert, &agent_key)?;
    write_atomic(
        &dir.join("agent.x5t"),
        format!("{}\n", out.agent_x5t).as_bytes(),
        CERT_MODE,
    )?;
    Ok(out)
}

fn write_pair(
    cert_path: &Path,
    key_path: &Path,
    cert: &Certificate,
    key: &KeyPair,
) -> anyhow::Result<()> {
    write_atomic(key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_atomic(cert_path, cert.pem().as_bytes(), CERT_MODE)
}

fn base_params(cn: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "seb dev-certs");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
}

fn ca_params(key: &KeyPair, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    // Each run makes a new CA; a name of its own keeps verifiers from mistaking one dev CA
    // for another (same name, wrong key shows up as a confusing "bad signature") and lets
    // people tell which ca.pem a certificate came from.
    let id = Sha256::digest(key.public_key_der());
    let cn = format!(
        "seb dev CA {:02x}{:02x}{:02x}{:02x}",
        id[0], id[1], id[2], id[3]
    );
    let mut params = base_params(&cn, not_before, not_after);
    // Path length 0: this CA signs leaves only, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Settings shared by both leaves. The explicit `cA=false`, subject key identifier and
/// authority key identifier are what OpenSSL's strict mode (Python 3.13's default context)
/// insists on.
fn leaf_params(cn: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = base_params(cn, not_before, not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

fn server_params(
    not_before: SystemTime,
    not_after: SystemTime,
) -> anyhow::Result<CertificateParams> {
    let mut params = leaf_params("localhost", not_before, not_after);
    params.subject_alt_names = vec![
        SanType::DnsName(Ia5String::try_from("localhost").context("server SAN")?),
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn agent_params(
    agent_name: &str,
    agent_uri: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> anyhow::Result<CertificateParams> {
    let mut params = leaf_params(agent_name, not_before, not_after);
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(agent_uri).with_context(|| format!("agent URI SAN {agent_uri:?}"))?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    #[test]
    fn agent_uri_mapping() {
        assert_eq!(
            agent_spiffe_uri("agent:demo").unwrap(),
            "spiffe://seb.local/agent/demo"
        );
        assert_eq!(
            agent_spiffe_uri("ci-runner_7.x").unwrap(),
            "spiffe://seb.local/ci-runner_7.x"
        );
        for bad in [
            "", "agent:", ":x", "a::b", "a b", "a/b", "a%2f", "a:..", "é",
        ] {
            assert!(agent_spiffe_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn writes_files_with_modes_and_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/certs");
        let dc = write_dev_certs(&dir, "agent:demo").unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for key in ["ca.key", "server.key", "agent.key"] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        for cert in ["ca.pem", "server.pem", "agent.pem", "agent.x5t"] {
            assert_eq!(mode(cert), 0o644, "{cert}");
        }
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let x5t_file = std::fs::read_to_string(dir.join("agent.x5t")).unwrap();
        assert_eq!(x5t_file.trim_end(), dc.agent_x5t);
        assert_eq!(dc.agent_x5t.len(), 43);

        let pem = std::fs::read(&dc.agent_cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "agent:demo");
        let validity = cert.validity().time_to_expiration().unwrap();
        assert!(validity.whole_days() >= 89 && validity.whole_days() <= 90);
        let id = crate::tls::peer_identity(Some(&[rustls_pki_types::CertificateDer::from(
            pem.contents.clone(),
        )]))
        .unwrap();
        assert_eq!(id.name.as_deref(), Some("spiffe://seb.local/agent/demo"));
        assert_eq!(id.x5t_s256, dc.agent_x5t);
    }

    #[test]
    fn bad_agent_name_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        assert!(write_dev_certs(&dir, "no spaces").is_err());
        assert!(!dir.exists());
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("--version").output().is_ok()
            || Command::new(tool).arg("version").output().is_ok()
    }

    /// `-x509_strict` is the check Python 3.13's default SSL context applies, so this covers
    /// that client too.
    #[test]
    fn openssl_verifies_leaves() {
        if !have("openssl") {
            eprintln!("note: openssl not on PATH, skipping openssl_verifies_leaves");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
        for (leaf, purpose) in [
            (&dc.server_cert, "sslserver"),
            (&dc.agent_cert, "sslclient"),
        ] {
            let out = Command::new("openssl")
                .arg("verify")
                .arg("-x509_strict")
                .args(["-purpose", purpose])
                .arg("-CAfile")
                .arg(&dc.ca)
                .arg(leaf)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl verify {}: {}{}",
                leaf.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The keys must load and match their certificates in OpenSSL too.
        for (cert, key) in [
            (&dc.server_cert, &dc.server_key),
            (&dc.agent_cert, &dc.agent_key),
        ] {
            let pubkey = |args: &[&std::ffi::OsStr]| {
                let out = Command::new("openssl").args(args).output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            };
            let from_cert = pubkey(&[
                "x509".as_ref(),
                "-noout".as_ref(),
                "-pubkey".as_ref(),
                "-in".as_ref(),
                cert.as_os_str(),
            ]);
            let from_key = pubkey(&[
                "pkey".as_ref(),
                "-pubout".as_ref(),
                "-in".as_ref(),
                key.as_os_str(),
            ]);
            assert_eq!(from_cert, from_key, "{}", key.display());
        }
    }
}
