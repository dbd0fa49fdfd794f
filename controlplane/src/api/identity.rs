//! Identity routes: `POST /api/v1/enrollment-tokens` (a one-time token with
//! labels, expiry, a use count and optionally the host IDs it may enroll,
//! stored hashed, shown once), `GET /api/v1/enrollment-tokens`,
//! `DELETE /api/v1/enrollment-tokens/{id}` and `POST /api/v1/hosts/{host}/revoke`.
use std::collections::BTreeMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use steward_shared::selector::validate_label;
use steward_shared::units::Duration;
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::handlers::json;
use super::params::{Params, truncate};
use super::problem::Problem;
use super::rbac::{authorize, resolve_host_id_for};
use super::views::ListView;
use crate::audit::Outcome;
use crate::enrollment::EnrollmentToken;
use crate::store::identity::{EnrollmentTokenInfo, NewEnrollmentToken};
use steward_shared::hostpattern;

/// Largest body accepted by the JSON routes.
pub const MAX_BODY: u64 = 64 * 1024;
const MAX_USES: i64 = 100_000;
const MAX_TTL_SECS: u64 = 30 * 86_400;

/// `POST /api/v1/enrollment-tokens` body. Unknown fields are refused.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Labels given to every host that enrolls with the token.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How long the token is valid, e.g. `1h` (default: the control plane's `pki.enrollment_token_ttl`).
    #[schema(value_type = Option<String>, example = "1h")]
    pub ttl: Option<Duration>,
    /// How many hosts may enroll with it (default 1).
    pub uses: Option<i64>,
    /// The host IDs it may enroll: exact IDs or `*` patterns (`web-*`).
    /// Default: any new host. Re-enrolling an existing (revoked) host needs a
    /// token that names it exactly, and naming an existing host needs
    /// `hosts:reenroll` on it.
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollmentTokenView {
    pub id: String,
    /// The token to give to `steward-agent enroll --token`; shown only now.
    pub token: String,
    /// SHA-256 of the control plane's CA certificate (also inside the token).
    pub ca_fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub uses: i64,
    pub expires_at_ms: i64,
    /// The host IDs (or patterns) it may enroll; null: any new host.
    pub hosts: Option<Vec<String>>,
}

/// An item of `GET /api/v1/enrollment-tokens` (never the secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnrollmentTokenInfoView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub hosts: Option<Vec<String>>,
    pub max_uses: i64,
    pub uses_left: i64,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
    /// `active`, `used_up`, `expired` or `revoked`.
    pub state: String,
}

impl EnrollmentTokenInfoView {
    fn new(t: EnrollmentTokenInfo, now_ms: i64) -> Self {
        let state = if t.revoked_ms.is_some() {
            "revoked"
        } else if t.expires_ms <= now_ms {
            "expired"
        } else if t.uses_left <= 0 {
            "used_up"
        } else {
            "active"
        };
        EnrollmentTokenInfoView {
            id: t.id,
            labels: t.labels,
            hosts: t.hosts,
            max_uses: t.max_uses,
            uses_left: t.uses_left,
            expires_at_ms: t.expires_ms,
            created_at_ms: t.created_ms,
            created_by: t.created_by,
            revoked_at_ms: t.revoked_ms,
            state: state.to_string(),
        }
    }
}

/// Most host entries one enrollment token may name.
const MAX_TOKEN_HOSTS: usize = 1_000;

/// Parses a JSON body, naming the offending field in the 400.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // For an unknown field, name the field itself.
        // The path already ends with an unknown field's name; "." is the body itself.
        let field = match message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            Some(unknown) if path == "." => unknown.to_string(),
            // "." is the body itself; "?" is where a syntax error stopped the parser.
            _ if path == "." || path == "?" => "body".to_string(),
            _ => path,
        };
        Problem::invalid(&field, format!("invalid request body: {message}"))
    })
}

pub async fn create_enrollment_token(
    state: ApiState,
    who: Principal,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: CreateEnrollmentToken = parse_body(&body)?;
    for (k, v) in &req.labels {
        validate_label(k, "key").map_err(|e| Problem::invalid("labels", e))?;
        validate_label(v, "value").map_err(|e| Problem::invalid("labels", e))?;
    }
    let uses = req.uses.unwrap_or(1);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(Problem::invalid("uses", format!("must be between 1 and {MAX_USES}")));
    }
    if let Some(hosts) = &req.hosts {
        if hosts.is_empty() || hosts.len() > MAX_TOKEN_HOSTS {
            return Err(Problem::invalid(
                "hosts",
                format!("name 1 to {MAX_TOKEN_HOSTS} host IDs or patterns, or leave it out for any new host"),
            ));
        }
        for h in hosts {
            hostpattern::validate(h).map_err(|e| Problem::invalid("hosts", e))?;
        }
    }
    let ttl = req.ttl.map(|d| d.as_std()).unwrap_or(state.enrollment_token_ttl);
    if ttl.is_zero() || ttl.as_secs() > MAX_TTL_SECS {
        return Err(Problem::invalid("ttl", "must be more than 0s and at most 30d"));
    }
    // The new hosts will carry these labels: the caller must hold the
    // permission on hosts labelled so (a scoped token enrolls into its scope only).
    authorize(
        &state,
        &who,
        "enrollment-tokens:create",
        Some(&req.labels),
        "enrollment_tokens",
    )
    .await?;
    // Nor may they land in a token scope or role rule beyond the caller's reach.
    super::rbac::check_label_reach(
        &state,
        &who,
        "enrollment-tokens:create",
        None,
        &req.labels,
        "enrollment_tokens",
    )
    .await?;
    // Naming an existing host lets the token take it over once it is
    // revoked: that needs `hosts:reenroll` on the host as it is now.
    for id in req.hosts.iter().flatten().filter(|h| hostpattern::is_exact(h)) {
        if let Some(host) = state.store.get_host(id).await.map_err(Problem::from_store)? {
            authorize(
                &state,
                &who,
                "hosts:reenroll",
                Some(&host.labels),
                &format!("host {id}"),
            )
            .await?;
        }
    }
    let Some(fingerprint) = state.ca_fingerprint.clone() else {
        return Err(Problem::unavailable(
            "this control plane has no CA to enroll agents with",
        ));
    };
    let token = EnrollmentToken::generate(&fingerprint);
    let now = steward_shared::now_ms();
    let expires_at_ms = now.saturating_add(ttl.as_millis() as i64);
    let stored = NewEnrollmentToken {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        labels: req.labels.clone(),
        uses,
        expires_ms: expires_at_ms,
        created_by: format!("token:{}", who.token_id),
        hosts: req.hosts.clone(),
    };
    state
        .store
        .create_enrollment_token(
            &stored,
            &who.audit("enrollment_tokens.create", Outcome::Success)
                .target(format!("enrollment_token:{}", token.id))
                .details(serde_json::json!({
                    "labels": &req.labels, "uses": uses, "expires_at_ms": expires_at_ms, "hosts": &req.hosts,
                })),
            now,
        )
        .await
        .map_err(Problem::from_store)?;
    tracing::info!(token_id = %token.id, uses, ?req.labels, "enrollment token created");
    let view = EnrollmentTokenView {
        id: token.id.clone(),
        token: token.to_string(),
        ca_fingerprint: fingerprint,
        labels: req.labels,
        uses,
        expires_at_ms,
        hosts: req.hosts,
    };
    Ok(json(StatusCode::CREATED, &view))
}

/// Tag of the enrollment-token list's cursors.
const ENROLLMENT_TOKENS_CURSOR: &str = "e1";

/// `GET /api/v1/enrollment-tokens`: the tokens whose labels the caller may
/// read hosts with (a scoped token sees those of its scope), by ID.
pub async fn list_enrollment_tokens(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["limit", "cursor"])?;
    let limit = p.limit()?;
    let after = p
        .get("cursor")
        .map(|raw| super::params::parse_opaque_cursor(raw, ENROLLMENT_TOKENS_CURSOR))
        .transpose()?;
    let mut tokens = state
        .store
        .list_enrollment_tokens()
        .await
        .map_err(Problem::from_store)?;
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
    let now = steward_shared::now_ms();
    let mut items: Vec<EnrollmentTokenInfoView> = tokens
        .into_iter()
        .filter(|t| after.as_deref().is_none_or(|a| t.id.as_str() > a))
        .filter(|t| who.allows("enrollment-tokens:read", Some(&t.labels)))
        .take(limit + 1)
        .map(|t| EnrollmentTokenInfoView::new(t, now))
        .collect();
    let next_cursor = (items.len() > limit).then(|| {
        items.truncate(limit);
        items
            .last()
            .map(|t| super::params::opaque_cursor(ENROLLMENT_TOKENS_CURSOR, &t.id))
    });
    Ok(json(
        StatusCode::OK,
        &ListView {
            items,
            next_cursor: next_cursor.flatten(),
        },
    ))
}

/// `DELETE /api/v1/enrollment-tokens/{id}`: no host can enroll with the
/// token from now on (hosts enrolled with it are not affected).
pub async fn revoke_enrollment_token(
    state: ApiState,
    who: Principal,
    id: String,
    query: String,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let not_found = || {
        let mut p = Problem::not_found(format!("no active enrollment token {:?}", truncate(&id, 64)));
        p.field = Some("id".into());
        p
    };
    let Some(token) = state
        .store
        .get_enrollment_token(&id)
        .await
        .map_err(Problem::from_store)?
    else {
        return Err(not_found());
    };
    if !who.allows("enrollment-tokens:read", Some(&token.labels)) {
        return Err(not_found());
    }
    authorize(
        &state,
        &who,
        "enrollment-tokens:revoke",
        Some(&token.labels),
        "enrollment_tokens",
    )
    .await?;
    let now = steward_shared::now_ms();
    if !state
        .store
        .revoke_enrollment_token(
            &id,
            &who.audit("enrollment_tokens.revoke", Outcome::Success)
                .target(format!("enrollment_token:{id}")),
            now,
        )
        .await
        .map_err(Problem::from_store)?
    {
        return Err(not_found());
    }
    tracing::warn!(token_id = %id, by = %who.token_id, "enrollment token revoked");
    let token = state
        .store
        .get_enrollment_token(&id)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &EnrollmentTokenInfoView::new(token, now)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokedView {
    pub host_id: String,
    pub revoked_at_ms: i64,
}

/// `POST /api/v1/hosts/{host}/revoke`: refuses the host's certificates from
/// now on; its live stream closes within a second; its data is kept.
pub async fn revoke_host(state: ApiState, who: Principal, host: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let host = resolve_host_id_for(&state, &who, &host, "hosts:revoke", "host").await?;
    let now = steward_shared::now_ms();
    if !state
        .store
        .revoke_host(
            &host.id,
            &who.audit("hosts.revoke", Outcome::Success)
                .target(format!("host:{}", host.id)),
            now,
        )
        .await
        .map_err(Problem::from_store)?
    {
        return Err(Problem::not_found(format!("host {:?} not found", host.id)));
    }
    tracing::warn!(host = %host.id, by = %who.token_id, "host revoked");
    Ok(json(
        StatusCode::OK,
        &RevokedView {
            host_id: host.id,
            revoked_at_ms: now,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_offending_field() {
        let e = parse_body::<CreateEnrollmentToken>(br#"{"labels": {}, "colour": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        let e = parse_body::<CreateEnrollmentToken>(br#"{"uses": "many"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("uses"));
        let e = parse_body::<CreateEnrollmentToken>(br#"{"ttl": "soon"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ttl"));
        let e = parse_body::<CreateEnrollmentToken>(b"{not json").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        let ok = parse_body::<CreateEnrollmentToken>(b"").unwrap();
        assert!(ok.labels.is_empty() && ok.uses.is_none());
    }
}
