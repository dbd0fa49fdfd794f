//! Enrollment-token routes through `warp::test::request()` against a real
//! store, on every selected backend: host-bound tokens, the `hosts:reenroll`
//! grant for naming an existing host, listing and revoking.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value as Json, json};

use super::*;
use crate::model::AgentHello;
use crate::store::testdb::{TestBackend, TestDatabase};

async fn call(state: &ApiState, method: &str, path: &str, token: &str, body: Option<&Json>) -> Response<Bytes> {
    let mut req = warp::test::request()
        .method(method)
        .path(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    req.reply(&routes(state.clone())).await
}

fn body(r: &Response<Bytes>) -> Json {
    serde_json::from_slice(r.body()).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body()))
}

/// A store with host `web-01` (team=web) and `db-01` (team=db), an API with
/// enrollment enabled, an admin token and the given role (rules) on a token.
async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(ApiState, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let now = steward_shared::now_ms();
        for (id, team) in [("web-01", "web"), ("db-01", "db")] {
            store.agent_connected(id, &AgentHello::default(), now).await.unwrap();
            store
                .set_host_labels(id, &BTreeMap::from([("team".to_string(), team.to_string())]))
                .await
                .unwrap();
        }
        let admin = create_admin_token(&store, "test", None).await.unwrap();
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60))
            .with_enrollment(Some("ab".repeat(32)), Duration::from_secs(600));
        body(state, admin).await;
        store.close().await;
    }
}

/// A token of a custom role with `rules`, made by the admin.
async fn token_with_rules(state: &ApiState, admin: &str, role: &str, rules: Json) -> String {
    let r = call(
        state,
        "PUT",
        &format!("/api/v1/roles/{role}"),
        admin,
        Some(&json!({ "rules": rules })),
    )
    .await;
    assert!(r.status().is_success(), "{:?}", r.body());
    let r = call(
        state,
        "POST",
        "/api/v1/tokens",
        admin,
        Some(&json!({ "name": role, "role": role })),
    )
    .await;
    assert_eq!(r.status(), 201, "{:?}", r.body());
    body(&r)["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_name_their_hosts_and_are_listed_and_revoked() {
    on_each_backend(|state, admin| async move {
        // Bad host entries are refused, naming the field.
        for hosts in [json!([]), json!(["Web 01"]), json!(["web-**"])] {
            let r = call(
                &state,
                "POST",
                "/api/v1/enrollment-tokens",
                &admin,
                Some(&json!({ "hosts": hosts })),
            )
            .await;
            assert_eq!(r.status(), 400, "{hosts}: {:?}", r.body());
            assert_eq!(body(&r)["field"], "hosts");
        }
        let r = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &admin,
            Some(&json!({ "hosts": ["web-01", "new-*"], "labels": { "team": "web" }, "uses": 2 })),
        )
        .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let created = body(&r);
        assert_eq!(created["hosts"], json!(["web-01", "new-*"]));
        let id = created["id"].as_str().unwrap().to_string();
        // Listed, without its secret.
        let r = call(&state, "GET", "/api/v1/enrollment-tokens", &admin, None).await;
        assert_eq!(r.status(), 200);
        let list = body(&r);
        let item = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id.as_str())
            .unwrap()
            .clone();
        assert_eq!(item["state"], "active");
        assert_eq!(
            (item["uses_left"].as_i64(), item["max_uses"].as_i64()),
            (Some(2), Some(2))
        );
        assert_eq!(item["hosts"], json!(["web-01", "new-*"]));
        assert!(!r.body().windows(5).any(|w| w == b"stwe_"), "no secret in the list");
        // Paged one at a time, every token comes back once, in ID order.
        let all: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        let (mut paged, mut cursor) = (Vec::new(), None::<String>);
        for _ in 0..=all.len() {
            let path = match &cursor {
                Some(c) => format!("/api/v1/enrollment-tokens?limit=1&cursor={c}"),
                None => "/api/v1/enrollment-tokens?limit=1".to_string(),
            };
            let page = body(&call(&state, "GET", &path, &admin, None).await);
            paged.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(paged, all);
        // Revoked: listed as such; a second revoke is a 404.
        let r = call(
            &state,
            "DELETE",
            &format!("/api/v1/enrollment-tokens/{id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(body(&r)["state"], "revoked");
        let r = call(
            &state,
            "DELETE",
            &format!("/api/v1/enrollment-tokens/{id}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(r.status(), 404);
        let actions: Vec<String> = state
            .store
            .list_audit(&Default::default(), None, 100)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert!(actions.iter().any(|a| a == "enrollment_tokens.revoke"), "{actions:?}");
    })
    .await;
}

#[tokio::test]
async fn naming_an_existing_host_needs_hosts_reenroll_on_it() {
    on_each_backend(|state, admin| async move {
        // May create tokens for team=web hosts, but not re-enroll existing ones.
        let enroller = token_with_rules(
            &state,
            &admin,
            "web-enroller",
            json!([
                { "effect": "allow", "permission": "enrollment-tokens:*", "hosts": "team=web" },
                { "effect": "allow", "permission": "hosts:read" }
            ]),
        )
        .await;
        let mint = |hosts: Json| {
            let (state, enroller) = (state.clone(), enroller.clone());
            async move {
                call(
                    &state,
                    "POST",
                    "/api/v1/enrollment-tokens",
                    &enroller,
                    Some(&json!({ "labels": { "team": "web" }, "hosts": hosts })),
                )
                .await
            }
        };
        // New host IDs and patterns: allowed.
        assert_eq!(mint(json!(["web-99", "web-1*"])).await.status(), 201);
        // An existing host's exact ID: a takeover once revoked, so refused.
        let r = mint(json!(["web-01"])).await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        // With the grant on that host: allowed.
        let reenroller = token_with_rules(
            &state,
            &admin,
            "web-reenroller",
            json!([
                { "effect": "allow", "permission": "enrollment-tokens:*", "hosts": "team=web" },
                { "effect": "allow", "permission": "hosts:reenroll", "hosts": "team=web" }
            ]),
        )
        .await;
        let r = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &reenroller,
            Some(&json!({ "labels": { "team": "web" }, "hosts": ["web-01"] })),
        )
        .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        // But not on another team's host.
        let r = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &reenroller,
            Some(&json!({ "labels": { "team": "web" }, "hosts": ["db-01"] })),
        )
        .await;
        assert_eq!(r.status(), 403, "{:?}", r.body());
        // The team=web enroller sees only team=web tokens and cannot revoke others.
        let r = call(
            &state,
            "POST",
            "/api/v1/enrollment-tokens",
            &admin,
            Some(&json!({ "labels": { "team": "db" } })),
        )
        .await;
        let db_token = body(&r)["id"].as_str().unwrap().to_string();
        let r = call(&state, "GET", "/api/v1/enrollment-tokens", &enroller, None).await;
        assert_eq!(r.status(), 200);
        let items = body(&r)["items"].as_array().unwrap().clone();
        assert!(!items.is_empty());
        assert!(items.iter().all(|t| t["labels"]["team"] == "web"), "{items:?}");
        let r = call(
            &state,
            "DELETE",
            &format!("/api/v1/enrollment-tokens/{db_token}"),
            &enroller,
            None,
        )
        .await;
        assert_eq!(r.status(), 404, "another team's token is invisible");
    })
    .await;
}
