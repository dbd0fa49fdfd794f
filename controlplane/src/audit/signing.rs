//! The Ed25519 key that signs audit checkpoints and exports (ring, the
//! workspace's one crypto library). It lives in the data directory
//! (`DATA_DIR/audit-signing.key`, PKCS#8 PEM, mode 0600), never in the
//! database: whoever can rewrite the database cannot also re-sign it.
//!
//! The key is created on first start. Its public half is written beside it
//! (`audit-signing.pub`, one line of base64) so it can be handed to auditors
//! and pinned with `stewardctl audit verify --public-key`. Several replicas
//! sharing one database should share the key file too (like the CA);
//! checkpoints name the key that signed them, so a replica with its own key
//! is visible in `audit verify` instead of silently breaking it.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// An Ed25519 public key.
pub type PublicKey = [u8; 32];

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "audit-signing.key";
/// File name of its public half.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";

const PEM_LABEL: &str = "PRIVATE KEY";

/// Why the signing key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("audit signing key {path}: {message}")]
    File { path: String, message: String },
    #[error("audit signing key {path}: not an Ed25519 PKCS#8 key ({message})")]
    Invalid { path: String, message: String },
    #[error("cannot generate an audit signing key")]
    Generate,
}

/// The signing half; cheap to share behind an `Arc`.
pub struct Signer {
    key: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &key_id(&self.public)).finish()
    }
}

impl Signer {
    /// A new random key, in memory only.
    pub fn generate() -> Result<Signer, KeyError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Signer::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Signer, ring::error::KeyRejected> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)?;
        let mut public = [0u8; 32];
        public.copy_from_slice(key.public_key().as_ref());
        Ok(Signer { key, public })
    }

    /// Loads the key at `path`, or creates it (0600) when there is none, and
    /// (re)writes the public key beside it. A key readable by others is
    /// refused: it must be `chmod 600`.
    pub fn load_or_create(path: &Path) -> Result<Signer, KeyError> {
        let file_err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
            steward_shared::pki::create_private_file(path, &pem_encode(pkcs8.as_ref())).map_err(|e| match e {
                steward_shared::pki::PkiError::File { message, .. } => file_err(message),
                other => file_err(other.to_string()),
            })?;
            tracing::info!(path = %path.display(), "created the audit signing key");
        }
        let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(file_err(format!(
                "mode {:o} lets others read it; run chmod 600 {}",
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
        let pem = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let invalid = |message: String| KeyError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let der = pem_decode(&pem).ok_or_else(|| invalid("no PEM \"PRIVATE KEY\" block".into()))?;
        let signer = Signer::from_pkcs8(&der).map_err(|e| invalid(e.to_string()))?;
        let public_path = public_key_path(path);
        let line = format!("{}\n", encode_public_key(&signer.public));
        if std::fs::read_to_string(&public_path).ok().as_deref() != Some(line.as_str()) {
            steward_shared::pki::write_file_mode(&public_path, &line, 0o644).map_err(|e| KeyError::File {
                path: public_path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(signer)
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// A 64-byte Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }
}

/// `audit-signing.pub` beside `audit-signing.key`.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    key_path.with_file_name(PUBLIC_KEY_FILE)
}

/// Whether `signature` is `public_key`'s signature of `message`.
pub fn verify(public_key: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// A short, stable name of a key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &PublicKey) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Base64 of a public key (the form used in files, exports and flags).
pub fn encode_public_key(public_key: &PublicKey) -> String {
    STANDARD.encode(public_key)
}

/// A public key from base64 (an `ed25519:` prefix is allowed).
pub fn parse_public_key(s: &str) -> Option<PublicKey> {
    let s = s.trim();
    let s = s.strip_prefix("ed25519:").unwrap_or(s);
    STANDARD.decode(s).ok()?.try_into().ok()
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].split_whitespace().collect();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KEY_FILE);
        let a = Signer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Signer::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let public = std::fs::read_to_string(public_key_path(&path)).unwrap();
        assert_eq!(parse_public_key(&public), Some(a.public_key()));

        let sig = a.sign(b"message");
        assert!(verify(&b.public_key(), b"message", &sig));
        assert!(!verify(&b.public_key(), b"messagf", &sig));
        let other = Signer::generate().unwrap();
        assert!(!verify(&other.public_key(), b"message", &sig));
        assert_eq!(key_id(&a.public_key()).len(), 16);
    }

    #[test]
    fn unusable_keys_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Signer::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains(KEY_FILE) && e.contains("PRIVATE KEY"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Signer::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert_eq!(parse_public_key("ed25519:AAAA"), None);
    }
}
