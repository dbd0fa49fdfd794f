//! Access-control tests of the REST API through `warp::test::request()`
//! against a real store of every selected backend: the full matrix of
//! routes × built-in roles × scoped/unscoped, scoped visibility of lists,
//! relabelling, escalation, custom roles, denials in the audit log, rate
//! limits, and the OpenAPI document against the route table.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value as Json, json};
use steward_shared::status::{CheckResult, CheckStatus};

use super::routes::{Hosts, TABLE};
use super::*;
use crate::audit::AuditFilter;
use crate::model::{AgentHello, IngestBatch};
use crate::rbac::{RoleDef, RoleSource, Rule, RuleSpec};
use crate::store::testdb::{TestBackend, TestDatabase};

/// Hosts of every test: (id, team, env).
const HOSTS: &[(&str, &str, &str)] = &[
    ("h-a1", "a", "prod"),
    ("h-a2", "a", "dev"),
    ("h-b1", "b", "prod"),
    ("h-b2", "b", "dev"),
    ("h-c1", "c", "prod"),
];
/// The scope of the scoped tokens.
const SCOPE: &str = "team=a";

struct Api {
    store: Store,
    state: ApiState,
    admin: String,
}

async fn call(state: &ApiState, method: &str, path: &str, token: Option<&str>, body: Option<&Json>) -> Response<Bytes> {
    let mut req = warp::test::request().method(method).path(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    req.reply(&routes(state.clone())).await
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<&Json>) -> Response<Bytes> {
        call(&self.state, method, path, Some(token), body).await
    }

    /// A token with `role` and `scope` ("" unscoped), created by the admin.
    async fn token(&self, role: &str, scope: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/tokens",
                &self.admin,
                Some(&json!({ "name": format!("{role} {scope}"), "role": role, "scope": scope })),
            )
            .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        body(&r)["token"].as_str().unwrap().to_string()
    }

    /// Every page of a list, followed through `next_cursor`.
    async fn list_all(&self, path: &str, token: &str) -> Vec<Json> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=1&cursor={c}"),
                None => format!("{path}{sep}limit=1"),
            };
            let r = self.call("GET", &url, token, None).await;
            assert_eq!(r.status(), 200, "{url}: {:?}", r.body());
            let b = body(&r);
            items.extend(b["items"].as_array().unwrap().iter().cloned());
            match b["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return items,
            }
        }
    }
}

fn body(resp: &Response<Bytes>) -> Json {
    serde_json::from_slice(resp.body()).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.body()))
}

fn check(name: &str, at: i64) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: name.into(),
        status: CheckStatus::Ok,
        values: vec![],
        message: String::new(),
        observed_at_ms: at,
        duration_us: 1,
    }
}

async fn on_each_backend<F, Fut>(config_roles: Vec<RoleDef>, rate: (u32, u32), body: F)
where
    F: Fn(Api) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let now = steward_shared::now_ms();
        for (id, team, env) in HOSTS {
            let hello = AgentHello {
                agent_version: "1".into(),
                // Self-reported facts claiming another team must change nothing.
                facts: BTreeMap::from([
                    ("hostname".to_string(), id.to_string()),
                    ("team".to_string(), "a".to_string()),
                ]),
                spool_dropped_total: 0,
            };
            store.agent_connected(id, &hello, now).await.unwrap();
            let labels = BTreeMap::from([
                ("team".to_string(), team.to_string()),
                ("env".to_string(), env.to_string()),
            ]);
            store.set_host_labels(id, &labels).await.unwrap();
            let batch = IngestBatch {
                host_id: id.to_string(),
                results: vec![(1, check("disk", now)), (2, check("load", now))],
                spool_dropped_total: 0,
            };
            store.ingest(&[batch], now).await.unwrap();
        }
        let admin = create_admin_token(&store, "bootstrap", None).await.unwrap();
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60))
            .with_rbac(rbac::RbacApi::new(config_roles.clone(), rate.0, rate.1));
        body(Api {
            store: store.clone(),
            state,
            admin,
        })
        .await;
        store.close().await;
    }
}

/// The contract's built-in roles, written out independently of the evaluator.
fn contract_allows(role: &str, permission: &str) -> bool {
    let (resource, action) = permission.split_once(':').unwrap();
    match role {
        "viewer" => action == "read",
        "operator" => action == "read" || ["jobs", "backups", "alerts"].contains(&resource),
        "deployer" => action == "read" || ["jobs", "rollouts"].contains(&resource),
        "admin" => true,
        _ => unreachable!(),
    }
}

/// A concrete request for each route: (path, body). `{host}` is an
/// in-scope host, other IDs do not exist (so an allowed call is a 404, not a change).
fn request_for(method: &str, template: &str) -> (String, Option<Json>) {
    let path = template
        .replace("{host}", "h-a1")
        .replace("{id}", "nosuchtoken")
        .replace("{name}", "matrix-role");
    let path = if template == "/api/v1/kpis/{name}" {
        "/api/v1/kpis/agent_connectivity".to_string()
    } else {
        path
    };
    let body = match (method, template) {
        ("POST", "/api/v1/tokens") => Some(json!({ "name": "m", "role": "viewer", "scope": "team=a,env=prod" })),
        ("PUT", "/api/v1/roles/{name}") => Some(json!({
            "rules": [{ "effect": "allow", "permission": "hosts:read", "hosts": "team=a" }]
        })),
        ("PUT", "/api/v1/hosts/{host}/labels") => Some(json!({ "labels": { "team": "a", "env": "prod" } })),
        ("POST", "/api/v1/enrollment-tokens") => Some(json!({ "labels": { "team": "a" } })),
        ("POST", "/api/v1/jobs") => Some(json!({ "action": "checks.run", "host": "h-a1" })),
        ("PUT", "/api/v1/slos/{name}") => Some(json!({
            "indicator": { "type": "checkAvailability", "check": "http" },
            "objectives": [{ "target": 0.99 }],
            "timeWindow": [{ "duration": "7d" }]
        })),
        ("POST", "/api/v1/rollouts") => Some(json!({ "action": "checks.run", "selector": "team=a" })),
        (_, _) => None,
    };
    (path, body)
}

#[tokio::test]
async fn every_route_against_every_builtin_role_scoped_and_unscoped() {
    on_each_backend(vec![], (0, 0), |api| async move {
        let mut checked = 0;
        for role in ["viewer", "operator", "deployer", "admin"] {
            for scoped in [false, true] {
                let token = api.token(role, if scoped { SCOPE } else { "" }).await;
                for spec in TABLE {
                    let (path, body) = request_for(spec.method, spec.path);
                    let r = api.call(spec.method, &path, &token, body.as_ref()).await;
                    let status = r.status().as_u16();
                    assert!(
                        status < 500 || status == 503,
                        "{role} scoped={scoped} {} {path}: {status}",
                        spec.method
                    );
                    let want = match spec.permission {
                        None => true,
                        Some(p) => contract_allows(role, p) && !(scoped && spec.hosts == Hosts::Fleet),
                    };
                    let got = status != 403 && status != 401;
                    assert_eq!(
                        got,
                        want,
                        "{role} scoped={scoped}: {} {path} answered {status}: {:?}",
                        spec.method,
                        r.body()
                    );
                    if status == 403 {
                        assert_eq!(
                            r.headers()["content-type"],
                            "application/problem+json",
                            "{} {path}",
                            spec.method
                        );
                    }
                    checked += 1;
                }
                // Out-of-scope hosts: invisible to scoped tokens (404 like a
                // missing host), visible to unscoped ones per their role.
                for (method, path, permission, body) in [
                    ("GET", "/api/v1/hosts/h-b1", "hosts:read", None),
                    ("GET", "/api/v1/hosts/h-b1/checks", "checks:read", None),
                    ("GET", "/api/v1/checks?host=h-b1", "checks:read", None),
                    ("POST", "/api/v1/hosts/h-b1/revoke", "hosts:revoke", None),
                    (
                        "PUT",
                        "/api/v1/hosts/h-b1/labels",
                        "hosts:label",
                        Some(json!({ "labels": { "team": "b", "env": "prod" } })),
                    ),
                ] {
                    let r = api.call(method, path, &token, body.as_ref()).await;
                    let status = r.status().as_u16();
                    // A role without the permission is refused at the route
                    // (403, saying nothing about the host); with it, a scoped
                    // token gets the 404 of a host that does not exist.
                    let want = match (contract_allows(role, permission), scoped) {
                        (false, _) => 403,
                        (true, true) => 404,
                        (true, false) => 200,
                    };
                    assert_eq!(status, want, "{role} scoped={scoped}: {method} {path}: {:?}", r.body());
                }
                // Lists, followed page by page: never a host outside the scope.
                let hosts = api.list_all("/api/v1/hosts", &token).await;
                let checks = api.list_all("/api/v1/checks", &token).await;
                let all_checks_b = api.list_all("/api/v1/checks?selector=team%3Db", &token).await;
                let ids: BTreeSet<&str> = hosts.iter().map(|h| h["id"].as_str().unwrap()).collect();
                let check_hosts: BTreeSet<&str> = checks.iter().map(|c| c["host_id"].as_str().unwrap()).collect();
                if scoped {
                    assert_eq!(ids, BTreeSet::from(["h-a1", "h-a2"]), "{role}");
                    assert_eq!(check_hosts, BTreeSet::from(["h-a1", "h-a2"]), "{role}");
                    assert_eq!(checks.len(), 4, "{role}");
                    assert!(all_checks_b.is_empty(), "{role}: {all_checks_b:?}");
                } else {
                    assert_eq!(ids.len(), HOSTS.len(), "{role}");
                    assert_eq!(checks.len(), 2 * HOSTS.len(), "{role}");
                    assert_eq!(all_checks_b.len(), 4, "{role}");
                }
            }
        }
        assert_eq!(checked, 8 * TABLE.len());
    })
    .await;
}

#[tokio::test]
async fn a_relabelled_host_is_judged_by_its_new_labels_on_the_next_request() {
    on_each_backend(vec![], (0, 0), |api| async move {
        let viewer_a = api.token("viewer", SCOPE).await;
        let admin_a = api.token("admin", SCOPE).await;
        assert_eq!(
            api.call("GET", "/api/v1/hosts/h-b1", &viewer_a, None).await.status(),
            404
        );
        let r = api
            .call(
                "PUT",
                "/api/v1/hosts/h-b1/labels",
                &api.admin,
                Some(&json!({ "labels": { "team": "a", "env": "prod" } })),
            )
            .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(body(&r)["labels"]["team"], "a");
        let r = api.call("GET", "/api/v1/hosts/h-b1", &viewer_a, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(api.list_all("/api/v1/hosts", &viewer_a).await.len(), 3);
        // A scoped admin may not push a host out of its scope into another's.
        let r = api
            .call(
                "PUT",
                "/api/v1/hosts/h-a2/labels",
                &admin_a,
                Some(&json!({ "labels": { "team": "b" } })),
            )
            .await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert_eq!(api.list_all("/api/v1/hosts", &viewer_a).await.len(), 3);
        // Bad labels name the field.
        let r = api
            .call(
                "PUT",
                "/api/v1/hosts/h-a2/labels",
                &api.admin,
                Some(&json!({ "labels": { "": "x" } })),
            )
            .await;
        assert_eq!(r.status(), 400);
        assert_eq!(body(&r)["field"], "labels");
        let r = api
            .call(
                "PUT",
                "/api/v1/hosts/h-a2/labels",
                &api.admin,
                Some(&json!({ "labelz": {} })),
            )
            .await;
        assert_eq!(body(&r)["field"], "labelz");
        // Audited in the same transaction, as set_host_labels.
        let entries = api
            .store
            .list_audit(
                &AuditFilter {
                    action: Some("set_host_labels".into()),
                    ..AuditFilter::default()
                },
                None,
                100,
            )
            .await
            .unwrap()
            .items;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].target.as_deref(), Some("host:h-b1"));
    })
    .await;
}

#[tokio::test]
async fn nobody_creates_a_token_or_role_with_more_than_they_hold() {
    on_each_backend(vec![], (0, 0), |api| async move {
        let put_role = |name: &str, rules: Json| {
            let state = api.state.clone();
            let admin = api.admin.clone();
            let path = format!("/api/v1/roles/{name}");
            async move { call(&state, "PUT", &path, Some(&admin), Some(&json!({ "rules": rules }))).await }
        };
        assert_eq!(
            put_role(
                "token-maker",
                json!([
                    { "effect": "allow", "permission": "tokens:create" },
                    { "effect": "allow", "permission": "hosts:read" },
                ])
            )
            .await
            .status(),
            201
        );
        assert_eq!(
            put_role("host-reader", json!([{ "effect": "allow", "permission": "hosts:read" }])).await.status(),
            201
        );
        assert_eq!(
            put_role(
                "role-writer",
                json!([
                    { "effect": "allow", "permission": "roles:write" },
                    { "effect": "allow", "permission": "hosts:*" },
                ])
            )
            .await
            .status(),
            201
        );
        let maker = api.token("token-maker", "").await;
        let create = |token: String, role: &str, scope: &str| {
            let state = api.state.clone();
            let b = json!({ "name": "x", "role": role, "scope": scope });
            async move { call(&state, "POST", "/api/v1/tokens", Some(&token), Some(&b)).await }
        };
        // viewer grants *:read, which the maker lacks (e.g. audit:read).
        let r = create(maker.clone(), "viewer", "").await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert!(body(&r)["detail"].as_str().unwrap().contains("do not hold"), "{:?}", r.body());
        assert_eq!(create(maker.clone(), "admin", "").await.status(), 403);
        assert_eq!(create(maker.clone(), "token-maker", "").await.status(), 201);
        assert_eq!(create(maker.clone(), "host-reader", "env=prod").await.status(), 201);

        // Scope: no wider than one's own.
        let admin_a = api.token("admin", SCOPE).await;
        assert_eq!(create(admin_a.clone(), "viewer", "").await.status(), 403);
        assert_eq!(create(admin_a.clone(), "viewer", "team in (a,b)").await.status(), 403);
        assert_eq!(create(admin_a.clone(), "viewer", "team!=b").await.status(), 403);
        assert_eq!(create(admin_a.clone(), "admin", "team=a,env=prod").await.status(), 201);
        assert_eq!(create(admin_a.clone(), "viewer", SCOPE).await.status(), 201);

        // Roles: the writer cannot grant what it lacks, nor widen its own role.
        let writer = api.token("role-writer", "").await;
        let put = |token: String, name: &str, rules: Json| {
            let state = api.state.clone();
            let path = format!("/api/v1/roles/{name}");
            async move { call(&state, "PUT", &path, Some(&token), Some(&json!({ "rules": rules }))).await }
        };
        let r = put(writer.clone(), "mine", json!([{ "effect": "allow", "permission": "*:*" }])).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let r = put(
            writer.clone(),
            "role-writer",
            json!([{ "effect": "allow", "permission": "roles:write" }, { "effect": "allow", "permission": "tokens:create" }]),
        )
        .await;
        assert_eq!(r.status(), 403);
        let r = put(writer.clone(), "labeller", json!([{ "effect": "allow", "permission": "hosts:label", "hosts": "env=dev" }])).await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        // The writer's own token still works as before: nothing changed.
        assert_eq!(api.call("GET", "/api/v1/hosts", &writer, None).await.status(), 200);

        // Revocation: one's own token, or one granting nothing one lacks.
        let listed = api.list_all("/api/v1/tokens", &api.admin).await;
        let id_of = |token: &str| auth::parse_token(token).unwrap().0.to_string();
        let admin_id = id_of(&api.admin);
        assert!(listed.iter().any(|t| t["id"] == admin_id.as_str() && t["role"] == "admin"));
        assert!(listed.iter().all(|t| t.get("token").is_none()), "secrets listed");
        let r = api.call("DELETE", &format!("/api/v1/tokens/{admin_id}"), &admin_a, None).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let r = api.call("DELETE", &format!("/api/v1/tokens/{}", id_of(&admin_a)), &admin_a, None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(body(&r)["active"], false);
        assert_eq!(api.call("GET", "/api/v1/hosts", &admin_a, None).await.status(), 401);

        // Every refusal is in the audit log, with the permission or reason.
        let denied = api
            .store
            .list_audit(&AuditFilter::default(), None, 1000)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.outcome == "denied")
            .count();
        assert!(denied >= 8, "{denied}");
    })
    .await;
}

#[tokio::test]
async fn custom_roles_from_config_and_api_deny_wins_and_malformed_rules_are_refused() {
    let oncall = RoleDef {
        name: "oncall".into(),
        description: "from the config file".into(),
        rules: [
            ("allow", "*:read", None),
            ("allow", "hosts:revoke", Some("env=dev")),
            ("deny", "audit:*", None),
        ]
        .into_iter()
        .map(|(e, p, h)| {
            Rule::from_spec(&RuleSpec {
                effect: if e == "allow" {
                    rbac_effect(true)
                } else {
                    rbac_effect(false)
                },
                permission: p.into(),
                hosts: h.map(String::from),
            })
            .unwrap()
        })
        .collect(),
        source: RoleSource::Config,
    };
    on_each_backend(vec![oncall], (0, 0), |api| async move {
        let t = api.token("oncall", "").await;
        assert_eq!(api.call("GET", "/api/v1/hosts", &t, None).await.status(), 200);
        assert_eq!(api.call("GET", "/api/v1/audit", &t, None).await.status(), 403);
        assert_eq!(
            api.call("POST", "/api/v1/hosts/h-b1/revoke", &t, None).await.status(),
            403
        );
        assert_eq!(
            api.call("POST", "/api/v1/hosts/h-b2/revoke", &t, None).await.status(),
            200
        );
        let r = api.call("GET", "/api/v1/roles", &t, None).await;
        let names: Vec<String> = body(&r)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}:{}", r["name"].as_str().unwrap(), r["source"].as_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "admin:builtin",
                "deployer:builtin",
                "oncall:config",
                "operator:builtin",
                "viewer:builtin"
            ]
        );
        // Config and built-in roles are not writable through the API.
        let rules = json!({ "rules": [] });
        assert_eq!(
            api.call("PUT", "/api/v1/roles/oncall", &api.admin, Some(&rules))
                .await
                .status(),
            409
        );
        assert_eq!(
            api.call("PUT", "/api/v1/roles/viewer", &api.admin, Some(&rules))
                .await
                .status(),
            409
        );
        // Malformed permissions are refused when written, naming the field.
        for (rules, field) in [
            (
                json!([{ "effect": "allow", "permission": "jobs" }]),
                "rules[0].permission",
            ),
            (
                json!([{ "effect": "allow", "permission": "a:b" }, { "effect": "deny", "permission": "jo*:read" }]),
                "rules[1].permission",
            ),
            (
                json!([{ "effect": "allow", "permission": "a:b", "hosts": "env in (" }]),
                "rules[0].hosts",
            ),
            (json!([{ "effect": "maybe", "permission": "a:b" }]), "rules[0].effect"),
            (
                json!([{ "effect": "allow", "permission": "a:b", "colour": 1 }]),
                "rules[0].colour",
            ),
        ] {
            let r = api
                .call(
                    "PUT",
                    "/api/v1/roles/custom",
                    &api.admin,
                    Some(&json!({ "rules": rules })),
                )
                .await;
            assert_eq!(r.status(), 400, "{:?}", r.body());
            assert_eq!(body(&r)["field"], field, "{:?}", r.body());
        }
        assert_eq!(
            api.call("GET", "/api/v1/roles/custom", &api.admin, None).await.status(),
            404
        );
        // Order independence end to end: a deny anywhere wins.
        for rules in [
            json!([{ "effect": "deny", "permission": "hosts:read" }, { "effect": "allow", "permission": "*:*" }]),
            json!([{ "effect": "allow", "permission": "*:*" }, { "effect": "deny", "permission": "hosts:read" }]),
        ] {
            let r = api
                .call(
                    "PUT",
                    "/api/v1/roles/custom",
                    &api.admin,
                    Some(&json!({ "rules": rules })),
                )
                .await;
            assert!(r.status() == 201 || r.status() == 200, "{:?}", r.body());
            let t = api.token("custom", "").await;
            assert_eq!(api.call("GET", "/api/v1/hosts", &t, None).await.status(), 403);
            assert_eq!(api.call("GET", "/api/v1/checks", &t, None).await.status(), 200);
            let id = auth::parse_token(&t).unwrap().0.to_string();
            assert_eq!(
                api.call("DELETE", &format!("/api/v1/tokens/{id}"), &api.admin, None)
                    .await
                    .status(),
                200
            );
        }
        // A role in use cannot be deleted; then it can.
        let t = api.token("custom", "").await;
        assert_eq!(
            api.call("DELETE", "/api/v1/roles/custom", &api.admin, None)
                .await
                .status(),
            409
        );
        let id = auth::parse_token(&t).unwrap().0.to_string();
        api.call("DELETE", &format!("/api/v1/tokens/{id}"), &api.admin, None)
            .await;
        assert_eq!(
            api.call("DELETE", "/api/v1/roles/custom", &api.admin, None)
                .await
                .status(),
            200
        );
        assert_eq!(
            api.call("DELETE", "/api/v1/roles/custom", &api.admin, None)
                .await
                .status(),
            404
        );
        // Bad token requests name the field.
        for (b, field) in [
            (json!({ "name": "x", "role": "nosuch" }), "role"),
            (json!({ "name": "x", "role": "viewer", "scope": "team in (" }), "scope"),
            (json!({ "name": "x", "role": "viewer", "ttl": "0s" }), "ttl"),
            (json!({ "name": "", "role": "viewer" }), "name"),
            (json!({ "name": "x", "role": "viewer", "rank": 1 }), "rank"),
        ] {
            let r = api.call("POST", "/api/v1/tokens", &api.admin, Some(&b)).await;
            assert_eq!(r.status(), 400, "{b}: {:?}", r.body());
            assert_eq!(body(&r)["field"], field, "{:?}", r.body());
        }
    })
    .await;
}

fn rbac_effect(allow: bool) -> crate::rbac::Effect {
    if allow {
        crate::rbac::Effect::Allow
    } else {
        crate::rbac::Effect::Deny
    }
}

#[tokio::test]
async fn tokens_expire_and_denials_are_audited_within_the_budget() {
    on_each_backend(vec![], (0, 0), |api| async move {
        let r = api
            .call(
                "POST",
                "/api/v1/tokens",
                &api.admin,
                Some(&json!({ "name": "short", "role": "viewer", "ttl": "1s" })),
            )
            .await;
        assert_eq!(r.status(), 201);
        let b = body(&r);
        let short = b["token"].as_str().unwrap().to_string();
        assert!(b["expires_at_ms"].as_i64().unwrap() > b["created_at_ms"].as_i64().unwrap());
        assert_eq!(api.call("GET", "/api/v1/hosts", &short, None).await.status(), 200);
        // Wait (on the store's clock, not a sleep) until the token is expired, bounded.
        let expired = tokio::time::timeout(Duration::from_secs(30), async {
            while auth::token_is_valid(&api.store, &short).await {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(expired.is_ok(), "a 1s token still valid after 30s");
        assert_eq!(api.call("GET", "/api/v1/hosts", &short, None).await.status(), 401);

        let viewer = api.token("viewer", "").await;
        let r = api.call("POST", "/api/v1/hosts/h-a1/revoke", &viewer, None).await;
        assert_eq!(r.status(), 403);
        let b = body(&r);
        assert_eq!(b["type"], "urn:steward:problem:forbidden");
        assert!(b["detail"].as_str().unwrap().contains("hosts:revoke"), "{b}");
        let entries = api
            .store
            .list_audit(
                &AuditFilter {
                    action: Some(rbac::API_AUTHORIZE.into()),
                    ..AuditFilter::default()
                },
                None,
                100,
            )
            .await
            .unwrap()
            .items;
        let last = entries.last().expect("denial audited");
        assert_eq!(last.outcome, "denied");
        let details: Json = serde_json::from_str(&last.details).unwrap();
        assert_eq!(details["permission"], "hosts:revoke");
        assert_eq!(last.actor, format!("token:{}", auth::parse_token(&viewer).unwrap().0));
    })
    .await;
}

#[tokio::test]
async fn rate_limits_are_per_token_with_retry_after() {
    on_each_backend(vec![], (1, 2), |api| async move {
        let other = create_admin_token(&api.store, "other", None).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(api.call("GET", "/api/v1/roles", &api.admin, None).await);
        }
        let last = statuses.pop().unwrap();
        assert!(statuses.iter().all(|r| r.status() == 200));
        assert_eq!(last.status(), 429);
        assert_eq!(last.headers()["content-type"], "application/problem+json");
        let retry: u64 = last.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        assert_eq!(body(&last)["status"], 429);
        // Another token has its own budget; public routes have none.
        assert_eq!(api.call("GET", "/api/v1/roles", &other, None).await.status(), 200);
        for _ in 0..5 {
            assert_eq!(call(&api.state, "GET", "/healthz", None, None).await.status(), 200);
        }
    })
    .await;
}

#[tokio::test]
async fn every_route_in_the_table_is_served_and_labelled() {
    on_each_backend(vec![], (0, 0), |api| async move {
        for spec in TABLE {
            let (path, body) = request_for(spec.method, spec.path);
            assert_eq!(route_template(&path), spec.path);
            let r = call(&api.state, spec.method, &path, None, body.as_ref()).await;
            let want = if spec.permission.is_some() { 401 } else { 200 };
            assert_eq!(r.status().as_u16(), want, "{} {path}", spec.method);
        }
        let mut seen = BTreeSet::new();
        for spec in TABLE {
            assert!(
                seen.insert((spec.method, spec.path)),
                "duplicate row {} {}",
                spec.method,
                spec.path
            );
            if let Some(p) = spec.permission {
                assert!(crate::rbac::Pattern::parse(p).is_ok() && !p.contains('*'), "{p}");
            }
        }
        assert_eq!(route_template("/api/v1/nope"), "unmatched");
        // A 405 names exactly the route's methods.
        let r = call(&api.state, "PATCH", "/api/v1/roles/x", Some(&api.admin), None).await;
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, PUT, DELETE");
        let r = call(&api.state, "GET", "/api/v1/hosts/x/revoke", Some(&api.admin), None).await;
        assert_eq!(r.headers()["allow"], "POST");
    })
    .await;
}

#[test]
fn the_openapi_document_has_exactly_the_routes_of_the_table() {
    let doc: Json = serde_json::from_str(openapi::document_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let table: BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = table.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    assert!(extra.is_empty(), "documented routes that do not exist: {extra:?}");
    // Public routes need no token in the document either.
    for spec in TABLE.iter().filter(|s| s.permission.is_none()) {
        let op = &doc["paths"][spec.path][spec.method.to_lowercase()];
        assert_eq!(op["security"], json!([{}]), "{}", spec.path);
    }
}

/// A finished local `backup.run` of backup `pg` on `host` (as an agent reports it).
async fn backup_ran(store: &Store, host: &str, seq: u64) {
    use crate::jobs::{JobEventKind, JobReport};
    use crate::store::jobs::{JobBatch, JobIngest};
    let now = steward_shared::now_ms();
    let result = r#"{"backup":"pg","snapshot":"s1","files":1,"bytes":10,"duration_ms":1,"deleted":[],"verified":null,"rpo_secs":3600}"#;
    let report = JobReport {
        seq,
        job_id: String::new(),
        attempt_id: format!("local-{host}-{seq}"),
        event: JobEventKind::Finished {
            outcome: "succeeded".into(),
            reason: String::new(),
            result_json: result.into(),
            finished_at_ms: now,
            action: "backup.run".into(),
            params: [("name".to_string(), "pg".to_string())].into(),
            started_at_ms: now - 1,
        },
    };
    let batch = IngestBatch {
        host_id: host.into(),
        results: vec![],
        spool_dropped_total: 0,
    };
    let jobs = [JobBatch {
        host_id: host.into(),
        reports: vec![report],
    }];
    let ingest = JobIngest {
        batches: &jobs,
        settings: Default::default(),
    };
    store.ingest_with_jobs(&[batch], &ingest, now).await.unwrap();
}

#[tokio::test]
async fn job_routes_keep_scoped_tokens_to_their_hosts() {
    // A custom role that may create jobs on dev hosts only.
    let dev_jobs = RoleDef {
        name: "dev-jobs".into(),
        description: String::new(),
        rules: vec![
            Rule::from_spec(&RuleSpec {
                effect: rbac_effect(true),
                permission: "*:read".into(),
                hosts: None,
            })
            .unwrap(),
            Rule::from_spec(&RuleSpec {
                effect: rbac_effect(true),
                permission: "jobs:create".into(),
                hosts: Some("env=dev".into()),
            })
            .unwrap(),
        ],
        source: RoleSource::Config,
    };
    on_each_backend(vec![dev_jobs], (0, 0), |api| async move {
        let create = |body: Json, token: String| {
            let api = &api;
            async move { api.call("POST", "/api/v1/jobs", &token, Some(&body)).await }
        };
        // Jobs on every host, one of team b with an idempotency key.
        let mut job_of = BTreeMap::new();
        for (host, _, _) in HOSTS {
            let key = if *host == "h-b1" { json!("key-b") } else { json!(null) };
            let r = create(
                json!({ "action": "checks.run", "host": host, "idempotency_key": key }),
                api.admin.clone(),
            )
            .await;
            assert_eq!(r.status(), 201, "{:?}", r.body());
            job_of.insert(*host, body(&r)["items"][0]["id"].as_str().unwrap().to_string());
        }
        for (i, (host, _, _)) in HOSTS.iter().enumerate() {
            backup_ran(&api.store, host, 100 + i as u64).await;
        }
        let operator_a = api.token("operator", SCOPE).await;
        let viewer_a = api.token("viewer", SCOPE).await;

        // Lists, page by page: only team a's jobs and backups.
        let jobs = api.list_all("/api/v1/jobs", &operator_a).await;
        let hosts: BTreeSet<&str> = jobs.iter().map(|j| j["host_id"].as_str().unwrap()).collect();
        assert_eq!(hosts, BTreeSet::from(["h-a1", "h-a2"]));
        // Per host: the job created above and the recorded local backup run.
        assert_eq!(jobs.len(), 4);
        assert_eq!(api.list_all("/api/v1/jobs", &api.admin).await.len(), 2 * HOSTS.len());
        let r = api.call("GET", "/api/v1/backups", &operator_a, None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let backups: BTreeSet<String> = body(&r)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["host_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(backups, BTreeSet::from(["h-a1".to_string(), "h-a2".to_string()]));
        let r = api.call("GET", "/api/v1/backups", &api.admin, None).await;
        assert_eq!(body(&r)["items"].as_array().unwrap().len(), HOSTS.len());
        for path in ["/api/v1/jobs?host=h-b1", "/api/v1/backups?host=h-b1"] {
            let r = api.call("GET", path, &operator_a, None).await;
            assert_eq!(r.status(), 404, "{path}: {:?}", r.body());
        }

        // One job of another team: as if it did not exist.
        let b1 = &job_of["h-b1"];
        for (method, path) in [
            ("GET", format!("/api/v1/jobs/{b1}")),
            ("GET", format!("/api/v1/jobs/{b1}/output")),
            ("POST", format!("/api/v1/jobs/{b1}/cancel")),
        ] {
            let r = api.call(method, &path, &operator_a, None).await;
            assert_eq!(r.status(), 404, "{method} {path}: {:?}", r.body());
        }
        // Its own team's job: readable; a viewer may not cancel it (403), an operator may.
        let a1 = &job_of["h-a1"];
        let r = api.call("GET", &format!("/api/v1/jobs/{a1}"), &viewer_a, None).await;
        assert_eq!(r.status(), 200);
        let r = api
            .call("GET", &format!("/api/v1/jobs/{a1}/output"), &viewer_a, None)
            .await;
        assert_eq!(r.status(), 200);
        let r = api
            .call("POST", &format!("/api/v1/jobs/{a1}/cancel"), &viewer_a, None)
            .await;
        assert_eq!(r.status(), 403);
        let r = api
            .call("POST", &format!("/api/v1/jobs/{a1}/cancel"), &operator_a, None)
            .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(body(&r)["state"], "cancelled");

        // Creating: another team's host is a 404; a selector fans out only
        // to the hosts in scope; one matching none of them is a 400.
        let r = create(json!({ "action": "checks.run", "host": "h-b1" }), operator_a.clone()).await;
        assert_eq!(r.status(), 404, "{:?}", r.body());
        assert_eq!(body(&r)["field"], "host");
        let r = create(
            json!({ "action": "checks.run", "selector": "env=prod" }),
            operator_a.clone(),
        )
        .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let items = body(&r)["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["host_id"], "h-a1");
        let r = create(
            json!({ "action": "checks.run", "selector": "team=b" }),
            operator_a.clone(),
        )
        .await;
        assert_eq!(r.status(), 400, "{:?}", r.body());
        assert_eq!(body(&r)["field"], "selector");
        // An idempotency key of another scope's request: a conflict naming
        // the key, saying nothing about that job.
        let r = create(
            json!({ "action": "checks.run", "host": "h-a1", "idempotency_key": "key-b" }),
            operator_a.clone(),
        )
        .await;
        assert_eq!(r.status(), 409, "{:?}", r.body());
        assert_eq!(body(&r)["field"], "idempotency_key");
        assert!(!String::from_utf8_lossy(r.body()).contains(b1.as_str()));
        // The key's own scope gets its jobs back.
        let r = create(
            json!({ "action": "checks.run", "host": "h-b1", "idempotency_key": "key-b" }),
            api.admin.clone(),
        )
        .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(body(&r)["items"][0]["id"], b1.as_str());

        // A role allowed jobs:create on dev hosts only: the selector fans
        // out to those; prod hosts alone are an audited 403.
        let dev = api.token("dev-jobs", "").await;
        let r = create(
            json!({ "action": "checks.run", "selector": "team in (a,b)" }),
            dev.clone(),
        )
        .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let hosts: BTreeSet<String> = body(&r)["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["host_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(hosts, BTreeSet::from(["h-a2".to_string(), "h-b2".to_string()]));
        let r = create(json!({ "action": "checks.run", "selector": "env=prod" }), dev.clone()).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let r = create(json!({ "action": "checks.run", "host": "h-c1" }), dev.clone()).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let denied = api
            .store
            .list_audit(
                &AuditFilter {
                    action: Some("api.authorize".into()),
                    ..AuditFilter::default()
                },
                None,
                1000,
            )
            .await
            .unwrap();
        assert!(
            denied
                .items
                .iter()
                .filter(|e| e.details.to_string().contains("jobs:create"))
                .count()
                >= 2,
            "{:?}",
            denied.items
        );
    })
    .await;
}

#[tokio::test]
async fn kpis_of_a_scoped_token_count_only_its_hosts() {
    on_each_backend(vec![], (0, 0), |api| async move {
        api.store
            .agent_disconnected("h-b1", steward_shared::now_ms())
            .await
            .unwrap();
        let admin = api.admin.clone();
        let scoped = api.token("viewer", SCOPE).await;
        let value = |j: &Json, name: &str| -> Option<f64> {
            j["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["name"] == name)
                .unwrap()["value"]
                .as_f64()
        };
        // unscoped: 4 of 5 hosts connected, 10 results all ok
        let all = body(&api.call("GET", "/api/v1/kpis", &admin, None).await);
        assert_eq!(all["hosts"], 5);
        assert_eq!(value(&all, "agent_connectivity"), Some(0.8));
        assert_eq!(value(&all, "check_pass_ratio"), Some(1.0));
        assert_eq!(all["missing"], json!([]));
        // the control plane's own requests (so far: creating the scoped token, 201), once flushed
        assert_eq!(value(&all, "api_availability"), None);
        api.state.api_sli.stats.flush(&api.store).await;
        let all = body(&api.call("GET", "/api/v1/kpis?selector=team%3Db", &admin, None).await);
        assert_eq!(value(&all, "api_availability"), Some(1.0), "whatever the selector");
        assert!(value(&all, "api_latency_p95").is_some());
        let mine = body(&api.call("GET", "/api/v1/kpis", &scoped, None).await);
        assert_eq!(
            value(&mine, "api_availability"),
            None,
            "control-plane-wide: not for a scope"
        );
        assert_eq!(value(&mine, "api_latency_p95"), None);
        // scoped to team=a: only h-a1 and h-a2, also with a selector asking for more
        let mine = body(
            &api.call("GET", "/api/v1/kpis?selector=env%20in%20(prod,dev)", &scoped, None)
                .await,
        );
        assert_eq!(mine["hosts"], 2);
        assert_eq!(value(&mine, "agent_connectivity"), Some(1.0));
        let r = api
            .call("GET", "/api/v1/kpis/agent_connectivity?group_by=team", &scoped, None)
            .await;
        let one = body(&r);
        let groups = one["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{one}");
        assert_eq!(groups[0]["value_of_label"], "a");
        assert_eq!(one["trend"].as_array().unwrap().len(), 0);
        assert!(one["trend_note"].is_string());
        // the admin grouped by team sees b at 1/2
        let by_team = body(
            &api.call(
                "GET",
                "/api/v1/kpis/agent_connectivity?group_by=team&window=7d",
                &admin,
                None,
            )
            .await,
        );
        let b = by_team["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["value_of_label"] == "b")
            .unwrap();
        assert_eq!(b["value"].as_f64(), Some(0.5));
        // bad input: 400 problem+json naming the field; unknown KPI: 404
        for (path, field) in [
            ("/api/v1/kpis?window=soon", "window"),
            ("/api/v1/kpis?window=0s", "window"),
            ("/api/v1/kpis?colour=red", "colour"),
            ("/api/v1/kpis?group_by=team", "group_by"),
            ("/api/v1/kpis/check_pass_ratio?selector=a%20in", "selector"),
            ("/api/v1/kpis/check_pass_ratio?group_by=bad%20label", "group_by"),
        ] {
            let r = api.call("GET", path, &admin, None).await;
            assert_eq!(r.status(), 400, "{path}");
            assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
            assert_eq!(body(&r)["field"], field, "{path}");
        }
        let r = api.call("GET", "/api/v1/kpis/rollout_success_rate", &admin, None).await;
        assert_eq!(r.status(), 200);
        let r = api.call("GET", "/api/v1/kpis/nope", &admin, None).await;
        assert_eq!(r.status(), 404);
    })
    .await;
}

fn allow(p: &str, hosts: Option<&str>) -> Rule {
    rule_of(true, p, hosts)
}

fn rule_of(allow: bool, p: &str, hosts: Option<&str>) -> Rule {
    Rule::from_spec(&RuleSpec {
        effect: rbac_effect(allow),
        permission: p.into(),
        hosts: hosts.map(String::from),
    })
    .unwrap()
}

fn config_role(name: &str, rules: Vec<Rule>) -> RoleDef {
    RoleDef {
        name: name.into(),
        description: String::new(),
        rules,
        source: RoleSource::Config,
    }
}

/// Host-limited custom roles against every route, on unscoped tokens: a
/// rule limited to some hosts opens the routes about hosts (filtered or
/// checked per host) and the grant routes (checked by the handler), never a
/// fleet-wide route (audit, silences) nor one about no host (roles, SLOs,
/// the token list); complementary limits that together cover every host
/// count as unlimited; a host-limited deny makes a permission limited.
#[tokio::test]
async fn every_route_against_host_limited_custom_roles() {
    let roles = vec![
        config_role("web-all", vec![allow("*:*", Some("team=a"))]),
        config_role("web-reader", vec![allow("*:read", Some("team=a"))]),
        config_role(
            "split",
            vec![allow("*:*", Some("env=prod")), allow("*:*", Some("env!=prod"))],
        ),
        config_role(
            "no-prod-alerts",
            vec![allow("*:*", None), rule_of(false, "alerts:*", Some("env=prod"))],
        ),
    ];
    on_each_backend(roles, (0, 0), |api| async move {
        for role in ["web-all", "web-reader", "split", "no-prod-alerts"] {
            let token = api.token(role, "").await;
            for spec in TABLE {
                let Some(permission) = spec.permission else { continue };
                let (resource, action) = permission.split_once(':').unwrap();
                let want = match role {
                    "web-all" => !matches!(spec.hosts, Hosts::Fleet | Hosts::Global),
                    "web-reader" => action == "read" && !matches!(spec.hosts, Hosts::Fleet | Hosts::Global),
                    "split" => true,
                    // Minting a viewer (alerts:read on prod hosts too) is an escalation for it.
                    "no-prod-alerts" => {
                        !(resource == "alerts" && spec.hosts == Hosts::Fleet) && permission != "tokens:create"
                    }
                    _ => unreachable!(),
                };
                let (path, body) = request_for(spec.method, spec.path);
                let r = api.call(spec.method, &path, &token, body.as_ref()).await;
                let status = r.status().as_u16();
                assert!(status < 500 || status == 503, "{role} {} {path}: {status}", spec.method);
                assert_eq!(
                    status != 403 && status != 401,
                    want,
                    "{role}: {} {path} answered {status}: {:?}",
                    spec.method,
                    r.body()
                );
            }
        }
        // The confirmed escalation: a host-limited role read the whole audit
        // log and silenced every team's alerts.
        let web = api.token("web-all", "").await;
        assert_eq!(api.call("GET", "/api/v1/audit", &web, None).await.status(), 403);
        let silence = json!({ "matchers": { "team": "b" }, "duration": "366d", "comment": "x" });
        let r = api.call("POST", "/api/v1/silences", &web, Some(&silence)).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert!(
            body(&r)["detail"].as_str().unwrap().contains("some hosts only"),
            "{:?}",
            r.body()
        );
    })
    .await;
}

/// A relabelling or an enrollment token may not move a host into a token
/// scope or role rule beyond the caller's reach (`team=a` adding `env=prod`
/// while a token is scoped to `env=prod`), but may set keys no scope or rule
/// uses, and move hosts within selectors it fully holds.
#[tokio::test]
async fn labels_cannot_pull_a_host_into_another_scope() {
    on_each_backend(vec![], (0, 0), |api| async move {
        let api = Api {
            state: api
                .state
                .clone()
                .with_enrollment(Some("ab".repeat(32)), Duration::from_secs(3600)),
            ..api
        };
        let admin_a = api.token("admin", SCOPE).await;
        let _prod = api.token("deployer", "env=prod").await;
        let put = |host: &str, labels: Json| {
            let (state, token, path) = (
                api.state.clone(),
                admin_a.clone(),
                format!("/api/v1/hosts/{host}/labels"),
            );
            async move { call(&state, "PUT", &path, Some(&token), Some(&json!({ "labels": labels }))).await }
        };
        // h-a2 is team=a, env=dev: adding env=prod would hand it to the prod deployer.
        let r = put("h-a2", json!({ "team": "a", "env": "prod" })).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert!(
            body(&r)["detail"].as_str().unwrap().contains("env=prod"),
            "{:?}",
            r.body()
        );
        let r = put("h-a2", json!({ "team": "a" })).await;
        assert_eq!(r.status(), 200, "removing env changes no scope's reach: {:?}", r.body());
        // A key no scope or rule uses is free; the host stays where it was.
        let r = put("h-a2", json!({ "team": "a", "rack": "r7" })).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        // The unscoped admin may do it.
        let r = call(
            &api.state,
            "PUT",
            "/api/v1/hosts/h-a2/labels",
            Some(&api.admin),
            Some(&json!({ "labels": { "team": "a", "env": "prod" } })),
        )
        .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());

        // Enrollment tokens: same rule for the labels new hosts will get.
        let enroll = |token: String, labels: Json| {
            let state = api.state.clone();
            async move {
                call(
                    &state,
                    "POST",
                    "/api/v1/enrollment-tokens",
                    Some(&token),
                    Some(&json!({ "labels": labels })),
                )
                .await
            }
        };
        let r = enroll(admin_a.clone(), json!({ "team": "a" })).await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        assert_eq!(body(&r)["labels"], json!({ "team": "a" }));
        let r = enroll(admin_a.clone(), json!({ "team": "a", "env": "prod" })).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        // Outside its own scope: refused too (the review's missing test).
        let r = enroll(admin_a.clone(), json!({ "team": "b" })).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let r = enroll(admin_a.clone(), json!({})).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        let r = enroll(api.admin.clone(), json!({ "team": "b", "env": "prod" })).await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let created = api
            .store
            .list_audit(
                &AuditFilter {
                    action: Some("enrollment_tokens.create".into()),
                    ..AuditFilter::default()
                },
                None,
                100,
            )
            .await
            .unwrap()
            .items;
        assert_eq!(created.len(), 2, "only the allowed ones were made");
    })
    .await;
}

/// Minted tokens expire no later than their maker and are revoked with it
/// (transitively); roles are replaced or deleted only by someone holding
/// what they grant now; a rollout needs `jobs:create` on its targets.
#[tokio::test]
async fn minted_tokens_roles_and_rollouts_stay_within_the_makers_authority() {
    let roller = config_role("roller", vec![allow("*:read", None), allow("rollouts:*", None)]);
    on_each_backend(vec![roller], (0, 0), |api| async move {
        let mint = |token: String, b: Json| {
            let state = api.state.clone();
            async move { call(&state, "POST", "/api/v1/tokens", Some(&token), Some(&b)).await }
        };
        let r = mint(
            api.admin.clone(),
            json!({ "name": "hour", "role": "admin", "ttl": "1h" }),
        )
        .await;
        assert_eq!(r.status(), 201);
        let hour = body(&r);
        let hour_token = hour["token"].as_str().unwrap().to_string();
        let r = mint(hour_token.clone(), json!({ "name": "forever", "role": "admin" })).await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let forever = body(&r);
        assert_eq!(
            forever["expires_at_ms"], hour["expires_at_ms"],
            "capped to its maker's expiry"
        );
        let r = mint(
            forever["token"].as_str().unwrap().to_string(),
            json!({ "name": "grandchild", "role": "viewer", "ttl": "300d" }),
        )
        .await;
        assert_eq!(r.status(), 201);
        let grandchild = body(&r);
        assert!(grandchild["expires_at_ms"].as_i64() <= hour["expires_at_ms"].as_i64());
        let r = api
            .call(
                "DELETE",
                &format!("/api/v1/tokens/{}", hour["id"].as_str().unwrap()),
                &api.admin,
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        for t in [&forever, &grandchild] {
            assert_eq!(
                api.call("GET", "/api/v1/hosts", t["token"].as_str().unwrap(), None)
                    .await
                    .status(),
                401,
                "a token minted by a revoked one is revoked: {t}"
            );
        }
        let listed = api.list_all("/api/v1/tokens", &api.admin).await;
        let active = |id: &Json| listed.iter().find(|t| &t["id"] == id).unwrap()["active"].clone();
        assert_eq!(active(&forever["id"]), json!(false));
        assert_eq!(active(&grandchild["id"]), json!(false));

        // Roles: replacing or deleting needs what the role grants now.
        let put = |token: String, name: &str, rules: Json| {
            let (state, path) = (api.state.clone(), format!("/api/v1/roles/{name}"));
            async move { call(&state, "PUT", &path, Some(&token), Some(&json!({ "rules": rules }))).await }
        };
        let r = put(
            api.admin.clone(),
            "big",
            json!([{ "effect": "allow", "permission": "*:*" }]),
        )
        .await;
        assert_eq!(r.status(), 201);
        let r = put(
            api.admin.clone(),
            "role-writer",
            json!([
                { "effect": "allow", "permission": "roles:*" },
                { "effect": "allow", "permission": "hosts:*" },
            ]),
        )
        .await;
        assert_eq!(r.status(), 201);
        let writer = api.token("role-writer", "").await;
        let r = put(
            writer.clone(),
            "big",
            json!([{ "effect": "allow", "permission": "hosts:read" }]),
        )
        .await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert_eq!(
            api.call("DELETE", "/api/v1/roles/big", &writer, None).await.status(),
            403
        );
        assert_eq!(
            api.call("GET", "/api/v1/roles/big", &api.admin, None).await.status(),
            200
        );
        let r = put(
            writer.clone(),
            "small",
            json!([{ "effect": "allow", "permission": "hosts:read" }]),
        )
        .await;
        assert_eq!(r.status(), 201);
        assert_eq!(
            api.call("DELETE", "/api/v1/roles/small", &writer, None).await.status(),
            200
        );

        // The heaviest role bodies: decided, or 422 naming the field; never a hang.
        for rules in crate::rbac::tests::worst_policies() {
            let specs: Vec<RuleSpec> = rules.iter().map(Rule::to_spec).collect();
            let r = put(api.admin.clone(), "heavy", serde_json::to_value(&specs).unwrap()).await;
            let status = r.status().as_u16();
            assert!(
                status == 201 || status == 200 || status == 422,
                "{status}: {:?}",
                r.body()
            );
            if status == 422 {
                assert_eq!(body(&r)["field"], "rules");
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
        }

        // Rollouts: rollouts:write alone does not run an action on hosts.
        let roller = api.token("roller", "").await;
        let r = api
            .call(
                "POST",
                "/api/v1/rollouts",
                &roller,
                Some(&json!({ "action": "exec", "params": { "command": "true" }, "selector": "team=a" })),
            )
            .await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        assert!(
            body(&r)["detail"].as_str().unwrap().contains("jobs:create"),
            "{:?}",
            r.body()
        );
        let deployer = api.token("deployer", "").await;
        let r = api
            .call(
                "POST",
                "/api/v1/rollouts",
                &deployer,
                Some(&json!({ "action": "checks.run", "selector": "team=a" })),
            )
            .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
    })
    .await;
}
