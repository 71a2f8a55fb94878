//! TLS termination and (optional) mutual TLS for the broker, plus the client side used by the
//! broker's own HTTPS clients and by tests.
//!
//! Everything is pinned to rustls' `ring` provider explicitly rather than the process-wide
//! default, so that no other crate in the binary can change which crypto we negotiate with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Where the server's certificate and key live, and how clients are authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key matching `cert`.
    pub key: PathBuf,
    /// PEM: CA certificates that client certificates must chain to. Enables mTLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no certificate. Without it, clients may
    /// connect anonymously but a presented certificate must still verify.
    pub require_client_cert: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
///
/// Errors name the offending file and what was wrong with it.
pub fn server_config(s: &TlsSettings) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;

    let builder = match (&s.client_ca, s.require_client_cert) {
        (None, true) => bail!(
            "TLS: a client certificate is required but no client CA is configured to verify it against"
        ),
        (None, false) => builder.with_no_client_auth(),
        (Some(ca), require) => {
            let roots = load_roots(ca)?;
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !require {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .with_context(|| format!("{}: cannot build client certificate verifier", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let certified = load_certified_key(&s.cert, &s.key, &provider)?;
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who is on the other end of an mTLS connection.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerIdentity {
    /// Agent name: the first URI SAN if any, else the subject CN, else None.
    pub name: Option<String>,
    /// RFC 8705 x5t#S256: base64url (no pad) SHA-256 of the leaf certificate DER.
    pub x5t_s256: String,
}

/// Identity from the verified peer chain of a finished handshake
/// (`conn.peer_certificates()`); `None` when the client presented no certificate.
///
/// The chain must already have been verified (rustls does this before the handshake
/// completes); this only reads the leaf.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
    let leaf = certs?.first()?;
    Some(PeerIdentity {
        name: leaf_name(leaf),
        x5t_s256: x5t_s256(leaf),
    })
}

fn leaf_name(der: &[u8]) -> Option<String> {
    // A leaf that verified but that x509-parser cannot read still has a usable x5t binding,
    // so a parse failure only loses the name.
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    // A malformed SAN extension must not silently fall back to the CN: that would let the
    // weaker, unstructured name stand in for the one the issuer meant.
    let san = cert.subject_alternative_name().ok()?;
    if let Some(san) = san {
        let uri = san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
        if let Some(uri) = uri {
            return Some(uri.to_owned());
        }
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// RFC 8705 certificate thumbprint: base64url without padding of SHA-256(DER).
pub fn x5t_s256(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// rustls client configuration for the broker's own HTTPS clients and for tests.
///
/// `ca`: PEM file of the CAs to trust for server certificates. `None` means the platform's
/// trust store (via hyper-rustls' native-roots support, already a dependency), which fails
/// if the platform has none. `identity`: certificate chain and key PEM files presented for
/// mTLS.
///
/// ALPN is left empty on purpose: hyper-rustls' connector builder insists on setting it.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match ca {
        Some(ca) => builder.with_root_certificates(load_roots(ca)?),
        None => {
            use hyper_rustls::ConfigBuilderExt as _;
            builder
                .with_native_roots()
                .context("loading the platform's trusted CA certificates")?
        }
    };
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certified = load_certified_key(cert, key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
    };
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{}: no certificates in file (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        );
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).with_context(|| {
            format!(
                "{}: certificate #{} is not a usable CA certificate",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(roots)
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "{}: no private key in file (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")",
            key.display()
        ),
        e => anyhow::anyhow!("{}: private key unreadable: {e}", key.display()),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow::anyhow!("{}: private key unusable: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // rustls reports Unknown when it cannot extract the public key to compare; the
        // handshake signature would still fail loudly, so this is not worth refusing.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => bail!(
            "{}: private key does not match the certificate in {}: {e}",
            key.display(),
            cert.display()
        ),
    }
}

#[cfg(test)]
mod tests;
