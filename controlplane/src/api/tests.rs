//! REST API tests through `warp::test::request()` (no socket) against a real
//! store, on every selected backend.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::Value as Json;
use steward_shared::status::{CheckResult, CheckStatus, Value};

use super::*;
use crate::model::{AgentHello, IngestBatch, Role};
use crate::store::testdb::{TestBackend, TestDatabase};

struct Api {
    store: Store,
    state: ApiState,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Response<Bytes> {
        self.get_with(path, Some(&format!("Bearer {}", self.token))).await
    }

    async fn get_with(&self, path: &str, authorization: Option<&str>) -> Response<Bytes> {
        let mut req = warp::test::request().method("GET").path(path);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        req.reply(&routes(self.state.clone())).await
    }
}

/// Runs `body` against an API over a fresh store of every selected backend,
/// with hosts `id-0`..`id-6` (hostname `web-N`, label env=prod for even N),
/// `id-1` seen long ago, and two checks per host.
async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Api) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let now = steward_shared::now_ms();
        for i in 0..7 {
            let id = format!("id-{i}");
            let seen = if i == 1 { now - 3_600_000 } else { now };
            let hello = AgentHello {
                agent_version: "0.1.0".into(),
                facts: BTreeMap::from([("hostname".to_string(), format!("web-{i}"))]),
                spool_dropped_total: i,
            };
            store.agent_connected(&id, &hello, seen).await.unwrap();
            let env = if i % 2 == 0 { "prod" } else { "staging" };
            store
                .set_host_labels(&id, &BTreeMap::from([("env".to_string(), env.to_string())]))
                .await
                .unwrap();
            let results = vec![
                (1, check("disk", CheckStatus::Ok, now)),
                (
                    2,
                    check(
                        "tls",
                        if i == 3 {
                            CheckStatus::Critical
                        } else {
                            CheckStatus::Warning
                        },
                        now,
                    ),
                ),
            ];
            store
                .ingest(
                    &[IngestBatch {
                        host_id: id,
                        results,
                        spool_dropped_total: i,
                    }],
                    seen,
                )
                .await
                .unwrap();
        }
        let token = create_admin_token(&store, "test", None).await.unwrap();
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60));
        body(Api {
            store: store.clone(),
            state,
            token,
        })
        .await;
        store.close().await;
    }
}

fn check(name: &str, status: CheckStatus, at: i64) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: name.into(),
        status,
        values: vec![Value::new("used", 12.5, "percent")],
        message: format!("{name} {status}"),
        observed_at_ms: at,
        duration_us: 10,
    }
}

fn body(resp: &Response<Bytes>) -> Json {
    serde_json::from_slice(resp.body()).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.body()))
}

fn content_type(resp: &Response<Bytes>) -> &str {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts a problem+json response with `status` (and `field`, if given).
fn assert_problem(resp: &Response<Bytes>, status: u16, field: Option<&str>) -> Json {
    assert_eq!(resp.status().as_u16(), status, "{:?}", resp.body());
    assert_eq!(content_type(resp), "application/problem+json");
    let b = body(resp);
    assert_eq!(b["status"], status);
    for key in ["type", "title", "detail"] {
        assert!(
            b[key].as_str().is_some_and(|s| !s.is_empty()),
            "problem without {key}: {b}"
        );
    }
    if let Some(field) = field {
        assert_eq!(b["field"], field, "{b}");
    }
    assert!(resp.headers().contains_key("x-request-id"));
    b
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    on_each_backend(|api| async move {
        let r = api.get_with("/healthz", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body(&r), serde_json::json!({ "status": "ok" }));
        let r = api.get_with("/readyz", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body(&r)["database"], api.store.backend_name());

        api.get("/api/v1/hosts").await;
        let r = api.get_with("/metrics", None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(content_type(&r), "text/plain; version=0.0.4; charset=utf-8");
        let text = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(text.contains("steward_hosts 7"), "{text}");
        assert!(text.contains("steward_hosts_online 6"), "{text}");
        assert!(text.contains("steward_spool_dropped_reported 21"), "{text}");
        assert!(
            text.contains(r#"steward_http_requests_total{method="GET",route="/api/v1/hosts",status="2xx"} 1"#),
            "{text}"
        );

        api.store.close().await;
        assert_problem(&api.get_with("/readyz", None).await, 503, None);
    })
    .await;
}

#[tokio::test]
async fn every_api_route_requires_a_valid_token() {
    on_each_backend(|api| async move {
        let viewer = create_token(&api.store, "v", Role::Viewer, None).await.unwrap();
        let expiring = create_token(&api.store, "e", Role::Viewer, Some(Duration::from_millis(1)))
            .await
            .unwrap();
        let revoked = create_token(&api.store, "r", Role::Admin, None).await.unwrap();
        let (revoked_id, _) = auth::parse_token(&revoked).unwrap();
        let revoke = crate::audit::AuditEntry::new("system", auth::TOKENS_REVOKE, crate::audit::Outcome::Success);
        assert!(auth::revoke_token_by(&api.store, revoke, revoked_id).await.unwrap());
        let (id, _) = auth::parse_token(&api.token).unwrap();
        let wrong_secret = format!("stw_{id}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        // Wait (on the store's clock, not a sleep) until the short token is expired, bounded.
        let expired = tokio::time::timeout(Duration::from_secs(30), async {
            while auth::token_is_valid(&api.store, &expiring).await {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(expired.is_ok(), "a 1 ms token still valid after 30 s");

        for path in [
            "/api/v1/hosts",
            "/api/v1/hosts/id-0",
            "/api/v1/hosts/id-0/checks",
            "/api/v1/checks",
        ] {
            assert_eq!(api.get(path).await.status(), 200, "{path}");
            assert_eq!(
                api.get_with(path, Some(&format!("Bearer {viewer}"))).await.status(),
                200,
                "{path}"
            );
            let mut details = Vec::new();
            for auth in [
                None,
                Some(String::new()),
                Some("Bearer".to_string()),
                Some(format!("Basic {}", api.token)),
                Some("Bearer stw_nope_nope".to_string()),
                Some("Bearer not-a-token".to_string()),
                Some(format!("Bearer {wrong_secret}")),
                Some(format!("Bearer {revoked}")),
                Some(format!("Bearer {expiring}")),
            ] {
                let r = api.get_with(path, auth.as_deref()).await;
                let b = assert_problem(&r, 401, None);
                assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"steward\"");
                details.push(b["detail"].to_string());
            }
            details.dedup();
            assert_eq!(details.len(), 1, "every 401 says the same thing");
        }
    })
    .await;
}

#[tokio::test]
async fn bad_parameters_are_400_problems_naming_the_field() {
    on_each_backend(|api| async move {
        let cases = [
            ("/api/v1/hosts?selector=env%3D%3D%3Dx", "selector"),
            ("/api/v1/hosts?selector=env+in+(a", "selector"),
            ("/api/v1/hosts?limit=0", "limit"),
            ("/api/v1/hosts?limit=abc", "limit"),
            ("/api/v1/hosts?limit=1001", "limit"),
            ("/api/v1/hosts?limit=99999999999999999999999", "limit"),
            ("/api/v1/hosts?cursor=garbage", "cursor"),
            ("/api/v1/hosts?limit=1&limit=2", "limit"),
            ("/api/v1/hosts?selecter=env%3Dprod", "selecter"),
            ("/api/v1/hosts/id-0?verbose=1", "verbose"),
            ("/api/v1/checks?status=bad", "status"),
            ("/api/v1/checks?status=OK", "status"),
            ("/api/v1/checks?cursor=WyJoMSIsImlkLTAiXQ", "cursor"),
            ("/api/v1/hosts/id-0/checks?selector=env%3Dprod", "selector"),
            ("/api/v1/hosts?selector=%ff", "selector"),
        ];
        for (path, field) in cases {
            let b = assert_problem(&api.get(path).await, 400, Some(field));
            if field == "selector" && !path.contains("%ff") && !path.contains("checks") {
                assert!(b["detail"].as_str().unwrap().contains("position"), "{path}: {b}");
            }
        }
        // A cursor of the hosts list is refused by the checks list.
        let page = body(&api.get("/api/v1/hosts?limit=1").await);
        let c = page["next_cursor"].as_str().unwrap();
        assert_problem(
            &api.get(&format!("/api/v1/checks?cursor={c}")).await,
            400,
            Some("cursor"),
        );
        // Odd but harmless input is not an error: empty free-text values mean "not given".
        for path in ["/api/v1/hosts?", "/api/v1/hosts?&&", "/api/v1/hosts?selector=&cursor="] {
            assert_eq!(api.get(path).await.status(), 200, "{path}");
        }
        for path in [
            "/api/v1/hosts?%",
            "/api/v1/hosts?=",
            "/api/v1/hosts?=x",
            "/api/v1/checks?host=%00",
            "/api/v1/hosts/a%00b",
            "/api/v1/hosts/%ff/checks",
            "/api/v1/hosts?cursor=%00",
            // A typed value must be valid when given: the schema says integer or enum.
            "/api/v1/hosts?limit=",
            "/api/v1/checks?status=",
            "/api/v1/jobs?state=",
            "/api/v1/alerts?severity=",
            "/api/v1/audit?since=",
            // A list refuses a cursor it did not hand out.
            "/api/v1/enrollment-tokens?cursor=R%C3%AF",
            "/api/v1/slos?cursor=zz",
        ] {
            let r = api.get(path).await;
            assert!(r.status().is_client_error(), "{path}: {}", r.status());
            assert_eq!(content_type(&r), "application/problem+json");
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_methods_and_hosts_are_problems() {
    on_each_backend(|api| async move {
        for path in [
            "/",
            "/nope",
            "/api/v1",
            "/api/v1/nope",
            "/api/v1/hosts/id-0/nope",
            "/api/v2/hosts",
        ] {
            assert_problem(&api.get(path).await, 404, None);
        }
        let r = warp::test::request()
            .method("POST")
            .path("/api/v1/hosts")
            .reply(&routes(api.state.clone()))
            .await;
        assert_problem(&r, 405, None);
        assert_eq!(r.headers()["allow"], "GET");
        let r = warp::test::request()
            .method("DELETE")
            .path("/healthz")
            .reply(&routes(api.state.clone()))
            .await;
        assert_problem(&r, 405, None);

        let b = assert_problem(&api.get("/api/v1/hosts/ghost").await, 404, Some("host"));
        assert!(b["detail"].as_str().unwrap().contains("\"ghost\""), "{b}");
        assert_problem(&api.get("/api/v1/hosts/ghost/checks").await, 404, Some("host"));
        assert_problem(&api.get("/api/v1/checks?host=ghost").await, 404, Some("host"));

        // Two hosts claiming one hostname: 409, asking for the ID.
        let hello = AgentHello {
            facts: BTreeMap::from([("hostname".to_string(), "web-0".to_string())]),
            ..AgentHello::default()
        };
        api.store.agent_connected("id-dup", &hello, 1).await.unwrap();
        let b = assert_problem(&api.get("/api/v1/hosts/web-0").await, 409, Some("host"));
        assert!(b["detail"].as_str().unwrap().contains("id-0"), "{b}");
        assert_eq!(api.get("/api/v1/hosts/id-0").await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn hosts_list_paginates_and_filters_by_selector() {
    on_each_backend(|api| async move {
        for (query, expected) in [
            ("limit=3", vec!["id-0", "id-1", "id-2", "id-3", "id-4", "id-5", "id-6"]),
            ("limit=2&selector=env%3Dprod", vec!["id-0", "id-2", "id-4", "id-6"]),
            ("limit=1&selector=env+notin+(prod)", vec!["id-1", "id-3", "id-5"]),
            ("selector=env%3Dnone", vec![]),
        ] {
            let mut ids = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/api/v1/hosts?{query}&cursor={c}"),
                    None => format!("/api/v1/hosts?{query}"),
                };
                let r = api.get(&path).await;
                assert_eq!(r.status(), 200, "{path}");
                assert_eq!(content_type(&r), "application/json");
                let b = body(&r);
                ids.extend(
                    b["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h["id"].as_str().unwrap().to_string()),
                );
                match b["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => {
                        assert!(b["next_cursor"].is_null());
                        break;
                    }
                }
            }
            assert_eq!(ids, expected, "{query}");
        }
    })
    .await;
}

#[tokio::test]
async fn host_view_shows_liveness_labels_facts_and_check_counts() {
    on_each_backend(|api| async move {
        let h = body(&api.get("/api/v1/hosts/web-3").await);
        assert_eq!(h["id"], "id-3");
        assert_eq!(h["hostname"], "web-3");
        assert_eq!(h["labels"], serde_json::json!({ "env": "staging" }));
        assert_eq!(h["facts"]["hostname"], "web-3");
        assert_eq!(
            (h["online"].as_bool(), h["connected"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(
            h["checks"],
            serde_json::json!({ "ok": 1, "warning": 0, "critical": 1, "unknown": 0 })
        );
        assert_eq!(
            (h["last_seq"].as_u64(), h["spool_dropped_total"].as_u64()),
            (Some(2), Some(3))
        );
        let last_seen = h["last_seen"].as_str().unwrap();
        assert!(last_seen.len() == 24 && last_seen.ends_with('Z'), "{last_seen}");

        let stale = body(&api.get("/api/v1/hosts/id-1").await);
        assert_eq!(stale["online"], false);
        // Percent-encoded path segments are decoded.
        assert_eq!(body(&api.get("/api/v1/hosts/id%2D2").await)["id"], "id-2");
    })
    .await;
}

#[tokio::test]
async fn checks_list_filters_by_status_host_and_selector() {
    on_each_backend(|api| async move {
        let b = body(&api.get("/api/v1/checks?status=critical").await);
        let items = b["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        let c = &items[0];
        assert_eq!(
            (c["host_id"].as_str(), c["hostname"].as_str(), c["name"].as_str()),
            (Some("id-3"), Some("web-3"), Some("tls"))
        );
        assert_eq!(c["status"], "critical");
        assert_eq!(
            c["values"],
            serde_json::json!([{ "name": "used", "value": 12.5, "unit": "percent" }])
        );
        for key in ["kind", "message", "observed_at_ms", "observed_at", "duration_us", "seq"] {
            assert!(!c[key].is_null(), "check view without {key}");
        }

        let b = body(&api.get("/api/v1/checks?host=web-2&status=warning").await);
        assert_eq!(b["items"].as_array().unwrap().len(), 1);
        let b = body(&api.get("/api/v1/checks?selector=env%3Dprod&limit=3").await);
        assert_eq!(b["items"].as_array().unwrap().len(), 3);
        assert!(b["next_cursor"].is_string());
        let b = body(&api.get("/api/v1/hosts/id-4/checks").await);
        let names: Vec<&str> = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["disk", "tls"]);
        let b = body(&api.get("/api/v1/hosts/id-4/checks?status=ok").await);
        assert_eq!(b["items"].as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    on_each_backend(|api| async move {
        let routes = routes(api.state.clone());
        let r = warp::test::request()
            .path("/healthz")
            .header("x-request-id", "abc-123.x:y_z")
            .reply(&routes)
            .await;
        assert_eq!(r.headers()["x-request-id"], "abc-123.x:y_z");
        for bad in ["has space", "", &"x".repeat(200)] {
            let r = warp::test::request()
                .path("/api/v1/nope")
                .header("x-request-id", bad)
                .reply(&routes)
                .await;
            let id = r.headers()["x-request-id"].to_str().unwrap();
            assert_eq!(id.len(), 16, "{bad:?} replaced by a generated ID");
        }
        let a = warp::test::request().path("/healthz").reply(&routes).await;
        let b = warp::test::request().path("/healthz").reply(&routes).await;
        assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    })
    .await;
}

#[test]
fn route_templates_are_bounded() {
    assert_eq!(route_template("/api/v1/hosts/abc"), "/api/v1/hosts/{host}");
    assert_eq!(
        route_template("/api/v1/hosts/abc/checks"),
        "/api/v1/hosts/{host}/checks"
    );
    assert_eq!(route_template("/api/v1/hosts/"), "/api/v1/hosts");
    assert_eq!(route_template("/random/junk/1234"), "unmatched");
}

/// Reads accept a unique hostname; changes (revoke, relabel, a job) take the
/// host ID only: a hostname is what the agent says about itself.
#[tokio::test]
async fn changes_resolve_hosts_by_id_never_by_hostname() {
    on_each_backend(|api| async move {
        let send = |method: &str, path: &str, body: Option<serde_json::Value>| {
            let mut req = warp::test::request()
                .method(method)
                .path(path)
                .header("authorization", format!("Bearer {}", api.token));
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_string());
            }
            let state = api.state.clone();
            async move { req.reply(&routes(state)).await }
        };
        assert_eq!(
            api.get("/api/v1/hosts/web-3").await.status(),
            200,
            "reads take a hostname"
        );
        let labels = serde_json::json!({ "labels": { "env": "prod" } });
        let job = serde_json::json!({ "action": "checks.run", "host": "web-3" });
        for (method, path, body, field) in [
            ("POST", "/api/v1/hosts/web-3/revoke", None, "host"),
            ("PUT", "/api/v1/hosts/web-3/labels", Some(labels.clone()), "host"),
            ("POST", "/api/v1/jobs", Some(job), "host"),
        ] {
            let r = send(method, path, body).await;
            assert_eq!(r.status(), 404, "{method} {path}: {:?}", r.body());
            let b: Json = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(b["field"], field);
        }
        assert_eq!(api.store.revoked_hosts().await.unwrap().len(), 0, "nothing revoked");
        let r = send("PUT", "/api/v1/hosts/id-3/labels", Some(labels)).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let r = send("POST", "/api/v1/hosts/id-3/revoke", None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
    })
    .await;
}
