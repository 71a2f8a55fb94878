//! Ed25519 keys as PEM files: PKCS#8 private keys and SPKI public keys, the same files
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` make.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The OS error is part of the message and deliberately not the `source`: callers print
    /// the whole chain (`{:#}`), which would say it twice.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not an Ed25519 {what} PEM ({detail})")]
    Format {
        path: String,
        what: &'static str,
        detail: String,
    },
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = read(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
        path: path.display().to_string(),
        what: "PKCS#8 private key",
        detail: e.to_string(),
    })
}

/// Accepts an SPKI public key; a private key file is refused so that a verifier's config
/// never needs to hold signing material.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let pem = read(path)?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Format {
        path: path.display().to_string(),
        what: "SPKI public key",
        detail: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|error| KeyError::Io {
        path: path.display().to_string(),
        error,
    })
}

/// RFC 7638 JWK thumbprint: members in lexicographic order, no whitespace.
pub fn key_id(key: &VerifyingKey) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("the operating system's random source failed");
    SigningKey::from_bytes(&seed)
}

/// Writes `PREFIX.key` (mode 0600) and `PREFIX.pub`, each through a temporary file and a
/// rename, so a crash leaves either the old file or the new one, never half a key.
pub fn write_keypair(
    prefix: &Path,
    key: &SigningKey,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    // PKCS#8 v1 (RFC 8410, no embedded public key), exactly what openssl writes: OpenSSL 3.0
    // and Python's cryptography refuse the v2 form that also carries the public key.
    let private = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| anyhow::anyhow!("encoding private key: {e}"))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
    let key_path = with_suffix(prefix, "key");
    let pub_path = with_suffix(prefix, "pub");
    crate::fsutil::write_atomic(&key_path, private.as_bytes(), 0o600)?;
    crate::fsutil::write_atomic(&pub_path, public.as_bytes(), 0o644)?;
    Ok((key_path, pub_path))
}

fn with_suffix(prefix: &Path, ext: &str) -> std::path::PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        // RFC 8037 appendix A.3: the thumbprint of the A.1 key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        assert_eq!(key_id(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn keypair_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate();
        let (k, p) = write_keypair(&dir.path().join("issuer"), &key).unwrap();
        assert_eq!(load_signing_key(&k).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(load_verifying_key(&p).unwrap(), key.verifying_key());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A private key is not a public key.
        assert!(load_verifying_key(&k).is_err());
        assert!(load_signing_key(&p).is_err());
    }

    #[test]
    fn a_missing_key_file_names_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let e = anyhow::Error::new(load_signing_key(&missing).unwrap_err())
            .context("audit.signing_key");
        let text = format!("{e:#}");
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(text.contains("nope.key"), "{text}");
    }
}
