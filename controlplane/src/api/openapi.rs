//! The OpenAPI 3 document, generated from the code with utoipa: the JSON
//! models derive `ToSchema`, every route has a `#[utoipa::path]` below, and
//! [`ApiDoc`] lists them. Served without a token at
//! `GET /api/v1/openapi.json` (it is the API's public contract and says
//! nothing about the fleet). A test compares its operations with
//! [`super::routes::TABLE`] both ways, and `.ci/run` runs schemathesis
//! against the served document.
//!
//! Adding a route: a documented stub here (its `#[utoipa::path]`) and its
//! name in `paths(...)` of [`ApiDoc`].
#![allow(dead_code)] // the stubs only carry documentation

use std::sync::OnceLock;

use http::StatusCode;
use http::header::CONTENT_TYPE;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use warp::Reply;
use warp::reply::Response;

use super::alerts::{AlertView, CreateSilence, SilenceView};
use super::identity::{CreateEnrollmentToken, EnrollmentTokenInfoView, EnrollmentTokenView, RevokedView};
use super::jobs::{BackupView, CreateJob, CreatedJobs, JobView, OutputView};
use super::kpis::{KpiDetail, KpiGroupView, KpiList, KpiView, MissingKpi, TrendPoint};
use super::params::Params;
use super::problem::{PROBLEM_CONTENT_TYPE, Problem};
use super::rbac::{CreateToken, PutLabels, PutRole, RoleView, TokenView};
use super::rollouts::{AbortRollout, Counts, CreateRollout, RolloutHostView, RolloutView, WaveView};
use super::views::{CheckView, HostView, ListView, ValueView};
use crate::audit::export::AuditEntryView;
use crate::model::StatusCounts;
use crate::rbac::{Effect, RoleSource, RuleSpec};
use crate::slo::spec::SloSpec;
use crate::slo::status::{SloStatus, SloSummary};

/// A check's status.
#[derive(ToSchema)]
#[schema(as = CheckStatus)]
#[allow(non_camel_case_types)]
pub enum CheckStatusSchema {
    ok,
    warning,
    critical,
    unknown,
}

/// Where a job is in its life.
#[derive(ToSchema)]
#[schema(as = JobState)]
#[allow(non_camel_case_types)]
pub enum JobStateSchema {
    queued,
    dispatched,
    running,
    succeeded,
    failed,
    timed_out,
    cancelled,
    discarded,
}

/// The errors every authenticated route may answer with.
#[derive(IntoResponses)]
pub enum Errors {
    /// Invalid query parameter, path segment or body field (named in `field`).
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Missing, malformed, unknown, expired or revoked token.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The token's role or scope does not allow this.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource (or none the token may see).
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Ambiguous hostname, or a conflicting state.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// Request body too large.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The token's rate limit is used up; see `Retry-After`.
    #[response(status = 429, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "seconds to wait")))]
    TooMany(Problem),
    /// The database is not reachable.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("stw_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Steward control plane", description = "Fleet state, identity and access. Errors are application/problem+json."),
    paths(
        healthz, readyz, metrics, openapi_json,
        list_hosts, get_host, host_checks, revoke_host, put_host_labels, list_checks,
        create_enrollment_token, list_enrollment_tokens, revoke_enrollment_token, audit_list, audit_export,
        create_token, list_tokens, revoke_token, list_roles, get_role, put_role, delete_role,
        create_jobs, list_jobs, get_job, job_output, cancel_job, list_backups,
        put_slo, list_slos, get_slo,
        create_rollout, list_rollouts, get_rollout, pause_rollout, resume_rollout, abort_rollout,
        list_alerts, get_alert, ack_alert, list_silences, create_silence, expire_silence,
        list_kpis, get_kpi,
    ),
    components(schemas(
        Problem, HostView, CheckView, ValueView, StatusCounts, CheckStatusSchema, AuditEntryView,
        CreateEnrollmentToken, EnrollmentTokenView, EnrollmentTokenInfoView, RevokedView, CreateToken, TokenView, RoleView, PutRole,
        PutLabels, RuleSpec, Effect, RoleSource,
        CreateJob, CreatedJobs, JobView, JobStateSchema, OutputView, BackupView,
        SloSpec, SloStatus, SloSummary,
        CreateRollout, AbortRollout, RolloutView, RolloutHostView, WaveView, Counts,
        crate::rollouts::StrategySpec, crate::rollouts::Strategy, crate::rollouts::RollbackSpec,
        crate::rollouts::RawAmount,
        AlertView, CreateSilence, SilenceView, crate::alert::Severity, crate::alert::Matcher,
        KpiList, KpiView, KpiDetail, KpiGroupView, TrendPoint, MissingKpi,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into()))
}

/// `GET /api/v1/openapi.json` (no token).
pub async fn serve(query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    http::Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(document_json().to_string())
        .map(Reply::into_response)
        .map_err(|_| Problem::internal())
}

const _: &str = PROBLEM_CONTENT_TYPE;

// ---------------------------------------------------------------- public

/// Liveness.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive", body = Object)))]
fn healthz() {}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "ready", body = Object),
    (status = 503, description = "database unreachable", body = Problem, content_type = "application/problem+json"),
))]
fn readyz() {}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", security(()), responses(
    (status = 200, description = "metrics", body = String, content_type = "text/plain"),
))]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", security(()), responses(
    (status = 200, description = "the OpenAPI document", body = Object),
    (status = 400, description = "unknown query parameter", body = Problem, content_type = "application/problem+json"),
))]
fn openapi_json() {}

// ---------------------------------------------------------------- hosts and checks

/// Hosts (only those the token may see), by ID. Permission `hosts:read`.
#[utoipa::path(get, path = "/api/v1/hosts", params(
    ("selector" = Option<String>, Query, description = "label selector, e.g. `env=prod,role in (web,db)`"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "page size (default 100)"),
    ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
), responses((status = 200, description = "a page of hosts", body = ListView<HostView>), Errors))]
fn list_hosts() {}

/// One host by ID or unique hostname. Permission `hosts:read` on it.
#[utoipa::path(get, path = "/api/v1/hosts/{host}", params(
    ("host" = String, Path, description = "host ID or unique hostname"),
), responses((status = 200, description = "the host", body = HostView), Errors))]
fn get_host() {}

/// The latest checks of one host. Permission `checks:read` on it.
#[utoipa::path(get, path = "/api/v1/hosts/{host}/checks", params(
    ("host" = String, Path, description = "host ID or unique hostname"),
    ("status" = Option<CheckStatusSchema>, Query, description = "only checks in this status"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of checks", body = ListView<CheckView>), Errors))]
fn host_checks() {}

/// Revokes a host: its certificates are refused, its stream closed. Permission `hosts:revoke` on it.
#[utoipa::path(post, path = "/api/v1/hosts/{host}/revoke", params(
    ("host" = String, Path, description = "host ID (never a hostname: this is a change)"),
), responses((status = 200, description = "revoked", body = RevokedView), Errors))]
fn revoke_host() {}

/// Replaces a host's control-plane labels (audited as `set_host_labels`).
/// Permission `hosts:label` on the host, with its old and its new labels; a
/// change that moves the host into or out of a token scope or role rule
/// needs `hosts:label` on every host that selector matches.
#[utoipa::path(put, path = "/api/v1/hosts/{host}/labels", params(
    ("host" = String, Path, description = "host ID (never a hostname: this is a change)"),
), request_body = PutLabels, responses((status = 200, description = "the relabelled host", body = HostView), Errors))]
fn put_host_labels() {}

/// Latest check results across the hosts the token may see. Permission `checks:read`.
#[utoipa::path(get, path = "/api/v1/checks", params(
    ("status" = Option<CheckStatusSchema>, Query),
    ("host" = Option<String>, Query, description = "only this host (ID or unique hostname)"),
    ("selector" = Option<String>, Query, description = "label selector"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of checks", body = ListView<CheckView>), Errors))]
fn list_checks() {}

// ---------------------------------------------------------------- identity and audit

/// A one-time enrollment token for new agents, shown once.
/// Permission `enrollment-tokens:create` on hosts with the token's labels.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", request_body = Option<CreateEnrollmentToken>,
    responses((status = 201, description = "created", body = EnrollmentTokenView), Errors))]
fn create_enrollment_token() {}

/// Enrollment tokens (never their secrets), by ID. Permission
/// `enrollment-tokens:read` on hosts with the token's labels.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", params(
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of enrollment tokens", body = ListView<EnrollmentTokenInfoView>), Errors))]
fn list_enrollment_tokens() {}

/// Revokes an enrollment token: no host can enroll with it from now on.
/// Permission `enrollment-tokens:revoke` on hosts with the token's labels.
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", params(("id" = String, Path, description = "enrollment token ID")),
    responses((status = 200, description = "revoked", body = EnrollmentTokenInfoView), Errors))]
fn revoke_enrollment_token() {}

/// Audit entries, oldest first. Permission `audit:read`, unscoped tokens only.
#[utoipa::path(get, path = "/api/v1/audit", params(
    ("actor" = Option<String>, Query),
    ("action" = Option<String>, Query),
    ("since" = Option<String>, Query, description = "RFC 3339 or epoch milliseconds"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of entries", body = ListView<AuditEntryView>), Errors))]
fn audit_list() {}

/// The audit export (entries, checkpoints, key, signed head). Permission `audit:read`, unscoped tokens only.
#[utoipa::path(get, path = "/api/v1/audit/export",
    responses((status = 200, description = "the export", body = Object), Errors))]
fn audit_export() {}

// ---------------------------------------------------------------- tokens and roles

/// Creates an API token, shown once. Permission `tokens:create`, and the
/// caller must hold everything the role grants, with a scope no wider.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, description = "created; `token` is shown only now", body = TokenView), Errors))]
fn create_token() {}

/// API tokens (never their secrets). Permission `tokens:read`.
#[utoipa::path(get, path = "/api/v1/tokens", params(
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of tokens", body = ListView<TokenView>), Errors))]
fn list_tokens() {}

/// Revokes a token. Permission `tokens:revoke`; one's own token, or one
/// that grants nothing the caller lacks.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path, description = "token ID")),
    responses((status = 200, description = "revoked", body = TokenView), Errors))]
fn revoke_token() {}

/// Roles: built in, from the config file, defined through the API. Permission `roles:read`.
#[utoipa::path(get, path = "/api/v1/roles", params(
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of roles", body = ListView<RoleView>), Errors))]
fn list_roles() {}

/// One role. Permission `roles:read`.
#[utoipa::path(get, path = "/api/v1/roles/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "the role", body = RoleView), Errors))]
fn get_role() {}

/// Creates or replaces a custom role. Permission `roles:write`, and the
/// caller must hold everything the role grants.
#[utoipa::path(put, path = "/api/v1/roles/{name}", params(("name" = String, Path)), request_body = PutRole,
    responses(
        (status = 200, description = "replaced", body = RoleView),
        (status = 201, description = "created", body = RoleView),
        Errors,
    ))]
fn put_role() {}

/// Deletes a custom role no active token uses. Permission `roles:delete`.
#[utoipa::path(delete, path = "/api/v1/roles/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "deleted", body = Object), Errors))]
fn delete_role() {}

// ---------------------------------------------------------------- jobs and backups

/// Creates a job on one host (`host`), or one job per host of `selector`
/// on which the token holds `jobs:create` (hosts it may not act on are left
/// out; none at all is a 403 when it may see some of them, else a 400).
/// With an `idempotency_key` already used, answers that request's jobs
/// (200), or a 409 when they are not all the token's to see. Permission
/// `jobs:create` on each host.
#[utoipa::path(post, path = "/api/v1/jobs", request_body = CreateJob,
    responses(
        (status = 201, description = "created", body = CreatedJobs),
        (status = 200, description = "the idempotency key's jobs, created before", body = CreatedJobs),
        Errors,
    ))]
fn create_jobs() {}

/// Jobs of the hosts the token may see, newest first. Permission `jobs:read`.
#[utoipa::path(get, path = "/api/v1/jobs", params(
    ("state" = Option<JobStateSchema>, Query, description = "only jobs in this state"),
    ("host" = Option<String>, Query, description = "only this host (ID or unique hostname)"),
    ("action" = Option<String>, Query, description = "only this action, e.g. `backup.run`"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of jobs", body = ListView<JobView>), Errors))]
fn list_jobs() {}

/// One job. Permission `jobs:read` on its host (404 for a host the token may not see).
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = String, Path, description = "job ID")),
    responses((status = 200, description = "the job", body = JobView), Errors))]
fn get_job() {}

/// The stored output of a job's current attempt. Permission `jobs:read` on its host.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/output", params(("id" = String, Path, description = "job ID")),
    responses((status = 200, description = "the output", body = OutputView), Errors))]
fn job_output() {}

/// Cancels a job: a queued one at once (200), one with an agent by asking
/// the agent to stop (202); an ended one is a 409. Permission `jobs:cancel`
/// on its host.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = String, Path, description = "job ID")),
    responses(
        (status = 200, description = "cancelled", body = JobView),
        (status = 202, description = "the agent is asked to stop it", body = JobView),
        Errors,
    ))]
fn cancel_job() {}

/// Backup status per host and backup, of the hosts the token may see.
/// Permission `backups:read`.
#[utoipa::path(get, path = "/api/v1/backups", params(
    ("host" = Option<String>, Query, description = "only this host (ID or unique hostname)"),
), responses((status = 200, description = "backups", body = ListView<BackupView>), Errors))]
fn list_backups() {}

// ---------------------------------------------------------------- SLOs

/// Creates or replaces an SLO (the `spec` of the YAML document, as JSON;
/// unknown fields are refused, errors name the field). Audited. Permission
/// `slos:write`.
#[utoipa::path(put, path = "/api/v1/slos/{name}", params(("name" = String, Path, description = "a-z 0-9 - _ . (1-63)")),
    request_body = SloSpec,
    responses(
        (status = 201, description = "created", body = SloStatus),
        (status = 200, description = "replaced or unchanged", body = SloStatus),
        Errors,
    ))]
fn put_slo() {}

/// Every SLO with its SLI, budget left and firing tiers. Permission `slos:read`.
#[utoipa::path(get, path = "/api/v1/slos", params(
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of SLOs", body = ListView<SloSummary>), Errors))]
fn list_slos() {}

/// An SLO's status: SLI, budget (fraction and seconds), burn rates, tiers,
/// groups, budget history. Permission `slos:read`.
#[utoipa::path(get, path = "/api/v1/slos/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "the SLO's status", body = SloStatus), Errors))]
fn get_slo() {}
// ---------------------------------------------------------------- rollouts

/// Starts a rollout of `action` over the hosts `selector` matches on which
/// the token holds `rollouts:write` (resolved once, now; hosts that match
/// later are not added), in waves per `strategy`. Permission `rollouts:write`.
#[utoipa::path(post, path = "/api/v1/rollouts", request_body = CreateRollout,
    responses((status = 201, description = "started", body = RolloutView), Errors))]
fn create_rollout() {}

/// Rollouts whose every host the token may see, newest first. Permission `rollouts:read`.
#[utoipa::path(get, path = "/api/v1/rollouts", params(
    ("state" = Option<String>, Query, description = "only rollouts in this state"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of rollouts", body = ListView<RolloutView>), Errors))]
fn list_rollouts() {}

/// One rollout with its hosts. Permission `rollouts:read` on every host (else 404).
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", params(("id" = String, Path, description = "rollout ID")),
    responses((status = 200, description = "the rollout", body = RolloutView), Errors))]
fn get_rollout() {}

/// Pauses a running rollout: running jobs finish, nothing new starts (409
/// in another state). Permission `rollouts:write` on every host.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", params(("id" = String, Path, description = "rollout ID")),
    responses((status = 200, description = "paused", body = RolloutView), Errors))]
fn pause_rollout() {}

/// Resumes a paused rollout (409 in another state). Permission `rollouts:write` on every host.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", params(("id" = String, Path, description = "rollout ID")),
    responses((status = 200, description = "resumed", body = RolloutView), Errors))]
fn resume_rollout() {}

/// Aborts a rollout: nothing new starts, running jobs finish, then changed
/// hosts are rolled back unless `{"rollback": false}`. Permission
/// `rollouts:write` on every host.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", params(("id" = String, Path, description = "rollout ID")),
    request_body = AbortRollout,
    responses((status = 200, description = "aborting", body = RolloutView), Errors))]
fn abort_rollout() {}

// ---------------------------------------------------------------- alerts

/// Alerts the token may see (an alert about a host needs `alerts:read` on
/// that host; one about no host an unlimited `alerts:read`), newest first.
/// Permission `alerts:read`.
#[utoipa::path(get, path = "/api/v1/alerts", params(
    ("state" = Option<String>, Query, description = "`firing` or `resolved`"),
    ("severity" = Option<crate::alert::Severity>, Query, description = "only this severity"),
    ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
    ("cursor" = Option<String>, Query),
), responses((status = 200, description = "a page of alerts", body = ListView<AlertView>), Errors))]
fn list_alerts() {}

/// One alert. Permission `alerts:read` (404 when the token may not see it).
#[utoipa::path(get, path = "/api/v1/alerts/{id}", params(("id" = String, Path, description = "alert ID")),
    responses((status = 200, description = "the alert", body = AlertView), Errors))]
fn get_alert() {}

/// Acknowledges an alert (audited; a second ack keeps the first).
/// Permission `alerts:write` on the alert's host.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", params(("id" = String, Path, description = "alert ID")),
    responses((status = 200, description = "acknowledged", body = AlertView), Errors))]
fn ack_alert() {}

/// Silences, newest first. Unscoped tokens only. Permission `alerts:read`.
#[utoipa::path(get, path = "/api/v1/silences", params(
    ("state" = Option<String>, Query, description = "`active` or `expired`"),
), responses((status = 200, description = "silences", body = ListView<SilenceView>), Errors))]
fn list_silences() {}

/// Creates a silence from now for `duration`: alerts matching every matcher
/// fire without notifications (audited). Unscoped tokens only. Permission
/// `alerts:write`.
#[utoipa::path(post, path = "/api/v1/silences", request_body = CreateSilence,
    responses((status = 201, description = "created", body = SilenceView), Errors))]
fn create_silence() {}

/// Ends a silence now (audited). Unscoped tokens only. Permission `alerts:write`.
#[utoipa::path(delete, path = "/api/v1/silences/{id}", params(("id" = String, Path, description = "silence ID")),
    responses((status = 200, description = "expired", body = SilenceView), Errors))]
fn expire_silence() {}

// ---------------------------------------------------------------- KPIs

/// The KPI catalog with each KPI's value over the hosts the token may see
/// (and the selector matches), plus the KPIs not computed yet.
/// Permission `kpis:read`.
#[utoipa::path(get, path = "/api/v1/kpis", params(
    ("window" = Option<String>, Query, description = "duration, e.g. 30d (default 30d, 1m..400d)"),
    ("selector" = Option<String>, Query, description = "label selector over hosts"),
), responses((status = 200, description = "the catalog", body = KpiList), Errors))]
fn list_kpis() {}

/// One KPI: its value, per group of a label's values with `group_by`, and its
/// trend (fleet-wide samples; only for tokens limited by nothing).
/// Permission `kpis:read`.
#[utoipa::path(get, path = "/api/v1/kpis/{name}", params(
    ("name" = String, Path, description = "a KPI name from the catalog"),
    ("window" = Option<String>, Query, description = "duration, e.g. 30d (default 30d, 1m..400d)"),
    ("selector" = Option<String>, Query, description = "label selector over hosts"),
    ("group_by" = Option<String>, Query, description = "a label: one value per label value"),
), responses((status = 200, description = "the KPI", body = KpiDetail), Errors))]
fn get_kpi() {}
