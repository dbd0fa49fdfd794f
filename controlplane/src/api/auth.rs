//! API tokens: `stw_<id>_<secret>`. The ID is public (the primary key); only
//! the SHA-256 of the secret is stored, and it is compared in constant time.
//! Expired, revoked, unknown and malformed tokens all get the same 401.
//! A token is shown once, at creation, and never logged.
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{ApiToken, Role};
use crate::store::{Store, StoreError};

pub const TOKEN_PREFIX: &str = "stw_";
const ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
/// `last_used_ms` is refreshed at most this often per token (a write per
/// request would compete with ingest for SQLite's one writer).
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// Who made a request, once its token is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub role: Role,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, unknown, expired or revoked: the client sees one 401.
    #[error("unauthorized")]
    Unauthorized,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates an `admin` token and returns it in full (the only time it is visible).
pub async fn create_admin_token(store: &Store, name: &str, ttl: Option<Duration>) -> Result<String, StoreError> {
    create_token(store, name, Role::Admin, ttl).await
}

/// Creates a token with `role` and returns it in full (the only time it is visible).
pub async fn create_token(store: &Store, name: &str, role: Role, ttl: Option<Duration>) -> Result<String, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "token name must be 1 to 128 printable characters".into(),
        ));
    }
    let now = steward_shared::now_ms();
    let expires_ms = match ttl {
        None => None,
        Some(ttl) => {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            if ms == 0 {
                return Err(StoreError::Invalid("token lifetime must be longer than zero".into()));
            }
            Some(now.saturating_add(ms))
        }
    };
    let (token, id, secret_hash) = generate();
    store
        .create_api_token(&ApiToken {
            id,
            name: name.to_string(),
            role,
            secret_hash,
            created_ms: now,
            expires_ms,
            revoked_ms: None,
            last_used_ms: None,
        })
        .await?;
    Ok(token)
}

/// A new random token: (full token, id, hex SHA-256 of the secret).
fn generate() -> (String, String, String) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let id: String = (0..ID_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(&secret);
    (format!("{TOKEN_PREFIX}{id}_{secret}"), id, hash)
}

/// Lowercase hex SHA-256 of a token's secret part.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `stw_<id>_<secret>` into (id, secret); None if malformed.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    let secret_ok = !secret.is_empty()
        && secret.len() <= 256
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// Whether `token` (the full `stw_...` string) is currently valid. A storage
/// error counts as "not valid" (and is logged).
pub async fn token_is_valid(store: &Store, token: &str) -> bool {
    match authenticate(store, Some(&format!("Bearer {token}")), steward_shared::now_ms()).await {
        Ok(_) => true,
        Err(AuthError::Unauthorized) => false,
        Err(AuthError::Store(error)) => {
            tracing::warn!(%error, "could not check an API token");
            false
        }
    }
}

/// Verifies an `Authorization` header value (`Bearer stw_...`).
pub async fn authenticate(store: &Store, authorization: Option<&str>, now_ms: i64) -> Result<Principal, AuthError> {
    let token = authorization
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or(AuthError::Unauthorized)?;
    let (id, secret) = parse_token(token).ok_or(AuthError::Unauthorized)?;
    let presented = hash_secret(secret);
    let Some(stored) = store.find_api_token(id).await? else {
        // Same work as for a known ID, so timing says nothing about IDs.
        let _ = presented.as_bytes().ct_eq(hash_secret("").as_bytes());
        return Err(AuthError::Unauthorized);
    };
    let matches: bool = presented.as_bytes().ct_eq(stored.secret_hash.as_bytes()).into();
    if !matches || !stored.is_active(now_ms) {
        return Err(AuthError::Unauthorized);
    }
    if stored.last_used_ms.is_none_or(|t| now_ms - t >= TOUCH_INTERVAL_MS)
        && let Err(error) = store.touch_api_token(&stored.id, now_ms).await
    {
        tracing::warn!(%error, token_id = %stored.id, "could not record token use");
    }
    Ok(Principal {
        token_id: stored.id,
        token_name: stored.name,
        role: stored.role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_and_hash_matches() {
        for _ in 0..50 {
            let (token, id, hash) = generate();
            let (pid, secret) = parse_token(&token).expect("parses");
            assert_eq!(pid, id);
            assert_eq!(hash_secret(secret), hash);
            assert!(token.starts_with("stw_"));
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "stw_",
            "stw_abc",
            "stw__secret",
            "xyz_abc_def",
            "stw_a b_c",
            "stw_abc_sec ret",
            "stw_ab!_x",
        ] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
    }
}
