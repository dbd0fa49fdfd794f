//! Alert and silence routes through `warp::test::request()` against a real
//! store, on every selected backend: filters and pages, scoped visibility,
//! ack (audited), silences (validation naming the field, expiry).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value as Json, json};

use super::*;
use crate::alert::{Candidate, Severity};
use crate::model::AgentHello;
use crate::store::testdb::{TestBackend, TestDatabase};

async fn call(state: &ApiState, token: &str, method: &str, path: &str, body: Option<Json>) -> Response<Bytes> {
    let mut req = warp::test::request()
        .method(method)
        .path(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    req.reply(&routes(state.clone())).await
}

fn json_of(resp: &Response<Bytes>) -> Json {
    serde_json::from_slice(resp.body()).unwrap()
}

fn host_alert(host: &str, severity: Severity) -> Candidate {
    Candidate {
        severity,
        summary: format!("{host} is silent"),
        labels: BTreeMap::from([
            ("alertname".to_string(), "HostSilent".to_string()),
            ("host".to_string(), host.to_string()),
        ]),
    }
}

async fn token(state: &ApiState, admin: &str, role: &str, scope: &str) -> String {
    let r = call(
        state,
        admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({ "name": format!("{role} {scope}"), "role": role, "scope": scope })),
    )
    .await;
    assert_eq!(r.status(), 201, "{:?}", r.body());
    json_of(&r)["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn alerts_are_listed_filtered_scoped_acknowledged_and_silenced() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let now = steward_shared::now_ms();
        for (id, team) in [("h-a1", "a"), ("h-b1", "b")] {
            let hello = AgentHello {
                agent_version: "1".into(),
                facts: BTreeMap::from([("hostname".to_string(), id.to_string())]),
                spool_dropped_total: 0,
            };
            store.agent_connected(id, &hello, now).await.unwrap();
            store
                .set_host_labels(id, &BTreeMap::from([("team".to_string(), team.to_string())]))
                .await
                .unwrap();
        }
        let admin = create_admin_token(&store, "test", None).await.unwrap();
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60));
        let none = |_: &crate::alert::Alert| Vec::<String>::new();
        store
            .reconcile_alerts(
                "host_silent",
                &[
                    host_alert("h-a1", Severity::Critical),
                    host_alert("h-b1", Severity::Warning),
                ],
                &none,
                now - 2,
            )
            .await
            .unwrap();
        let fleet = Candidate {
            severity: Severity::Error,
            summary: "rollout r-1 rolled back".into(),
            labels: BTreeMap::from([
                ("alertname".to_string(), "RolloutRolledBack".to_string()),
                ("rollout".to_string(), "r-1".to_string()),
            ]),
        };
        store
            .reconcile_alerts("rollout", std::slice::from_ref(&fleet), &none, now - 1)
            .await
            .unwrap();

        // Every alert, newest first, page by page.
        let r = call(&state, &admin, "GET", "/api/v1/alerts?state=firing&limit=2", None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let page = json_of(&r);
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert_eq!(page["items"][0]["source"], "rollout");
        let cursor = page["next_cursor"].as_str().unwrap().to_string();
        let r = call(
            &state,
            &admin,
            "GET",
            &format!("/api/v1/alerts?state=firing&limit=2&cursor={cursor}"),
            None,
        )
        .await;
        let page = json_of(&r);
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert!(page["next_cursor"].is_null());
        let r = call(&state, &admin, "GET", "/api/v1/alerts?severity=critical", None).await;
        let items = json_of(&r)["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["labels"]["host"], "h-a1");
        let a1 = items[0]["id"].as_str().unwrap().to_string();
        let r = call(&state, &admin, "GET", "/api/v1/alerts?state=resolved", None).await;
        assert!(json_of(&r)["items"].as_array().unwrap().is_empty());

        // Bad input names the field.
        for (path, field) in [
            ("/api/v1/alerts?state=burning", "state"),
            ("/api/v1/alerts?severity=loud", "severity"),
            ("/api/v1/alerts?cursor=zzz", "cursor"),
            ("/api/v1/alerts?colour=red", "colour"),
            ("/api/v1/silences?state=maybe", "state"),
        ] {
            let r = call(&state, &admin, "GET", path, None).await;
            assert_eq!(r.status(), 400, "{path}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            assert_eq!(json_of(&r)["field"], field, "{path}");
        }

        // A token scoped to team=a sees h-a1's alert only, and cannot ack others (404).
        let scoped = token(&state, &admin, "operator", "team=a").await;
        let r = call(&state, &scoped, "GET", "/api/v1/alerts", None).await;
        let items = json_of(&r)["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0]["labels"]["host"], "h-a1");
        let others: Vec<String> = store
            .list_alerts(None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.id != a1)
            .map(|a| a.id)
            .collect();
        for id in &others {
            let r = call(&state, &scoped, "POST", &format!("/api/v1/alerts/{id}/ack"), None).await;
            assert_eq!(r.status(), 404);
            let r = call(&state, &scoped, "GET", &format!("/api/v1/alerts/{id}"), None).await;
            assert_eq!(r.status(), 404);
        }
        // Silences are fleet-wide: not for scoped tokens.
        let r = call(&state, &scoped, "GET", "/api/v1/silences", None).await;
        assert_eq!(r.status(), 403);

        // Ack: by the token, audited once, a second ack keeps the first; viewers may not.
        let viewer = token(&state, &admin, "viewer", "").await;
        let r = call(&state, &viewer, "POST", &format!("/api/v1/alerts/{a1}/ack"), None).await;
        assert_eq!(r.status(), 403);
        let r = call(&state, &scoped, "POST", &format!("/api/v1/alerts/{a1}/ack"), None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let acked_by = json_of(&r)["acked_by"].as_str().unwrap().to_string();
        assert!(acked_by.starts_with("token:"));
        let r = call(&state, &admin, "POST", &format!("/api/v1/alerts/{a1}/ack"), None).await;
        assert_eq!(json_of(&r)["acked_by"], acked_by.as_str());
        let r = call(&state, &admin, "POST", "/api/v1/alerts/nosuch/ack", None).await;
        assert_eq!((r.status().as_u16(), json_of(&r)["field"].clone()), (404, json!("id")));
        let r = call(&state, &viewer, "GET", &format!("/api/v1/alerts/{a1}"), None).await;
        assert_eq!(json_of(&r)["acked_by"], acked_by.as_str());

        // Silences: validation names the field; created, listed, expired, all audited.
        for (body, field) in [
            (json!({"duration": "1h", "comment": "x"}), "matchers"),
            (json!({"matchers": [], "duration": "1h", "comment": "x"}), "matchers"),
            (
                json!({"matchers": [{"name": "host", "value": "h-b1", "regex": true}], "duration": "1h", "comment": "x"}),
                "matchers[0].regex",
            ),
            (
                json!({"matchers": [{"name": "host", "value": "h-b1"}], "duration": "forever", "comment": "x"}),
                "duration",
            ),
            (
                json!({"matchers": [{"name": "host", "value": "h-b1"}], "duration": "1h"}),
                "comment",
            ),
        ] {
            let r = call(&state, &admin, "POST", "/api/v1/silences", Some(body.clone())).await;
            assert_eq!(r.status(), 400, "{body}: {:?}", r.body());
            assert_eq!(json_of(&r)["field"], field, "{body}");
        }
        let r = call(
            &state,
            &admin,
            "POST",
            "/api/v1/silences",
            Some(json!({"matchers": [{"name": "host", "value": "h-b1"}], "duration": "2h", "comment": "disk swap"})),
        )
        .await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let sil = json_of(&r);
        assert_eq!(sil["active"], true);
        let sid = sil["id"].as_str().unwrap().to_string();
        let ends = sil["ends_ms"].as_i64().unwrap() - sil["starts_ms"].as_i64().unwrap();
        assert_eq!(ends, 7_200_000);
        let r = call(&state, &admin, "GET", "/api/v1/silences?state=active", None).await;
        assert_eq!(json_of(&r)["items"][0]["id"], sid.as_str());
        // While it lasts, a new h-b1 alert fires silenced.
        let route = |_: &crate::alert::Alert| vec!["hook".to_string()];
        let fired = store
            .reconcile_alerts(
                "check_critical",
                &[Candidate {
                    severity: Severity::Critical,
                    summary: "disk critical".into(),
                    labels: BTreeMap::from([
                        ("alertname".to_string(), "CheckCritical".to_string()),
                        ("host".to_string(), "h-b1".to_string()),
                        ("check".to_string(), "disk".to_string()),
                    ]),
                }],
                &route,
                steward_shared::now_ms(),
            )
            .await
            .unwrap();
        assert!(fired.fired[0].silenced);
        assert!(store.undelivered_notifications().await.unwrap().is_empty());
        let r = call(&state, &admin, "DELETE", &format!("/api/v1/silences/{sid}"), None).await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        assert_eq!(json_of(&r)["active"], false);
        let r = call(&state, &admin, "GET", "/api/v1/silences?state=active", None).await;
        assert!(json_of(&r)["items"].as_array().unwrap().is_empty());
        let r = call(&state, &admin, "DELETE", "/api/v1/silences/nosuch", None).await;
        assert_eq!(r.status(), 404);

        let actions: Vec<String> = store
            .list_audit(&Default::default(), None, 1000)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .filter(|a| a.starts_with("alerts.ack") || a.starts_with("silences."))
            .collect();
        assert_eq!(actions, ["alerts.ack", "silences.create", "silences.expire"]);
        store.close().await;
    }
}
