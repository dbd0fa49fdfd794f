//! Job queue store tests, on every selected backend.
use std::collections::{BTreeMap, BTreeSet};

use super::super::testdb::{TestBackend, TestDatabase};
use super::*;
use crate::audit::{AuditFilter, Outcome};
use crate::jobs::{JobEventKind, JobReport, JobSettings, NewJob, new_job_id};
use crate::model::{AgentHello, IngestBatch};

async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Store, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        body(store.clone(), db.url().to_string()).await;
        store.close().await;
    }
}

fn new_job(host: &str, action: &str, params: &[(&str, &str)], now: i64) -> NewJob {
    NewJob {
        id: new_job_id(now),
        action: action.into(),
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        host_id: host.into(),
        max_attempts: 1,
        timeout_secs: 60,
        idempotency_key: None,
        rollout_id: None,
        created_by: "token:t".into(),
    }
}

fn created(e: Enqueued) -> Vec<Job> {
    match e {
        Enqueued::Created(j) => j,
        Enqueued::Existing(_) => panic!("expected new jobs"),
    }
}

async fn enqueue(store: &Store, jobs: Vec<NewJob>, now: i64) -> Vec<Job> {
    let audit: Vec<AuditEntry> = jobs
        .iter()
        .map(|j| AuditEntry::new("token:t", "jobs.create", Outcome::Success).target(format!("job:{}", j.id)))
        .collect();
    created(store.enqueue_jobs(&jobs, &audit, now).await.unwrap())
}

fn hosts(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

fn finished(seq: u64, job: &str, attempt: &str, outcome: &str, reason: &str, result: &str) -> JobReport {
    JobReport {
        seq,
        job_id: job.into(),
        attempt_id: attempt.into(),
        event: JobEventKind::Finished {
            outcome: outcome.into(),
            reason: reason.into(),
            result_json: result.into(),
            finished_at_ms: 0,
            action: String::new(),
            params: BTreeMap::new(),
            started_at_ms: 0,
        },
    }
}

async fn report(store: &Store, host: &str, reports: Vec<JobReport>, settings: &JobSettings, now: i64) -> Applied {
    let batch = IngestBatch {
        host_id: host.into(),
        results: Vec::new(),
        spool_dropped_total: 0,
    };
    let jb = vec![JobBatch {
        host_id: host.into(),
        reports,
    }];
    store
        .ingest_with_jobs(
            &[batch],
            &JobIngest {
                batches: &jb,
                settings: settings.clone(),
            },
            now,
        )
        .await
        .unwrap()
}

async fn actions_of(store: &Store, job: &str) -> Vec<String> {
    let page = store.list_audit(&AuditFilter::default(), None, 1000).await.unwrap();
    page.items
        .into_iter()
        .filter(|e| e.target.as_deref() == Some(&format!("job:{job}")))
        .map(|e| e.action)
        .collect()
}

#[tokio::test]
async fn a_job_runs_through_its_states_audited_and_fenced() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        let job = enqueue(&store, vec![new_job("web", "exec", &[("command", "true")], t)], t)
            .await
            .remove(0);
        assert_eq!(job.state, JobState::Queued);
        assert!(
            store
                .claim_jobs("cp1", &hosts(&["db"]), t, 10, &s)
                .await
                .unwrap()
                .is_empty()
        );
        let c = store.claim_jobs("cp1", &hosts(&["web"]), t + 1, 10, &s).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].attempt_id, format!("{}-a1", job.id));
        assert!(
            store
                .claim_jobs("cp2", &hosts(&["web"]), t + 2, 10, &s)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !store
                .accept_job("db", &job.id, &c[0].attempt_id, t + 3, &s)
                .await
                .unwrap(),
            "other host"
        );
        assert!(
            store
                .accept_job("web", &job.id, &c[0].attempt_id, t + 3, &s)
                .await
                .unwrap()
        );
        assert!(
            !store
                .accept_job("web", &job.id, &c[0].attempt_id, t + 4, &s)
                .await
                .unwrap(),
            "repeat"
        );
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.lease_expires_ms, Some(t + 3 + 60_000 + s.timeout_grace_ms));
        // A result for another attempt changes nothing.
        report(
            &store,
            "web",
            vec![finished(1, &job.id, "bogus", "failed", "x", "")],
            &s,
            t + 5,
        )
        .await;
        assert_eq!(store.get_job(&job.id).await.unwrap().unwrap().state, JobState::Running);
        let a = report(
            &store,
            "web",
            vec![finished(
                2,
                &job.id,
                &c[0].attempt_id,
                "succeeded",
                "",
                r#"{"exit_code":0}"#,
            )],
            &s,
            t + 6,
        )
        .await;
        assert_eq!(a.finished, vec![(JobState::Succeeded, "exec".to_string())]);
        // Resent (at-least-once): applied once.
        let a = report(
            &store,
            "web",
            vec![finished(2, &job.id, &c[0].attempt_id, "failed", "late", "")],
            &s,
            t + 7,
        )
        .await;
        assert!(a.finished.is_empty());
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.result.as_deref(), Some(r#"{"exit_code":0}"#));
        assert_eq!(j.finished_ms, Some(t + 6));
        assert_eq!(
            actions_of(&store, &job.id).await,
            vec!["jobs.create", "jobs.dispatch", "jobs.start", "jobs.finish"]
        );
        let counts = store.job_counts().await.unwrap();
        assert_eq!(counts.get(&JobState::Succeeded), Some(&1));
    })
    .await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_jobs() {
    on_each_backend(|store, _| async move {
        let t = 1_700_000_000_000;
        let mut a = new_job("web", "checks.run", &[], t);
        a.idempotency_key = Some("k1".into());
        let mut b = new_job("db", "checks.run", &[], t);
        b.idempotency_key = Some("k1".into());
        let mut first = enqueue(&store, vec![a, b], t).await;
        first.sort_by(|a, b| a.id.cmp(&b.id));
        let mut again = new_job("web", "checks.run", &[], t + 1);
        again.idempotency_key = Some("k1".into());
        match store.enqueue_jobs(&[again], &[], t + 1).await.unwrap() {
            Enqueued::Existing(jobs) => assert_eq!(jobs, first),
            other => panic!("expected the existing jobs, got {other:?}"),
        }
        assert_eq!(
            store
                .list_jobs(&JobFilter::default(), None, 10)
                .await
                .unwrap()
                .items
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn one_job_at_a_time_per_host_and_lists_filter_and_paginate() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        let jobs = enqueue(
            &store,
            vec![
                new_job("web", "checks.run", &[], t),
                new_job("web", "checks.run", &[], t + 1),
                new_job("db", "backup.run", &[("name", "pg")], t + 2),
            ],
            t,
        )
        .await;
        let c = store
            .claim_jobs("cp", &hosts(&["web", "db"]), t + 10, 10, &s)
            .await
            .unwrap();
        assert_eq!(c.len(), 2, "one per host: {c:?}");
        let web = c.iter().find(|c| c.host_id == "web").unwrap();
        assert_eq!(web.job_id, jobs[0].id, "oldest first");
        report(
            &store,
            "web",
            vec![finished(1, &web.job_id, &web.attempt_id, "succeeded", "", "")],
            &s,
            t + 11,
        )
        .await;
        let c = store
            .claim_jobs("cp", &hosts(&["web", "db"]), t + 12, 10, &s)
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>(),
            vec![jobs[1].id.clone()]
        );

        let f = JobFilter {
            host_id: Some("web".into()),
            ..JobFilter::default()
        };
        let p1 = store.list_jobs(&f, None, 1).await.unwrap();
        assert!(p1.has_more);
        assert_eq!(p1.items[0].id, jobs[1].id, "newest first");
        let p2 = store.list_jobs(&f, Some(&p1.items[0].id), 1).await.unwrap();
        assert!(!p2.has_more);
        assert_eq!(p2.items[0].id, jobs[0].id);
        let f = JobFilter {
            state: Some(JobState::Succeeded),
            action: Some("checks.run".into()),
            ..JobFilter::default()
        };
        assert_eq!(store.list_jobs(&f, None, 10).await.unwrap().items.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_host_at_its_cap_does_not_crowd_out_the_others() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        // `busy` has a running job and a backlog older than `idle`'s job.
        let mut backlog: Vec<NewJob> = (0..12).map(|i| new_job("busy", "checks.run", &[], t + i)).collect();
        backlog.push(new_job("idle", "checks.run", &[], t + 100));
        backlog.push(new_job("idle", "checks.run", &[], t + 101));
        let jobs = enqueue(&store, backlog, t).await;
        let first = store.claim_jobs("cp", &hosts(&["busy"]), t + 200, 1, &s).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].job_id, jobs[0].id);
        // Room for 1 (4 candidates read): the busy host's twelve older jobs
        // must not fill the candidates; one of the idle host's is claimed.
        let c = store
            .claim_jobs("cp", &hosts(&["busy", "idle"]), t + 201, 1, &s)
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>(),
            vec![jobs[12].id.clone()]
        );
        // With the cap raised to 3: busy gets two more (oldest first), idle its second.
        let s3 = JobSettings {
            max_running_per_host: 3,
            ..JobSettings::default()
        };
        let c = store
            .claim_jobs("cp", &hosts(&["busy", "idle"]), t + 202, 10, &s3)
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>(),
            vec![jobs[1].id.clone(), jobs[2].id.clone(), jobs[13].id.clone()],
            "in due order, within each host's free slots"
        );
        // A cap no host can reach with this claim (busy has 3 with an agent;
        // 3 + 5 <= 20): the plain claim of the first five due jobs.
        let s20 = JobSettings {
            max_running_per_host: 20,
            ..JobSettings::default()
        };
        let c = store
            .claim_jobs("cp", &hosts(&["busy", "idle"]), t + 203, 5, &s20)
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>(),
            jobs[3..8].iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            "in due order"
        );
        for claimed in &c {
            assert_eq!(claimed.attempt_id, format!("{}-a1", claimed.job_id));
            assert_eq!((claimed.host_id.as_str(), claimed.resend), ("busy", false));
            assert_eq!(
                claimed.ready_ms,
                jobs.iter().find(|j| j.id == claimed.job_id).unwrap().next_run_ms
            );
            let dispatched = details_of(&store, &claimed.job_id, "jobs.dispatch").await;
            assert_eq!(dispatched.len(), 1);
            assert_eq!(dispatched[0]["attempt"], 1);
            let job = store.get_job(&claimed.job_id).await.unwrap().unwrap();
            assert_eq!(
                (job.state, job.lease_owner.as_deref()),
                (JobState::Dispatched, Some("cp"))
            );
        }
        // Room for 30 with 8 already out (8 + 30 > 20): the ranked claim
        // again, within the 12 free slots; four jobs are left, all four.
        let c = store
            .claim_jobs("cp", &hosts(&["busy", "idle"]), t + 204, 30, &s20)
            .await
            .unwrap();
        assert_eq!(
            c.iter().map(|c| c.job_id.clone()).collect::<Vec<_>>(),
            jobs[8..12].iter().map(|j| j.id.clone()).collect::<Vec<_>>()
        );
    })
    .await;
}

/// The details of `job`'s audit entries of `action`.
async fn details_of(store: &Store, job: &str, action: &str) -> Vec<serde_json::Value> {
    let page = store.list_audit(&AuditFilter::default(), None, 1000).await.unwrap();
    page.items
        .into_iter()
        .filter(|e| e.target.as_deref() == Some(&format!("job:{job}")) && e.action == action)
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect()
}

#[tokio::test]
async fn the_finishing_write_itself_decides_retry_and_terminal_states() {
    on_each_backend(|store, _| async move {
        let s = JobSettings {
            retry_base_ms: 1000,
            max_running_per_host: 10,
            ..JobSettings::default()
        };
        let t = 1_700_000_000_000;
        let mut a = new_job("web", "exec", &[("command", "a")], t);
        a.max_attempts = 3;
        let mut b = new_job("web", "exec", &[("command", "b")], t);
        b.max_attempts = 3;
        let jobs = enqueue(&store, vec![a, b], t).await;
        let (a, b) = (&jobs[0], &jobs[1]);
        let c = store.claim_jobs("cp", &hosts(&["web"]), t, 10, &s).await.unwrap();
        assert_eq!(c.len(), 2);
        assert!(
            store
                .accept_job("web", &a.id, &format!("{}-a1", a.id), t + 2, &s)
                .await
                .unwrap()
        );
        assert!(matches!(
            store
                .cancel_job(
                    &a.id,
                    AuditEntry::new("token:t", "jobs.cancel", Outcome::Success),
                    t + 3
                )
                .await
                .unwrap(),
            CancelResult::Requested(_)
        ));
        // Attempt IDs that are not `<job>-a<n>` of the job change nothing.
        let bad: Vec<JobReport> = [
            format!("{}-a01", b.id),
            format!("{}-a1x", b.id),
            String::new(),
            a.id.clone(),
        ]
        .iter()
        .enumerate()
        .map(|(i, at)| finished(i as u64 + 1, &b.id, at, "succeeded", "", ""))
        .collect();
        assert!(report(&store, "web", bad, &s, t + 4).await.finished.is_empty());
        assert_eq!(store.get_job(&b.id).await.unwrap().unwrap().state, JobState::Dispatched);

        // A retryable failure of a job whose cancellation was asked for ends it;
        // the other, with attempts left, is queued again after a backoff.
        let applied = report(
            &store,
            "web",
            vec![
                finished(10, &a.id, &format!("{}-a1", a.id), "failed", "exit 1", ""),
                finished(11, &b.id, &format!("{}-a1", b.id), "timed_out", "slow", ""),
            ],
            &s,
            t + 10,
        )
        .await;
        assert_eq!(
            applied.finished,
            vec![
                (JobState::Failed, "exec".to_string()),
                (JobState::Queued, "exec".to_string())
            ]
        );
        assert_eq!(applied.outcomes.len(), 2);
        let ja = store.get_job(&a.id).await.unwrap().unwrap();
        assert_eq!(
            (ja.state, ja.finished_ms, ja.started_ms),
            (JobState::Failed, Some(t + 10), Some(t + 2))
        );
        assert_eq!(ja.next_run_ms, t, "an ended job keeps its schedule");
        let jb = store.get_job(&b.id).await.unwrap().unwrap();
        assert_eq!(
            (jb.state, jb.finished_ms, jb.started_ms),
            (JobState::Queued, None, Some(t + 10))
        );
        assert!(
            (t + 10 + 900..=t + 10 + 1100).contains(&jb.next_run_ms),
            "{}",
            jb.next_run_ms
        );
        assert_eq!(
            (jb.outcome.as_deref(), jb.reason.as_deref()),
            (Some("timed_out"), Some("slow"))
        );
        assert_eq!((jb.lease_owner, jb.lease_expires_ms), (None, None));
        let fin = details_of(&store, &a.id, "jobs.finish").await;
        assert_eq!(fin.len(), 1);
        assert_eq!(
            (fin[0]["state"].as_str(), fin[0]["attempt"].as_i64()),
            (Some("failed"), Some(1))
        );
        assert!(details_of(&store, &a.id, "jobs.retry").await.is_empty());
        let fin = details_of(&store, &b.id, "jobs.finish").await;
        assert_eq!(
            (fin[0]["state"].as_str(), fin[0]["host"].as_str()),
            (Some("timed_out"), Some("web"))
        );
        let retry = details_of(&store, &b.id, "jobs.retry").await;
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0]["next_run_ms"].as_i64(), Some(jb.next_run_ms));
        assert_eq!(
            (retry[0]["attempt"].as_i64(), retry[0]["max_attempts"].as_i64()),
            (Some(1), Some(3))
        );
    })
    .await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_are_discarded() {
    on_each_backend(|store, _| async move {
        let s = JobSettings {
            retry_base_ms: 1000,
            ..JobSettings::default()
        };
        let t = 1_700_000_000_000;
        let mut n = new_job("web", "exec", &[("command", "x")], t);
        n.max_attempts = 2;
        let job = enqueue(&store, vec![n], t).await.remove(0);
        let c = store
            .claim_jobs("cp", &hosts(&["web"]), t, 10, &s)
            .await
            .unwrap()
            .remove(0);
        report(
            &store,
            "web",
            vec![finished(1, &job.id, &c.attempt_id, "failed", "exit 1", "")],
            &s,
            t + 5,
        )
        .await;
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
        assert!(
            (t + 5 + 900..=t + 5 + 1100).contains(&j.next_run_ms),
            "{}",
            j.next_run_ms
        );
        assert_eq!(j.reason.as_deref(), Some("exit 1"));
        assert!(
            store
                .claim_jobs("cp", &hosts(&["web"]), t + 6, 10, &s)
                .await
                .unwrap()
                .is_empty(),
            "backoff"
        );
        let c2 = store
            .claim_jobs("cp", &hosts(&["web"]), t + 2000, 10, &s)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(c2.attempt_id, format!("{}-a2", job.id));
        // The first attempt's late result is fenced out.
        report(
            &store,
            "web",
            vec![finished(2, &job.id, &c.attempt_id, "succeeded", "", "")],
            &s,
            t + 2001,
        )
        .await;
        assert_eq!(
            store.get_job(&job.id).await.unwrap().unwrap().state,
            JobState::Dispatched
        );
        report(
            &store,
            "web",
            vec![finished(3, &job.id, &c2.attempt_id, "failed", "exit 1", "")],
            &s,
            t + 2002,
        )
        .await;
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Discarded);
        let dead = store
            .list_jobs(
                &JobFilter {
                    state: Some(JobState::Discarded),
                    ..JobFilter::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(dead.items.len(), 1);
        assert!(actions_of(&store, &job.id).await.contains(&"jobs.discard".to_string()));
        // A policy refusal is never retried.
        let mut n = new_job("web", "exec", &[("command", "rm")], t);
        n.max_attempts = 5;
        let job = enqueue(&store, vec![n], t).await.remove(0);
        let c = store
            .claim_jobs("cp", &hosts(&["web"]), t + 3000, 10, &s)
            .await
            .unwrap()
            .remove(0);
        report(
            &store,
            "web",
            vec![finished(
                4,
                &job.id,
                &c.attempt_id,
                "failed",
                "not allowed by agent policy: exec",
                "",
            )],
            &s,
            t + 3001,
        )
        .await;
        assert_eq!(store.get_job(&job.id).await.unwrap().unwrap().state, JobState::Failed);
    })
    .await;
}

#[tokio::test]
async fn leases_resend_unaccepted_attempts_and_time_out_silent_ones() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        let job = enqueue(&store, vec![new_job("web", "checks.run", &[], t)], t)
            .await
            .remove(0);
        let c = store
            .claim_jobs("cp1", &hosts(&["web"]), t, 10, &s)
            .await
            .unwrap()
            .remove(0);
        assert!(
            store
                .claim_jobs("cp2", &hosts(&["web"]), t + s.dispatch_lease_ms - 1, 10, &s)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store
            .claim_jobs("cp2", &hosts(&["web"]), t + s.dispatch_lease_ms + 1, 10, &s)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert!(again[0].resend);
        assert_eq!(again[0].attempt_id, c.attempt_id, "the same attempt, never a new one");
        let j = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!((j.attempt, j.lease_owner.as_deref()), (1, Some("cp2")));
        let t2 = t + s.dispatch_lease_ms + 2;
        assert!(store.accept_job("web", &job.id, &c.attempt_id, t2, &s).await.unwrap());
        let a = store.sweep_jobs(t2 + 60_000, &s).await.unwrap();
        assert!(a.finished.is_empty(), "within timeout + grace");
        let a = store
            .sweep_jobs(t2 + 60_000 + s.timeout_grace_ms + 1, &s)
            .await
            .unwrap();
        assert_eq!(a.finished, vec![(JobState::TimedOut, "checks.run".to_string())]);
        let a = report(
            &store,
            "web",
            vec![finished(1, &job.id, &c.attempt_id, "succeeded", "", "")],
            &s,
            t2 + 100_000,
        )
        .await;
        assert!(a.finished.is_empty(), "a result after the timeout is fenced out");
        assert_eq!(store.get_job(&job.id).await.unwrap().unwrap().state, JobState::TimedOut);
    })
    .await;
}

#[tokio::test]
async fn cancelling_queued_and_running_jobs() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        let jobs = enqueue(
            &store,
            vec![
                new_job("web", "checks.run", &[], t),
                new_job("db", "checks.run", &[], t),
            ],
            t,
        )
        .await;
        let who = || AuditEntry::new("token:t", "jobs.cancel", Outcome::Success);
        match store.cancel_job(&jobs[0].id, who(), t + 1).await.unwrap() {
            CancelResult::Cancelled(j) => assert_eq!(j.state, JobState::Cancelled),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.cancel_job(&jobs[0].id, who(), t + 2).await.unwrap(),
            CancelResult::AlreadyEnded(_)
        ));
        assert!(matches!(
            store.cancel_job("nope", who(), t + 2).await.unwrap(),
            CancelResult::NotFound
        ));
        let c = store
            .claim_jobs("cp", &hosts(&["web", "db"]), t + 3, 10, &s)
            .await
            .unwrap();
        assert_eq!(c.len(), 1, "the cancelled job is never dispatched");
        assert!(
            store
                .accept_job("db", &jobs[1].id, &c[0].attempt_id, t + 4, &s)
                .await
                .unwrap()
        );
        assert!(matches!(
            store.cancel_job(&jobs[1].id, who(), t + 5).await.unwrap(),
            CancelResult::Requested(_)
        ));
        let orders = store.pending_cancels(&hosts(&["db"])).await.unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].attempt_id, c[0].attempt_id);
        report(
            &store,
            "db",
            vec![finished(1, &jobs[1].id, &c[0].attempt_id, "cancelled", "cancelled", "")],
            &s,
            t + 6,
        )
        .await;
        assert_eq!(
            store.get_job(&jobs[1].id).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
        assert!(store.pending_cancels(&hosts(&["db"])).await.unwrap().is_empty());
        assert!(
            actions_of(&store, &jobs[1].id)
                .await
                .contains(&"jobs.cancel".to_string())
        );
    })
    .await;
}

#[tokio::test]
async fn output_is_kept_up_to_the_cap_once_per_offset() {
    on_each_backend(|store, _| async move {
        let s = JobSettings {
            output_cap: 10,
            ..JobSettings::default()
        };
        let t = 1_700_000_000_000;
        let job = enqueue(&store, vec![new_job("web", "exec", &[("command", "x")], t)], t)
            .await
            .remove(0);
        let c = store
            .claim_jobs("cp", &hosts(&["web"]), t, 10, &s)
            .await
            .unwrap()
            .remove(0);
        let out = |seq, offset, data: &[u8]| JobReport {
            seq,
            job_id: job.id.clone(),
            attempt_id: c.attempt_id.clone(),
            event: JobEventKind::Output {
                offset,
                data: data.to_vec(),
                truncated: false,
            },
        };
        report(&store, "web", vec![out(1, 0, b"hello ")], &s, t + 1).await;
        report(&store, "web", vec![out(1, 0, b"hello ")], &s, t + 2).await;
        report(&store, "web", vec![out(2, 6, b"world, again")], &s, t + 3).await;
        let (j, data) = store.job_output(&job.id).await.unwrap().unwrap();
        assert_eq!(data, b"hello worl");
        assert!(j.output_truncated);
        assert_eq!(j.output_bytes, 10);
    })
    .await;
}

#[tokio::test]
async fn local_backup_runs_are_recorded_once_with_backup_status() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t = 1_700_000_000_000;
        store
            .agent_connected("web", &AgentHello::default(), t)
            .await
            .unwrap();
        let local = |seq: u64, id: &str, action: &str, outcome: &str, result: &str, at: i64| JobReport {
            seq,
            job_id: String::new(),
            attempt_id: id.into(),
            event: JobEventKind::Finished {
                outcome: outcome.into(),
                reason: if outcome == "succeeded" { String::new() } else { "checksum mismatch: a.txt".into() },
                result_json: result.into(),
                finished_at_ms: at,
                action: action.into(),
                params: [("name".to_string(), "pg".to_string())].into(),
                started_at_ms: at - 100,
            },
        };
        let run = r#"{"backup":"pg","snapshot":"s1","files":3,"bytes":300,"duration_ms":100,"deleted":[],"verified":null,"rpo_secs":3600}"#;
        for _ in 0..2 {
            report(&store, "web", vec![local(1, "local-1", "backup.run", "succeeded", run, t)], &s, t).await;
        }
        report(&store, "web", vec![local(2, "local-2", "backup.verify", "failed", "", t + 10)], &s, t + 10).await;
        let jobs = store
            .list_jobs(&JobFilter { host_id: Some("web".into()), ..JobFilter::default() }, None, 10)
            .await
            .unwrap();
        assert_eq!(jobs.items.len(), 2);
        assert!(jobs.items.iter().all(|j| j.source == "local"));
        let b = store.list_backups(None).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].last_snapshot.as_deref(), Some("s1"));
        assert_eq!(b[0].last_snapshot_ms, Some(t));
        assert_eq!(b[0].rpo_secs, Some(3600));
        assert_eq!(b[0].last_verify_ok, Some(false));
        assert_eq!(b[0].last_verify_reason.as_deref(), Some("checksum mismatch: a.txt"));
        assert_eq!(store.find_host("web").await.unwrap(), {
            let h = match store.find_host("web").await.unwrap() {
                crate::store::HostLookup::Found(h) => h,
                _ => panic!(),
            };
            assert_eq!(h.last_seq, 2, "job reports advance the host's stored sequence");
            crate::store::HostLookup::Found(h)
        });
    })
    .await;
}

#[tokio::test]
async fn two_stores_claiming_concurrently_never_claim_a_job_twice() {
    on_each_backend(|store, db| async move {
        let other = Store::connect(&db).await.unwrap();
        let s = JobSettings {
            max_running_per_host: 1000,
            ..JobSettings::default()
        };
        let t = 1_700_000_000_000;
        let all_hosts: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let mut new = Vec::new();
        for i in 0..300 {
            new.push(new_job(&all_hosts[i % 10], "checks.run", &[], t));
        }
        enqueue(&store, new, t).await;
        let claim = |st: Store, owner: &'static str, hosts: Vec<String>, s: JobSettings| async move {
            let mut ids = Vec::new();
            loop {
                let c = st.claim_jobs(owner, &hosts, t + 1, 7, &s).await.unwrap();
                if c.is_empty() {
                    return ids;
                }
                ids.extend(c.into_iter().map(|c| c.job_id));
            }
        };
        // Overlapping host sets: both may claim for h0..h9.
        let (a, b) = tokio::join!(
            claim(store.clone(), "cp1", all_hosts.clone(), s.clone()),
            claim(other.clone(), "cp2", all_hosts.clone(), s.clone())
        );
        let mut seen = BTreeSet::new();
        for id in a.iter().chain(b.iter()) {
            assert!(seen.insert(id.clone()), "job {id} claimed twice");
        }
        assert_eq!(seen.len(), 300);
        other.close().await;
    })
    .await;
}

#[tokio::test]
async fn ended_attempts_count_towards_job_success_slos_once() {
    on_each_backend(|store, _| async move {
        let s = JobSettings::default();
        let t: i64 = 1_700_000_000_000;
        let minute = t.div_euclid(60_000);
        store.agent_connected("web", &AgentHello::default(), t).await.unwrap();
        let spec: crate::slo::spec::SloSpec = serde_json::from_value(serde_json::json!({
            "indicator": {"type": "jobSuccess", "action": "backup.run"},
            "objectives": [{"target": 0.9}], "timeWindow": [{"duration": "7d"}]}))
        .unwrap();
        store
            .put_slo(
                "backups",
                &spec,
                AuditEntry::new("token:t", "slos.update", Outcome::Success),
                t,
            )
            .await
            .unwrap();
        let local = |seq: u64, id: &str, outcome: &str| JobReport {
            seq,
            job_id: String::new(),
            attempt_id: id.into(),
            event: JobEventKind::Finished {
                outcome: outcome.into(),
                reason: String::new(),
                result_json: String::new(),
                finished_at_ms: t,
                action: "backup.run".into(),
                params: [("name".to_string(), "pg".to_string())].into(),
                started_at_ms: t - 100,
            },
        };
        // A resent report counts once; a cancelled run does not count.
        for _ in 0..2 {
            report(&store, "web", vec![local(1, "local-1", "succeeded")], &s, t).await;
        }
        report(&store, "web", vec![local(2, "local-2", "failed")], &s, t).await;
        report(&store, "web", vec![local(3, "local-3", "cancelled")], &s, t).await;
        let b = store.slo_buckets("backups", minute, minute).await.unwrap();
        assert_eq!((b[""][0].total, b[""][0].good), (2, 1));
        assert_eq!(store.slo_hours_drift().await.unwrap(), vec![], "hourly sums");
    })
    .await;
}

#[tokio::test]
async fn batched_claims_acceptances_and_finishes_stay_fenced_and_audited_in_one_chain() {
    on_each_backend(|store, _| async move {
        let s = JobSettings {
            max_running_per_host: 100,
            ..JobSettings::default()
        };
        let t = 1_700_000_000_000;
        let mut new = Vec::new();
        for i in 0..30 {
            let host = if i % 2 == 0 { "a" } else { "b" };
            new.push(new_job(host, "checks.run", &[], t + i));
        }
        let jobs = enqueue(&store, new, t).await;
        let claimed = store
            .claim_jobs("cp", &hosts(&["a", "b"]), t + 100, 256, &s)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 30, "one claim takes every due job");
        let ids: BTreeSet<&str> = claimed.iter().map(|c| c.job_id.as_str()).collect();
        assert_eq!(ids.len(), 30, "no job twice");

        // Acceptances of two hosts in one call: a repeat and a stale attempt change nothing.
        let mut acc: Vec<Acceptance> = claimed
            .iter()
            .map(|c| Acceptance {
                host_id: c.host_id.clone(),
                job_id: c.job_id.clone(),
                attempt_id: c.attempt_id.clone(),
            })
            .collect();
        acc.push(acc[0].clone());
        acc.push(Acceptance {
            attempt_id: "stale".into(),
            ..acc[1].clone()
        });
        acc.push(Acceptance {
            host_id: "b".into(),
            ..acc[0].clone()
        });
        let changed = store.accept_jobs(&acc, t + 200, &s).await.unwrap();
        assert_eq!(changed.iter().filter(|c| **c).count(), 30);
        assert_eq!(&changed[30..], &[false, false, false]);

        // Every job finishes in one ingest: a repeated result, a result for a
        // stale attempt and one from the wrong host are ignored.
        let mut by_host: BTreeMap<String, Vec<JobReport>> = BTreeMap::new();
        for (i, c) in claimed.iter().enumerate() {
            let outcome = if i % 3 == 0 { "failed" } else { "succeeded" };
            by_host.entry(c.host_id.clone()).or_default().push(finished(
                i as u64 + 1,
                &c.job_id,
                &c.attempt_id,
                outcome,
                "",
                "{}",
            ));
        }
        let first = claimed.iter().find(|c| c.host_id == "a").unwrap();
        let a = by_host.get_mut("a").unwrap();
        a.push(finished(100, &first.job_id, &first.attempt_id, "failed", "again", "{}"));
        a.push(finished(101, &first.job_id, "stale", "failed", "", "{}"));
        by_host
            .get_mut("b")
            .unwrap()
            .push(finished(102, &first.job_id, &first.attempt_id, "failed", "", "{}"));
        let batches: Vec<IngestBatch> = by_host
            .keys()
            .map(|h| IngestBatch {
                host_id: h.clone(),
                results: Vec::new(),
                spool_dropped_total: 0,
            })
            .collect();
        let jb: Vec<JobBatch> = by_host
            .into_iter()
            .map(|(host_id, reports)| JobBatch { host_id, reports })
            .collect();
        let applied = store
            .ingest_with_jobs(
                &batches,
                &JobIngest {
                    batches: &jb,
                    settings: s.clone(),
                },
                t + 300,
            )
            .await
            .unwrap();
        assert_eq!(applied.finished.len(), 30);
        for (i, c) in claimed.iter().enumerate() {
            let job = store.get_job(&c.job_id).await.unwrap().unwrap();
            let want = if i % 3 == 0 {
                JobState::Failed
            } else {
                JobState::Succeeded
            };
            assert_eq!(job.state, want, "{}", job.id);
            assert_eq!(job.lease_owner, None);
            assert_eq!(
                actions_of(&store, &job.id).await,
                ["jobs.create", "jobs.dispatch", "jobs.start", "jobs.finish"],
                "{}",
                job.id
            );
        }
        assert!(jobs.iter().all(|j| ids.contains(j.id.as_str())));

        // The batched appends form one unbroken chain (signed by a start
        // checkpoint, as a control plane does, so that it verifies).
        let signer = std::sync::Arc::new(crate::audit::signing::Signer::generate().unwrap());
        crate::audit::checkpointer::Checkpointer::new(store.clone(), signer.clone(), Default::default())
            .checkpoint(crate::audit::chain::CheckpointKind::Start, true, t + 400)
            .await
            .unwrap();
        let snap = store.audit_snapshot().await.unwrap();
        assert_eq!(snap.entries.len(), 120);
        crate::audit::chain::verify(&crate::audit::chain::VerifyInput {
            entries: &snap.entries,
            checkpoints: &snap.checkpoints,
            trusted_keys: &[signer.public_key()],
            head: None,
            pinned: &[],
        })
        .unwrap();
    })
    .await;
}
