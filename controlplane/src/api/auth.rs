//! API tokens: `stw_<id>_<secret>`. The ID is public (the primary key); only
//! the SHA-256 of the secret is stored, and it is compared in constant time.
//! Expired, revoked, unknown and malformed tokens all get the same 401 (the
//! reason goes to the audit log only). A token is shown once, at creation,
//! and never logged. Creating and revoking a token is audited in the same
//! transaction.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::{AuditEntry, Outcome, actor};
use crate::model::{ApiToken, Role};
use crate::rbac::{Authority, HostFilter, Labels};
use crate::store::{Store, StoreError};
use steward_shared::selector::Selector;

pub const TOKEN_PREFIX: &str = "stw_";
const ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
/// `last_used_ms` is refreshed at most this often per token (a write per
/// request would compete with ingest for SQLite's one writer).
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// Who made a request, once its token is verified, and what it may do.
///
/// The API for handlers (see ARCHITECTURE.md, "Adding a route"):
/// [`Principal::allows`] decides one permission about one host (or about
/// no particular host), [`Principal::host_filter`] gives the filter list
/// queries apply before paging, and [`crate::api::rbac::resolve_host_for`]
/// / [`crate::api::rbac::authorize`] turn a refusal into an audited 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    /// The token's role (built-in or custom) by name.
    pub role: String,
    /// The token's scope; empty: unscoped.
    pub scope: Selector,
    /// The role's rules narrowed by the scope (resolved per request, so a
    /// changed role or relabelled host counts from the next request on).
    pub authority: Arc<Authority>,
    /// The request's `X-Request-Id` (None outside an HTTP request).
    pub request_id: Option<String>,
}

impl Principal {
    /// Whether this caller holds `permission` (`resource:action`) on the
    /// host with these control-plane labels, or, with `None`, on no
    /// particular host (the route itself; lists are then filtered with
    /// [`Principal::host_filter`]).
    pub fn allows(&self, permission: &str, host_labels: Option<&Labels>) -> bool {
        self.authority.allows(permission, host_labels)
    }

    /// The hosts on which this caller holds `permission`: give it to the
    /// store's list queries ([`crate::store::CheckFilter::access`],
    /// [`Store::list_hosts_visible`]) so pages, counts and totals never
    /// include other hosts.
    pub fn host_filter(&self, permission: &str) -> HostFilter {
        self.authority.host_filter(permission)
    }

    /// Whether the token is limited to some hosts.
    pub fn is_scoped(&self) -> bool {
        !self.scope.is_empty()
    }

    /// An audit entry of `action` by this caller, in this request.
    pub fn audit(&self, action: &str, outcome: Outcome) -> AuditEntry {
        AuditEntry::new(actor::token(&self.token_id), action, outcome).request_id(self.request_id.as_deref())
    }
}

/// Why a token was refused: recorded in the audit log, never told to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `missing`, `malformed`, `unknown token`, `wrong secret`, `expired`, `revoked`.
    pub reason: &'static str,
    /// The token ID presented, when the token was well-formed.
    pub token_id: Option<String>,
}

/// [`authenticate_detailed`]'s failure.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error("unauthorized: {}", .0.reason)]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
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

/// Creates an `admin` token and returns it in full (the only time it is
/// visible). Audited as done by the local user (`admin create-token`, quickstart).
pub async fn create_admin_token(store: &Store, name: &str, ttl: Option<Duration>) -> Result<String, StoreError> {
    create_token(store, name, Role::Admin, ttl).await
}

/// Creates an unscoped token with `role` (a built-in [`Role`] or a role's
/// name) and returns it in full (the only time it is visible). Audited as
/// done by the local user.
pub async fn create_token(
    store: &Store,
    name: &str,
    role: impl AsRef<str>,
    ttl: Option<Duration>,
) -> Result<String, StoreError> {
    create_token_by(
        store,
        AuditEntry::new(actor::local(), TOKENS_CREATE, Outcome::Success),
        NewToken {
            name,
            role: role.as_ref(),
            scope: &Selector::everything(),
            ttl,
            parent: None,
            expires_by_ms: None,
        },
    )
    .await
    .map(|(token, _)| token)
}

/// What a new token is.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: &'a str,
    /// Empty: unscoped.
    pub scope: &'a Selector,
    pub ttl: Option<Duration>,
    /// The token creating this one: revoking it revokes this one too.
    pub parent: Option<&'a str>,
    /// The latest expiry allowed (the creating token's): a longer or absent
    /// `ttl` is capped to it.
    pub expires_by_ms: Option<i64>,
}

/// Action name of token creation in the audit log.
pub const TOKENS_CREATE: &str = "tokens.create";
/// Action name of token revocation in the audit log.
pub const TOKENS_REVOKE: &str = "tokens.revoke";

/// Creates a token and records `audit` (its actor, action and request ID;
/// the target and details are filled in here) in the same transaction.
/// Returns the token in full and its stored form (without anything secret
/// but the hash).
pub async fn create_token_by(
    store: &Store,
    audit: AuditEntry,
    new: NewToken<'_>,
) -> Result<(String, ApiToken), StoreError> {
    let NewToken {
        name,
        role,
        scope,
        ttl,
        parent,
        expires_by_ms,
    } = new;
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
    let expires_ms = match (expires_ms, expires_by_ms) {
        (Some(e), Some(cap)) => Some(e.min(cap)),
        (None, cap) => cap,
        (e, None) => e,
    };
    let (token, id, secret_hash) = generate();
    let scope = scope.to_string();
    let audit = audit.target(actor::token(&id)).details(
        serde_json::json!({ "name": name, "role": role, "scope": scope, "expires_ms": expires_ms, "parent": parent }),
    );
    let stored = ApiToken {
        id,
        name: name.to_string(),
        role: role.to_string(),
        scope,
        secret_hash,
        created_ms: now,
        expires_ms,
        revoked_ms: None,
        last_used_ms: None,
        parent_id: parent.map(str::to_string),
    };
    store.create_api_token(&stored, audit).await?;
    Ok((token, stored))
}

/// Revokes token `id` and records `audit` (actor, action, request ID) in the
/// same transaction; false when there is no such token or it was already
/// revoked (recorded as `failed`).
pub async fn revoke_token_by(store: &Store, audit: AuditEntry, id: &str) -> Result<bool, StoreError> {
    let audit = audit.target(actor::token(id));
    if store
        .revoke_api_token(id, steward_shared::now_ms(), audit.clone())
        .await?
    {
        return Ok(true);
    }
    let mut failed = audit.details(serde_json::json!({ "reason": "no such active token" }));
    failed.outcome = Outcome::Failed;
    store.append_audit(failed).await?;
    Ok(false)
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
    authenticate_detailed(store, authorization, now_ms)
        .await
        .map_err(|failure| match failure {
            AuthFailure::Refused(_) => AuthError::Unauthorized,
            AuthFailure::Store(error) => AuthError::Store(error),
        })
}

/// [`authenticate`], saying why a token was refused (for the audit log).
pub async fn authenticate_detailed(
    store: &Store,
    authorization: Option<&str>,
    now_ms: i64,
) -> Result<Principal, AuthFailure> {
    let refused = |reason: &'static str, token_id: Option<&str>| {
        AuthFailure::Refused(Refusal {
            reason,
            token_id: token_id.map(str::to_string),
        })
    };
    let token = authorization
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(|| refused("missing", None))?;
    let (id, secret) = parse_token(token).ok_or_else(|| refused("malformed", None))?;
    let presented = hash_secret(secret);
    let Some(stored) = store.find_api_token(id).await? else {
        // Same work as for a known ID, so timing says nothing about IDs.
        let _ = presented.as_bytes().ct_eq(hash_secret("").as_bytes());
        return Err(refused("unknown token", Some(id)));
    };
    let matches: bool = presented.as_bytes().ct_eq(stored.secret_hash.as_bytes()).into();
    if !matches {
        return Err(refused("wrong secret", Some(id)));
    }
    if stored.revoked_ms.is_some() {
        return Err(refused("revoked", Some(id)));
    }
    if !stored.is_active(now_ms) {
        return Err(refused("expired", Some(id)));
    }
    if stored.last_used_ms.is_none_or(|t| now_ms - t >= TOUCH_INTERVAL_MS)
        && let Err(error) = store.touch_api_token(&stored.id, now_ms).await
    {
        tracing::warn!(%error, token_id = %stored.id, "could not record token use");
    }
    let scope = match Selector::parse(&stored.scope) {
        Ok(scope) => scope,
        Err(error) => {
            // Never written so (validated at creation): refuse rather than widen.
            tracing::warn!(%error, token_id = %stored.id, "unreadable token scope; the token is refused");
            return Err(refused("unreadable scope", Some(&stored.id)));
        }
    };
    // Built-in roles resolve here; others are resolved by the API layer
    // (config and stored roles), until then the token may do nothing.
    let rules = crate::rbac::builtin(&stored.role).map(|r| r.rules).unwrap_or_default();
    Ok(Principal {
        token_id: stored.id,
        token_name: stored.name,
        authority: Arc::new(Authority::new(rules, scope.clone())),
        role: stored.role,
        scope,
        request_id: None,
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
