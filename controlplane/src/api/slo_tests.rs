//! SLO routes through `warp::test::request()` against a real store, on every
//! selected backend.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value as Json, json};
use steward_shared::status::{CheckResult, CheckStatus};

use super::*;
use crate::model::IngestBatch;
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

fn web_slo() -> Json {
    json!({
        "description": "home page",
        "indicator": {"type": "checkAvailability", "check": "http", "selector": "env=prod"},
        "objectives": [{"target": 0.9}],
        "timeWindow": [{"duration": "7d"}],
        "alerting": {"minEvents": 1}
    })
}

#[tokio::test]
async fn slos_are_defined_validated_counted_and_shown() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let token = create_admin_token(&store, "test", None).await.unwrap();
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60));

        // Validation names the field.
        for (body, field) in [
            (
                json!({"indicator": {"type": "checkAvailability", "check": "http"}, "objectives": [{"target": 2}], "timeWindow": [{"duration": "7d"}]}),
                "objectives[0].target",
            ),
            (
                json!({"indicator": {"type": "checkAvailability", "check": "http"}, "objectives": [{"target": 0.9}], "timeWindow": [{"duration": "5s"}]}),
                "timeWindow[0].duration",
            ),
            (
                json!({"indicator": {"type": "nope"}, "objectives": [{"target": 0.9}], "timeWindow": [{"duration": "7d"}]}),
                "indicator.type",
            ),
            (
                json!({"objectives": [{"target": 0.9}], "timeWindow": [{"duration": "7d"}], "colour": 1}),
                "colour",
            ),
        ] {
            let r = call(&state, &token, "PUT", "/api/v1/slos/web", Some(body)).await;
            assert_eq!(r.status(), 400, "{:?}", r.body());
            assert_eq!(json_of(&r)["field"], field);
        }
        let r = call(&state, &token, "PUT", "/api/v1/slos/Bad%20Name", Some(web_slo())).await;
        assert_eq!(
            (r.status().as_u16(), json_of(&r)["field"].clone()),
            (400, json!("name"))
        );

        let r = call(&state, &token, "PUT", "/api/v1/slos/web", Some(web_slo())).await;
        assert_eq!(r.status(), 201, "{:?}", r.body());
        let r = call(&state, &token, "PUT", "/api/v1/slos/web", Some(web_slo())).await;
        assert_eq!(r.status(), 200);

        // Results ingested after the definition count.
        let now = steward_shared::now_ms();
        store
            .ingest(
                &[IngestBatch {
                    host_id: "h1".into(),
                    results: vec![],
                    spool_dropped_total: 0,
                }],
                now,
            )
            .await
            .unwrap();
        store
            .set_host_labels("h1", &[("env".to_string(), "prod".to_string())].into())
            .await
            .unwrap();
        let results = (1..=10)
            .map(|i| {
                let status = if i <= 7 { CheckStatus::Ok } else { CheckStatus::Critical };
                (
                    i,
                    CheckResult {
                        name: "http".into(),
                        kind: "http".into(),
                        status,
                        values: vec![],
                        message: String::new(),
                        observed_at_ms: now,
                        duration_us: 5,
                    },
                )
            })
            .collect();
        store
            .ingest(
                &[IngestBatch {
                    host_id: "h1".into(),
                    results,
                    spool_dropped_total: 0,
                }],
                now,
            )
            .await
            .unwrap();

        let r = call(&state, &token, "GET", "/api/v1/slos/web", None).await;
        assert_eq!(r.status(), 200);
        let s = json_of(&r);
        assert_eq!(s["events"], 10);
        assert!((s["sli"].as_f64().unwrap() - 0.7).abs() < 1e-12);
        // 30 % bad against a 10 % budget: burn 3 on the 5m window, budget overspent twice.
        assert!(
            (s["burn_rates"][0]["burn_rate"].as_f64().unwrap() - 3.0).abs() < 1e-9,
            "{s}"
        );
        assert!((s["budget_remaining"].as_f64().unwrap() + 2.0).abs() < 1e-9);
        assert_eq!(s["tiers"].as_array().unwrap().len(), 4);
        assert!(s["budget_history"].as_array().unwrap().len() > 1);
        assert_eq!(s["spec"]["indicator"]["check"], "http");

        let r = call(&state, &token, "GET", "/api/v1/slos", None).await;
        let list = json_of(&r);
        assert_eq!(list["items"][0]["name"], "web");
        assert!(
            list["items"][0]["firing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "ticket-3d"),
            "{list}"
        );
        let r = call(&state, &token, "GET", "/api/v1/slos/none", None).await;
        assert_eq!(r.status(), 404);
        let r = call(&state, &token, "GET", "/api/v1/slos?colour=1", None).await;
        assert_eq!(r.status(), 400);

        // The control plane's own availability: requests are counted and flushed.
        let api = json!({"indicator": {"type": "apiAvailability"}, "objectives": [{"target": 0.99}], "timeWindow": [{"duration": "1d"}]});
        assert_eq!(
            call(&state, &token, "PUT", "/api/v1/slos/api", Some(api))
                .await
                .status(),
            201
        );
        for _ in 0..3 {
            call(&state, &token, "GET", "/api/v1/slos", None).await;
        }
        // Pages of one: `api`, then `web` after the opaque cursor, then no more.
        let first = json_of(&call(&state, &token, "GET", "/api/v1/slos?limit=1", None).await);
        assert_eq!(first["items"][0]["name"], "api", "{first}");
        let cursor = first["next_cursor"].as_str().unwrap();
        assert_ne!(cursor, "api", "the cursor is opaque");
        let path = format!("/api/v1/slos?limit=1&cursor={cursor}");
        let second = json_of(&call(&state, &token, "GET", &path, None).await);
        assert_eq!(second["items"][0]["name"], "web", "{second}");
        assert!(second["next_cursor"].is_null(), "{second}");
        crate::slo::engine::flush(&store, &state.api_sli).await;
        let s = json_of(&call(&state, &token, "GET", "/api/v1/slos/api", None).await);
        assert!(s["events"].as_u64().unwrap() >= 3, "{s}");
        assert_eq!(s["events"], s["good_events"]);
        store.close().await;
    }
}
