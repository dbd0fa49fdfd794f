//! REST tests of the audit routes and of the audit record of refused
//! requests, through `warp::test::request()` against a real store of every
//! selected backend.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::Value as Json;

use super::*;
use crate::audit::export;
use crate::audit::signing::Signer;
use crate::store::testdb::{TestBackend, TestDatabase};

struct Api {
    store: Store,
    /// Signs exports; records at most 3 refused requests a minute.
    state: ApiState,
    token: String,
    signer: Arc<Signer>,
}

impl Api {
    async fn get(&self, path: &str) -> Response<Bytes> {
        self.request(path, Some(&self.token), None).await
    }

    async fn request(&self, path: &str, token: Option<&str>, request_id: Option<&str>) -> Response<Bytes> {
        let mut req = warp::test::request().method("GET").path(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        req.reply(&routes(self.state.clone())).await
    }
}

async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Api) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let token = create_admin_token(&store, "test", None).await.unwrap();
        let signer = Arc::new(Signer::generate().unwrap());
        let state = ApiState::new(store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60))
            .with_audit(signer.clone(), 3);
        body(Api {
            store: store.clone(),
            state,
            token,
            signer,
        })
        .await;
        store.close().await;
    }
}

fn json(resp: &Response<Bytes>) -> Json {
    serde_json::from_slice(resp.body()).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.body()))
}

fn items(resp: &Response<Bytes>) -> Vec<Json> {
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    json(resp)["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn refused_tokens_are_audited_with_the_request_id_within_a_budget() {
    on_each_backend(|api| async move {
        let r = api.request("/api/v1/hosts", Some("stw_abc_wrong"), Some("req-a")).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-request-id"], "req-a");
        let r = api.request("/api/v1/checks?status=ok", None, Some("req-b")).await;
        assert_eq!(r.status(), 401);
        // Accepted requests record nothing.
        assert_eq!(api.get("/api/v1/hosts").await.status(), 200);

        let denied = items(&api.get("/api/v1/audit?action=api.authenticate").await);
        assert_eq!(denied.len(), 2, "{denied:?}");
        let first = &denied[0];
        assert_eq!(
            (
                &first["actor"],
                &first["outcome"],
                &first["request_id"],
                &first["target"]
            ),
            (
                &Json::from("anonymous"),
                &Json::from("denied"),
                &Json::from("req-a"),
                &Json::from("/api/v1/hosts")
            )
        );
        assert_eq!(
            first["details"],
            serde_json::json!({ "reason": "unknown token", "token_id": "abc", "method": "GET" })
        );
        assert_eq!(denied[1]["details"]["reason"], "missing");
        assert_eq!(denied[1]["target"], "/api/v1/checks");

        // A flood of bad tokens: each gets its 401, but the log grows by the budget only.
        for i in 0..20 {
            let r = api.request("/api/v1/hosts", Some(&format!("stw_x{i}_bad")), None).await;
            assert_eq!(r.status(), 401);
        }
        let denied = items(&api.get("/api/v1/audit?action=api.authenticate").await);
        assert_eq!(denied.len(), 3, "the budget is 3 a minute: {denied:?}");
    })
    .await;
}

#[tokio::test]
async fn audit_list_filters_paginates_and_refuses_bad_parameters() {
    on_each_backend(|api| async move {
        for name in ["a", "b", "c"] {
            create_token(&api.store, name, crate::model::Role::Viewer, None)
                .await
                .unwrap();
        }
        api.request("/api/v1/hosts", None, None).await;

        let all = items(&api.get("/api/v1/audit").await);
        // The admin token of the fixture, three tokens, one refusal.
        assert_eq!(all.len(), 5);
        let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(all[1]["details"]["name"], "a");
        assert!(all[1]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(all[1]["prev_hash"], all[0]["hash"]);

        let page = json(&api.get("/api/v1/audit?action=tokens.create&limit=3").await);
        assert_eq!(page["items"].as_array().unwrap().len(), 3);
        let cursor = page["next_cursor"].as_str().unwrap();
        let rest = json(
            &api.get(&format!("/api/v1/audit?action=tokens.create&limit=3&cursor={cursor}"))
                .await,
        );
        assert_eq!(rest["items"].as_array().unwrap().len(), 1);
        assert!(rest["next_cursor"].is_null());

        assert_eq!(items(&api.get("/api/v1/audit?actor=anonymous").await).len(), 1);
        let future = steward_shared::now_ms() + 60_000;
        assert!(items(&api.get(&format!("/api/v1/audit?since={future}")).await).is_empty());
        assert_eq!(
            items(&api.get("/api/v1/audit?since=2000-01-01T00:00:00Z").await).len(),
            5
        );

        for (query, field) in [
            ("since=yesterday", "since"),
            ("cursor=garbage", "cursor"),
            ("limit=0", "limit"),
            ("actr=x", "actr"),
        ] {
            let r = api.get(&format!("/api/v1/audit?{query}")).await;
            assert_eq!(r.status(), 400, "{query}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            assert_eq!(json(&r)["field"], field, "{query}");
        }
        assert_eq!(api.get("/api/v1/audit/export?x=1").await.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn the_export_verifies_offline_and_needs_the_signing_key() {
    on_each_backend(|api| async move {
        crate::audit::checkpointer::Checkpointer::new(
            api.store.clone(),
            api.signer.clone(),
            crate::audit::checkpointer::CheckpointPolicy::default(),
        )
        .checkpoint(
            crate::audit::chain::CheckpointKind::Start,
            true,
            steward_shared::now_ms(),
        )
        .await
        .unwrap();
        create_token(&api.store, "later", crate::model::Role::Viewer, None)
            .await
            .unwrap();

        let r = api.get("/api/v1/audit/export").await;
        assert_eq!(r.status(), 200, "{:?}", r.body());
        let doc = export::parse(r.body()).unwrap();
        assert_eq!((doc.entries.len(), doc.checkpoints.len()), (2, 1));
        let verified = export::verify(&doc, &[api.signer.public_key()], &[]).unwrap();
        assert_eq!((verified.entries, verified.unsigned_entries), (2, 1));

        // An API without the key cannot sign an export.
        let unsigned = ApiState::new(api.store.clone(), Arc::new(Metrics::new()), Duration::from_secs(60));
        let r = warp::test::request()
            .path("/api/v1/audit/export")
            .header("authorization", format!("Bearer {}", api.token))
            .reply(&routes(unsigned))
            .await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    })
    .await;
}
