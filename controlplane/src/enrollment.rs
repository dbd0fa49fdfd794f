//! Enrollment tokens: `stwe_<id>_<secret>_<ca-fingerprint>`. The id finds the
//! stored token, the secret is compared (hashed, constant time) and the CA
//! fingerprint (SHA-256 of the CA certificate, hex) lets a new agent pin the
//! control plane before it trusts anything the network tells it. The token is
//! one string an operator can paste; only the secret is a secret.
use rand::Rng;

const PREFIX: &str = "stwe_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The parts of an enrollment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

impl EnrollmentToken {
    /// A fresh token for the CA with `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Self {
        let mut rng = rand::rng();
        let pick = |n: usize, alphabet: &[u8], rng: &mut rand::rngs::ThreadRng| -> String {
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect()
        };
        EnrollmentToken {
            id: pick(ID_LEN, b"abcdefghijklmnopqrstuvwxyz0123456789", &mut rng),
            secret: pick(SECRET_LEN, ALNUM, &mut rng),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    /// Parses `stwe_<id>_<secret>_<fingerprint>`; None when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().strip_prefix(PREFIX)?.split('_');
        let (id, secret, fp) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && secret.len() >= 16
            && secret.len() <= 128
            && secret.bytes().all(|b| b.is_ascii_alphanumeric())
            && fp.len() == 64
            && fp.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| EnrollmentToken {
            id: id.into(),
            secret: secret.into(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }

    /// SHA-256 of the secret, hex: what the store keeps.
    pub fn secret_hash(&self) -> String {
        crate::api::auth::hash_secret(&self.secret)
    }
}

impl std::fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}_{}_{}", self.id, self.secret, self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let fp = "ab".repeat(32);
        for _ in 0..50 {
            let t = EnrollmentToken::generate(&fp);
            assert_eq!(EnrollmentToken::parse(&t.to_string()), Some(t.clone()));
            assert_ne!(t.secret_hash(), t.secret);
        }
        for bad in [
            "",
            "stwe_",
            "stw_abc_def_00",
            &format!("stwe_abc_short_{fp}"),
            &format!("stwe_ABC_{}_{fp}", "s".repeat(32)),
            &format!("stwe_abc_{}_{}", "s".repeat(32), "zz".repeat(32)),
            &format!("stwe_abc_{}_{fp}_extra", "s".repeat(32)),
        ] {
            assert_eq!(EnrollmentToken::parse(bad), None, "{bad}");
        }
    }
}
