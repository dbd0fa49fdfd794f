//! Rollout store and driver tests, on every selected backend. The driver
//! runs with explicit times; job outcomes and check results are written
//! through the real store (claim, then the agent's `finished` report through
//! ingest), as the dispatcher and an agent would.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::super::testdb::{TestBackend, TestDatabase};
use super::*;
use crate::audit::AuditFilter;
use crate::jobs::{JobEventKind, JobReport, JobSettings};
use crate::model::{AgentHello, IngestBatch};
use crate::rollouts::driver::{Driver, LEASE_MS};
use crate::rollouts::{NotConfigured, RawAmount, RollbackSpec, SloGate, SloVerdict, StrategySpec};
use crate::store::jobs::{JobBatch, JobIngest};
use steward_shared::status::{CheckResult, CheckStatus};

const T0: i64 = 1_700_000_000_000;

async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        body(store.clone()).await;
        store.close().await;
    }
}

/// Hosts `h01..` with labels, and the sequence counters of their fake agents.
struct Fleet {
    store: Store,
    seq: HashMap<String, u64>,
}

impl Fleet {
    async fn new(store: &Store, n: usize, labels: &[(&str, &str)]) -> Fleet {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for i in 1..=n {
            let h = format!("h{i:02}");
            store.agent_connected(&h, &AgentHello::default(), T0).await.unwrap();
            store.set_host_labels(&h, &labels).await.unwrap();
        }
        Fleet {
            store: store.clone(),
            seq: HashMap::new(),
        }
    }

    fn next(&mut self, host: &str) -> u64 {
        let s = self.seq.entry(host.to_string()).or_insert(0);
        *s += 1;
        *s
    }

    /// Claims every due job of `hosts` and reports it finished with `outcome`.
    async fn finish(&mut self, hosts: &[&str], outcome: &str, now: i64) {
        let s = JobSettings::default();
        let list: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let claimed = self.store.claim_jobs("disp", &list, now, 1000, &s).await.unwrap();
        assert!(!claimed.is_empty(), "no job to finish on {hosts:?}");
        for c in claimed {
            let seq = self.next(&c.host_id);
            let report = JobReport {
                seq,
                job_id: c.job_id.clone(),
                attempt_id: c.attempt_id.clone(),
                event: JobEventKind::Finished {
                    outcome: outcome.into(),
                    reason: if outcome == "succeeded" {
                        String::new()
                    } else {
                        "exit status 1".into()
                    },
                    result_json: "{}".into(),
                    finished_at_ms: now,
                    action: String::new(),
                    params: BTreeMap::new(),
                    started_at_ms: now,
                },
            };
            let batch = IngestBatch {
                host_id: c.host_id.clone(),
                results: Vec::new(),
                spool_dropped_total: 0,
            };
            let jb = vec![JobBatch {
                host_id: c.host_id.clone(),
                reports: vec![report],
            }];
            self.store
                .ingest_with_jobs(
                    &[batch],
                    &JobIngest {
                        batches: &jb,
                        settings: s.clone(),
                    },
                    now,
                )
                .await
                .unwrap();
        }
    }

    /// A check result of `host`.
    async fn check(&mut self, host: &str, name: &str, status: CheckStatus, now: i64) {
        let seq = self.next(host);
        let batch = IngestBatch {
            host_id: host.into(),
            results: vec![(
                seq,
                CheckResult {
                    name: name.into(),
                    kind: "http".into(),
                    status,
                    values: Vec::new(),
                    message: String::new(),
                    observed_at_ms: now,
                    duration_us: 1,
                },
            )],
            spool_dropped_total: 0,
        };
        self.store.ingest(&[batch], now).await.unwrap();
    }
}

fn strategy(canary: u64, batch: &str, max_failures: u64, rollback: bool) -> crate::rollouts::Strategy {
    StrategySpec {
        canary: Some(canary),
        batch: Some(RawAmount::S(batch.into())),
        max_failures: Some(RawAmount::N(max_failures)),
        min_healthy: Some("0s".into()),
        rollback: rollback.then(|| RollbackSpec {
            action: "deploy.rollback".into(),
            params: [("app".to_string(), "web".to_string())].into(),
        }),
        ..Default::default()
    }
    .validate()
    .unwrap()
}

/// An API token with `role` (unscoped), as the creator of a rollout: `token:ID`.
async fn creator(store: &Store, role: &str) -> String {
    let token = crate::api::auth::create_token(store, "creator", role, None)
        .await
        .unwrap();
    format!("token:{}", crate::api::auth::parse_token(&token).unwrap().0)
}

async fn start(store: &Store, n: usize, strategy: crate::rollouts::Strategy, scope: &str) -> String {
    let actor = creator(store, "deployer").await;
    start_by(store, n, strategy, scope, &actor).await
}

async fn start_by(store: &Store, n: usize, strategy: crate::rollouts::Strategy, scope: &str, actor: &str) -> String {
    let id = crate::rollouts::new_rollout_id(T0);
    let r = NewRollout {
        id: id.clone(),
        action: "exec".into(),
        params: [("command".to_string(), "true".to_string())].into(),
        selector: "app=web".into(),
        strategy,
        hosts: (1..=n).map(|i| format!("h{i:02}")).collect(),
        actor: actor.into(),
        scope: scope.into(),
    };
    let audit = AuditEntry::new(actor, "rollouts.create", Outcome::Success);
    store.create_rollout(&r, audit, T0).await.unwrap();
    id
}

fn driver(store: &Store, owner: &str) -> Driver {
    Driver::new(store.clone(), owner, Arc::new(NotConfigured))
}

async fn states(store: &Store, id: &str) -> Vec<(String, HostState)> {
    store
        .rollout_hosts(id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.host_id, h.state))
        .collect()
}

async fn in_state(store: &Store, id: &str, s: HostState) -> Vec<String> {
    states(store, id)
        .await
        .into_iter()
        .filter(|(_, st)| *st == s)
        .map(|(h, _)| h)
        .collect()
}

/// Each host has at most one step job and one rollback job of the rollout.
async fn assert_one_job_per_host(store: &Store, id: &str, rollback_action: &str) {
    let jobs = store.rollout_jobs(id).await.unwrap();
    let mut per: HashMap<(String, bool), usize> = HashMap::new();
    for j in jobs.values() {
        *per.entry((j.host_id.clone(), j.action == rollback_action)).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "a host ran a step twice: {per:?}");
}

async fn rollout(store: &Store, id: &str) -> Rollout {
    store.get_rollout(id).await.unwrap().unwrap()
}

#[tokio::test]
async fn waves_run_in_order_within_the_budget_to_success() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 8, &[("app", "web")]).await;
        let id = start(&store, 8, strategy(1, "50%", 1, false), "").await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::Dispatched).await, vec!["h01"]);
        assert_eq!(rollout(&store, &id).await.gate.as_deref(), Some("jobs"));
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(
            in_state(&store, &id, HostState::Dispatched).await,
            vec!["h02", "h03", "h04", "h05"]
        );
        t += 10;
        f.finish(&["h02"], "failed", t).await;
        f.finish(&["h03", "h04", "h05"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(
            rollout(&store, &id).await.current_wave,
            2,
            "one failure is within the budget"
        );
        t += 10;
        f.finish(&["h06", "h07", "h08"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::Succeeded, "{r:?}");
        assert_eq!(in_state(&store, &id, HostState::Failed).await, vec!["h02"]);
        assert_one_job_per_host(&store, &id, "deploy.rollback").await;
        let jobs = store.rollout_jobs(&id).await.unwrap();
        assert_eq!(jobs.len(), 8);
        assert!(jobs.values().all(|j| j.rollout_id.as_deref() == Some(id.as_str())));
        // Transitions audited.
        let audit = store.list_audit(&AuditFilter::default(), None, 1000).await.unwrap();
        let actions: Vec<String> = audit
            .items
            .iter()
            .filter(|e| e.target.as_deref() == Some(&format!("rollout:{id}")))
            .map(|e| e.action.clone())
            .collect();
        for a in [
            "rollouts.create",
            "rollouts.dispatch",
            "rollouts.wave_passed",
            "rollouts.transition",
        ] {
            assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn the_budget_counts_across_waves_and_changed_hosts_roll_back_newest_first() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 5, &[("app", "web")]).await;
        let id = start(&store, 5, strategy(1, "1", 1, true), "").await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h02"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h03"], "failed", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(
            rollout(&store, &id).await.current_wave,
            3,
            "first failure within the budget"
        );
        t += 10;
        f.finish(&["h04"], "failed", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::RollingBack, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("error budget exceeded"), "{r:?}");
        // Newest first: h02 (batch of 1 at a time), then h01.
        assert_eq!(in_state(&store, &id, HostState::RollingBack).await, vec!["h02"]);
        t += 10;
        f.finish(&["h02"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::RollingBack).await, vec!["h01"]);
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::RolledBack, "{r:?}");
        assert_eq!(
            in_state(&store, &id, HostState::Pending).await,
            vec!["h05"],
            "never touched"
        );
        assert_one_job_per_host(&store, &id, "deploy.rollback").await;
        assert!(
            store
                .rollout_jobs(&id)
                .await
                .unwrap()
                .values()
                .all(|j| j.host_id != "h05")
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_health_gate_after_the_canary_rolls_back_the_canary_only() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 5, &[("app", "web")]).await;
        let mut s = strategy(1, "2", 0, true);
        s.health = vec!["app-http".into()];
        let id = start(&store, 5, s, "").await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(
            rollout(&store, &id).await.gate.as_deref(),
            Some("health"),
            "no result yet"
        );
        t += 10;
        f.check("h01", "app-http", CheckStatus::Critical, t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::RollingBack, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("app-http is critical"), "{r:?}");
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::RolledBack, "{r:?}");
        let jobs = store.rollout_jobs(&id).await.unwrap();
        assert_eq!(jobs.len(), 2, "the canary's step and its rollback, nothing else");
        assert!(jobs.values().all(|j| j.host_id == "h01"));
        assert_eq!(in_state(&store, &id, HostState::Pending).await.len(), 4);
    })
    .await;
}

#[tokio::test]
async fn pause_lets_running_jobs_finish_and_resume_continues() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 3, &[("app", "web")]).await;
        let id = start(&store, 3, strategy(1, "100%", 0, false), "").await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        let who = || AuditEntry::new("token:t", "rollouts.pause", Outcome::Success);
        assert!(matches!(
            store.control_rollout(&id, Control::Pause, who(), t).await.unwrap(),
            ControlResult::Done(_)
        ));
        assert!(matches!(
            store.control_rollout(&id, Control::Pause, who(), t).await.unwrap(),
            ControlResult::Refused(..)
        ));
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.state, RolloutState::Paused);
        assert_eq!(r.gate.as_deref(), Some("paused"));
        assert_eq!(
            in_state(&store, &id, HostState::Succeeded).await,
            vec!["h01"],
            "the running job finished"
        );
        assert_eq!(
            in_state(&store, &id, HostState::Pending).await.len(),
            2,
            "nothing new dispatched"
        );
        t += 10;
        store.control_rollout(&id, Control::Resume, who(), t).await.unwrap();
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::Dispatched).await, vec!["h02", "h03"]);
        t += 10;
        f.finish(&["h02", "h03"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(rollout(&store, &id).await.state, RolloutState::Succeeded);
    })
    .await;
}

#[tokio::test]
async fn abort_with_and_without_rollback() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 3, &[("app", "web")]).await;
        for rollback in [true, false] {
            let id = start(&store, 3, strategy(2, "2", 0, true), "").await;
            let d = driver(&store, "cpA");
            let mut t = T0 + 1;
            d.tick(t).await.unwrap();
            let who = AuditEntry::new("token:t", "rollouts.abort", Outcome::Success);
            store
                .control_rollout(&id, Control::Abort { rollback }, who, t)
                .await
                .unwrap();
            t += 10;
            f.finish(&["h01", "h02"], "succeeded", t).await;
            d.tick(t).await.unwrap();
            if rollback {
                assert_eq!(rollout(&store, &id).await.state, RolloutState::RollingBack);
                t += 10;
                f.finish(&["h01", "h02"], "succeeded", t).await;
                d.tick(t).await.unwrap();
                assert_eq!(in_state(&store, &id, HostState::RolledBack).await, vec!["h01", "h02"]);
            } else {
                assert_eq!(in_state(&store, &id, HostState::Succeeded).await, vec!["h01", "h02"]);
            }
            let r = rollout(&store, &id).await;
            assert_eq!(r.state, RolloutState::Aborted, "{r:?}");
            assert_eq!(in_state(&store, &id, HostState::Pending).await, vec!["h03"]);
        }
    })
    .await;
}

#[tokio::test]
async fn a_new_driver_after_restart_never_redispatches_and_takes_over_the_lease() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 4, &[("app", "web")]).await;
        let id = start(&store, 4, strategy(1, "3", 0, false), "").await;
        let a = driver(&store, "cpA");
        let mut t = T0 + 1;
        assert_eq!(a.tick(t).await.unwrap(), 1);
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        assert_eq!(a.tick(t).await.unwrap(), 1);
        assert_eq!(in_state(&store, &id, HostState::Dispatched).await.len(), 3);
        // cpA dies. cpB cannot drive while cpA's lease holds...
        let b = driver(&store, "cpB");
        assert_eq!(b.tick(t + 1).await.unwrap(), 0);
        assert_eq!(rollout(&store, &id).await.lease_owner.as_deref(), Some("cpA"));
        // ...and takes over when it lapses, without dispatching anything again.
        t += LEASE_MS + 1;
        assert_eq!(b.tick(t).await.unwrap(), 1);
        assert_eq!(rollout(&store, &id).await.lease_owner.as_deref(), Some("cpB"));
        assert_eq!(store.rollout_jobs(&id).await.unwrap().len(), 4);
        // A stale step of cpA changes nothing.
        assert!(!a.step(&id, t).await.unwrap() || rollout(&store, &id).await.lease_owner.as_deref() == Some("cpB"));
        f.finish(&["h02", "h03", "h04"], "succeeded", t).await;
        b.tick(t).await.unwrap();
        assert_eq!(rollout(&store, &id).await.state, RolloutState::Succeeded);
        assert_one_job_per_host(&store, &id, "deploy.rollback").await;
        assert_eq!(store.rollout_jobs(&id).await.unwrap().len(), 4);
        let audit = store.list_audit(&AuditFilter::default(), None, 1000).await.unwrap();
        assert!(audit.items.iter().any(|e| e.action == "rollouts.lease"
            && e.details.contains("\"owner\":\"cpB\"")
            && e.details.contains("\"previous\":\"cpA\"")));
    })
    .await;
}

#[tokio::test]
async fn a_host_outside_the_scope_at_dispatch_is_skipped() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 3, &[("app", "web"), ("team", "a")]).await;
        let id = start(&store, 3, strategy(1, "2", 0, false), "team=a").await;
        let relabel: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("team".to_string(), "b".to_string()),
        ]
        .into();
        store.set_host_labels("h03", &relabel).await.unwrap();
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::Skipped).await, vec!["h03"]);
        assert!(
            store
                .rollout_jobs(&id)
                .await
                .unwrap()
                .values()
                .all(|j| j.host_id != "h03")
        );
    })
    .await;
}

/// An SLO gate answering what the test says.
#[derive(Debug, Default)]
struct FakeSlo(std::sync::Mutex<Option<SloVerdict>>);

impl SloGate for FakeSlo {
    fn evaluate<'a>(
        &'a self,
        _slos: &'a [String],
        _now_ms: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SloVerdict> + Send + 'a>> {
        let v = self.0.lock().unwrap().clone().unwrap_or(SloVerdict::Holds);
        Box::pin(async move { v })
    }
}

#[tokio::test]
async fn the_slo_gate_blocks_the_next_wave_while_burning_and_not_configured_is_recorded() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 2, &[("app", "web")]).await;
        let mut s = strategy(1, "1", 0, false);
        s.slo = vec!["checkout".into()];
        let id = start(&store, 2, s.clone(), "").await;
        let slo = Arc::new(FakeSlo::default());
        *slo.0.lock().unwrap() = Some(SloVerdict::Burning {
            slo: "checkout".into(),
            detail: "fast burn 20 > 14.4".into(),
        });
        let d = Driver::new(store.clone(), "cpA", slo.clone());
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &id).await;
        assert_eq!(r.current_wave, 0);
        assert!(r.gate.as_deref().unwrap().starts_with("slo checkout"), "{r:?}");
        *slo.0.lock().unwrap() = Some(SloVerdict::Holds);
        t += 10;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::Dispatched).await, vec!["h02"]);

        // Without an SLO engine: passes, and says so on the rollout.
        let id2 = start(&store, 1, s, "").await;
        let d2 = driver(&store, "cpA");
        t += 10;
        d2.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d2.tick(t).await.unwrap();
        let r = rollout(&store, &id2).await;
        assert_eq!(r.state, RolloutState::Succeeded);
        assert!(r.notes.iter().any(|n| n.contains("not configured")), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn a_rolled_back_rollout_is_an_alert_for_the_configured_window() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 3, &[("app", "web")]).await;
        let mut s = strategy(1, "2", 0, true);
        s.health = vec!["app-http".into()];
        let id = start(&store, 3, s, "").await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        t += 10;
        f.check("h01", "app-http", CheckStatus::Critical, t).await;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(rollout(&store, &id).await.state, RolloutState::RolledBack);
        let ev = crate::alert::evaluator::Evaluator::new(store.clone(), Default::default());
        let c = ev.candidates("rollout", t + 1).await.unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].labels["alertname"], "RolloutRolledBack");
        assert_eq!(c[0].labels["rollout"], id);
        assert_eq!(c[0].severity, crate::alert::Severity::Error);
        assert!(c[0].summary.contains("app-http is critical"), "{}", c[0].summary);
        // The default window is 24h.
        assert!(ev.candidates("rollout", t + 86_400_001).await.unwrap().is_empty());
    })
    .await;
}

fn rules(list: &[(&str, Option<&str>)]) -> Vec<crate::rbac::RuleSpec> {
    list.iter()
        .map(|(p, hosts)| crate::rbac::RuleSpec {
            effect: crate::rbac::Effect::Allow,
            permission: p.to_string(),
            hosts: hosts.map(String::from),
        })
        .collect()
}

async fn put_role(store: &Store, name: &str, list: &[(&str, Option<&str>)]) {
    let audit = AuditEntry::new("local", "roles.put", Outcome::Success);
    store.put_role(name, "", &rules(list), audit, T0).await.unwrap();
}

#[tokio::test]
async fn a_revoked_or_downgraded_creator_pauses_the_rollout_before_its_next_wave() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 6, &[("app", "web")]).await;
        put_role(
            &store,
            "rollers",
            &[("*:read", None), ("rollouts:*", None), ("jobs:*", None)],
        )
        .await;
        let revoked = creator(&store, "deployer").await;
        let downgraded = creator(&store, "rollers").await;
        let a = start_by(&store, 3, strategy(1, "2", 0, false), "", &revoked).await;
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &a, HostState::Dispatched).await, vec!["h01"]);
        // The canary runs; then the creator's token is revoked.
        let id = revoked.strip_prefix("token:").unwrap();
        let audit = AuditEntry::new("local", "tokens.revoke", Outcome::Success);
        assert!(
            store
                .revoke_api_token(id, steward_shared::now_ms(), audit)
                .await
                .unwrap()
        );
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &a).await;
        assert_eq!(r.state, RolloutState::Paused, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("revoked"), "{r:?}");
        assert_eq!(
            store.rollout_jobs(&a).await.unwrap().len(),
            1,
            "nothing after the canary"
        );
        // Resumed by someone: still paused at the next dispatch, nothing sent.
        let resume = AuditEntry::new("local", "rollouts.resume", Outcome::Success);
        store.control_rollout(&a, Control::Resume, resume, t).await.unwrap();
        t += 10;
        d.tick(t).await.unwrap();
        assert_eq!(rollout(&store, &a).await.state, RolloutState::Paused);
        assert_eq!(store.rollout_jobs(&a).await.unwrap().len(), 1);

        // A creator whose role loses the permissions: paused too.
        let hosts: Vec<String> = (4..=6).map(|i| format!("h{i:02}")).collect();
        let b = {
            let id = crate::rollouts::new_rollout_id(T0);
            let r = NewRollout {
                id: id.clone(),
                action: "exec".into(),
                params: [("command".to_string(), "true".to_string())].into(),
                selector: "app=web".into(),
                strategy: strategy(1, "2", 0, false),
                hosts: hosts.clone(),
                actor: downgraded.clone(),
                scope: String::new(),
            };
            let audit = AuditEntry::new(downgraded.as_str(), "rollouts.create", Outcome::Success);
            store.create_rollout(&r, audit, t).await.unwrap();
            id
        };
        t += 10;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &b, HostState::Dispatched).await, vec!["h04"]);
        put_role(&store, "rollers", &[("*:read", None)]).await;
        t += 10;
        f.finish(&["h04"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &b).await;
        assert_eq!(r.state, RolloutState::Paused, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("no longer grants"), "{r:?}");
        assert_eq!(store.rollout_jobs(&b).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn hosts_outside_the_creators_rules_are_skipped_and_an_unreadable_scope_fails_closed() {
    on_each_backend(|store| async move {
        let mut f = Fleet::new(&store, 3, &[("app", "web"), ("team", "a")]).await;
        put_role(
            &store,
            "team-a-rollers",
            &[("*:read", None), ("rollouts:*", None), ("jobs:create", Some("team=a"))],
        )
        .await;
        let who = creator(&store, "team-a-rollers").await;
        let id = start_by(&store, 3, strategy(1, "2", 0, false), "", &who).await;
        let relabel: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("team".to_string(), "b".to_string()),
        ]
        .into();
        store.set_host_labels("h03", &relabel).await.unwrap();
        let d = driver(&store, "cpA");
        let mut t = T0 + 1;
        d.tick(t).await.unwrap();
        t += 10;
        f.finish(&["h01"], "succeeded", t).await;
        d.tick(t).await.unwrap();
        assert_eq!(in_state(&store, &id, HostState::Skipped).await, vec!["h03"]);
        assert_eq!(in_state(&store, &id, HostState::Dispatched).await, vec!["h02"]);

        // A stored scope that cannot be read dispatches nothing (it used to mean "everything").
        let bad = start(&store, 3, strategy(1, "2", 0, false), "team in (").await;
        t += 10;
        d.tick(t).await.unwrap();
        let r = rollout(&store, &bad).await;
        assert_eq!(r.state, RolloutState::Paused, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("unreadable"), "{r:?}");
        assert!(store.rollout_jobs(&bad).await.unwrap().is_empty());
    })
    .await;
}
