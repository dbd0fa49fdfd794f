//! Runner tests: assignments in, `JobEvent` reports in a real spool out.
use super::*;
use crate::jobs::deploy::{ServiceManager, service::BoxFuture};
use crate::jobs::policy::ActionsSection;
use std::path::{Path, PathBuf};
use steward_shared::proto::Report;

struct NoService;
impl ServiceManager for NoService {
    fn restart<'a>(&'a self, _unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

struct Fx {
    tmp: tempfile::TempDir,
    runner: Arc<JobRunner>,
    spool: Arc<Spool>,
    new_data: Arc<Notify>,
    journal: Arc<Journal>,
    backup: BackupConfig,
    counter: PathBuf,
}

/// A shell script, run as `/bin/sh PATH` (never exec'd itself: a file just
/// written can be "busy" (ETXTBSY) while a parallel test forks).
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{body}\n")).unwrap();
    p.display().to_string()
}

fn executor(tmp: &Path, journal: &Arc<Journal>, backup: &BackupConfig, allow: &[&str], cap: usize) -> Executor {
    let actions = ActionsSection {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        exec: vec![
            "/bin/echo hello".into(),
            "/bin/sleep 30".into(),
            "/usr/bin/seq 1 100000".into(),
            format!("/bin/sh {}", tmp.join("count.sh").display()),
        ],
    };
    Executor::new(
        &actions,
        vec![backup.clone()],
        vec![],
        journal.clone(),
        Arc::new(NoService),
    )
    .unwrap()
    .with_output_cap(cap)
}

fn fixture(max_jobs: usize, cap: usize) -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha").unwrap();
    std::fs::write(src.join("sub/b.txt"), "bravo").unwrap();
    let counter = tmp.path().join("count");
    script(tmp.path(), "count.sh", &format!("echo run >> {}", counter.display()));
    let backup: BackupConfig = toml::from_str(&format!(
        "name = \"files\"\nsources = [{:?}]\ndestination = {:?}\nkeep_last = 2\nrpo = \"1h\"\n",
        src.display().to_string(),
        tmp.path().join("dest").display().to_string()
    ))
    .unwrap();
    let journal = Arc::new(Journal::open(&tmp.path().join("jobs.redb")).unwrap());
    let spool = Arc::new(Spool::open(&tmp.path().join("spool.redb"), 64 << 20).unwrap());
    let new_data = Arc::new(Notify::new());
    let exec = executor(
        tmp.path(),
        &journal,
        &backup,
        &["exec", "backup.run", "backup.verify"],
        cap,
    );
    let runner = JobRunner::new(
        exec,
        journal.clone(),
        spool.clone(),
        new_data.clone(),
        max_jobs,
        Duration::from_secs(60),
    );
    Fx {
        tmp,
        runner,
        spool,
        new_data,
        journal,
        backup,
        counter,
    }
}

fn assignment(attempt: &str, action: &str, params: &[(&str, &str)], timeout_secs: u64) -> proto::JobAssignment {
    proto::JobAssignment {
        job_id: format!("job-{attempt}"),
        attempt_id: attempt.into(),
        action: action.into(),
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        timeout_secs,
    }
}

fn events(spool: &Spool) -> Vec<proto::JobEvent> {
    spool
        .read_after(0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|r: Report| match r.body {
            Some(report::Body::Job(e)) => Some(e),
            _ => None,
        })
        .collect()
}

fn finished_of(events: &[proto::JobEvent], attempt: &str) -> Vec<proto::JobFinished> {
    events
        .iter()
        .filter(|e| e.attempt_id == attempt)
        .filter_map(|e| match &e.event {
            Some(job_event::Event::Finished(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

impl Fx {
    /// Waits (bounded) until `n` finished events for `attempt` are spooled.
    async fn finished(&self, attempt: &str, n: usize) -> Vec<proto::JobFinished> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let f = finished_of(&events(&self.spool), attempt);
            if f.len() >= n {
                return f;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no finished event for {attempt}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), self.new_data.notified()).await;
        }
    }

    /// Waits until `attempt` is running (its `started` progress is spooled).
    async fn started(&self, attempt: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !events(&self.spool)
            .iter()
            .any(|e| e.attempt_id == attempt && matches!(e.event, Some(job_event::Event::Progress(_))))
        {
            assert!(tokio::time::Instant::now() < deadline, "{attempt} never started");
            let _ = tokio::time::timeout(Duration::from_millis(200), self.new_data.notified()).await;
        }
    }
}

#[tokio::test]
async fn an_assignment_becomes_started_output_and_finished_reports() {
    let fx = fixture(2, 1 << 20);
    fx.runner
        .assign(assignment("a1", "exec", &[("command", "/bin/echo hello")], 10));
    let f = fx.finished("a1", 1).await;
    assert_eq!(f[0].outcome, "succeeded");
    assert_eq!(f[0].reason, "");
    assert_eq!(f[0].action, "exec");
    assert_eq!(f[0].params.get("command").map(String::as_str), Some("/bin/echo hello"));
    assert!(f[0].started_at_ms > 0 && f[0].finished_at_ms >= f[0].started_at_ms);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&f[0].result_json).unwrap()["exit_code"],
        0
    );
    let ev = events(&fx.spool);
    assert!(ev.iter().all(|e| e.job_id == "job-a1" && e.attempt_id == "a1"));
    assert!(matches!(&ev[0].event, Some(job_event::Event::Progress(p)) if p.stage == "started"));
    let output: Vec<u8> = ev
        .iter()
        .filter_map(|e| match &e.event {
            Some(job_event::Event::Output(o)) => Some(o.data.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(output, b"hello\n");
    assert!(
        matches!(ev.last().unwrap().event, Some(job_event::Event::Finished(_))),
        "finished comes last"
    );
    assert_eq!(fx.runner.active(), 0);
}

#[tokio::test]
async fn a_redelivered_attempt_never_runs_twice() {
    let fx = fixture(2, 1 << 20);
    let command = format!("/bin/sh {}", fx.tmp.path().join("count.sh").display());
    fx.runner.assign(assignment("r1", "exec", &[("command", &command)], 10));
    fx.finished("r1", 1).await;
    // Re-delivered after it finished (a lost ack): answered from the journal.
    fx.runner.assign(assignment("r1", "exec", &[("command", &command)], 10));
    let f = fx.finished("r1", 2).await;
    assert_eq!(
        (f[0].outcome.as_str(), f[1].outcome.as_str()),
        ("succeeded", "succeeded")
    );
    assert_eq!(std::fs::read_to_string(&fx.counter).unwrap(), "run\n", "ran once");

    // Re-delivered while running: acknowledged, not started again.
    fx.runner
        .assign(assignment("r2", "exec", &[("command", "/bin/sleep 30")], 60));
    fx.started("r2").await;
    fx.runner
        .assign(assignment("r2", "exec", &[("command", "/bin/sleep 30")], 60));
    assert_eq!(fx.runner.active(), 1);
    assert!(fx.runner.cancel("job-r2", "r2"));
    let f = fx.finished("r2", 1).await;
    assert_eq!(f[0].outcome, "cancelled");
    assert_eq!(f[0].reason, "cancelled by the control plane");
    // Exactly one started event for r2.
    let starts = events(&fx.spool)
        .iter()
        .filter(|e| e.attempt_id == "r2" && matches!(e.event, Some(job_event::Event::Progress(_))))
        .count();
    assert_eq!(starts, 1);
    assert!(!fx.runner.cancel("job-r2", "r2"), "nothing left to cancel");
}

#[tokio::test]
async fn timeouts_refusals_and_unlisted_commands_are_reported() {
    let fx = fixture(4, 1 << 20);
    fx.runner
        .assign(assignment("t1", "exec", &[("command", "/bin/sleep 30")], 1));
    fx.runner
        .assign(assignment("p1", "deploy.apply", &[("app", "web")], 10));
    fx.runner
        .assign(assignment("p2", "exec", &[("command", "/bin/rm -rf /")], 10));
    let t = fx.finished("t1", 1).await;
    assert_eq!(t[0].outcome, "timed_out");
    assert_eq!(t[0].reason, "timed out after 1s");
    for attempt in ["p1", "p2"] {
        let f = fx.finished(attempt, 1).await;
        assert_eq!(f[0].outcome, "failed");
        assert!(
            f[0].reason.starts_with("not allowed by agent policy: "),
            "{}",
            f[0].reason
        );
    }
    // A refused attempt is not journalled as run: nothing ran.
    assert!(fx.journal.get("p2").unwrap().is_none());
}

#[tokio::test]
async fn output_is_chunked_with_contiguous_offsets_and_truncated_at_the_cap() {
    let cap = 40 * 1024;
    let fx = fixture(1, cap);
    fx.runner
        .assign(assignment("o1", "exec", &[("command", "/usr/bin/seq 1 100000")], 30));
    let f = fx.finished("o1", 1).await;
    assert_eq!(f[0].outcome, "succeeded");
    let outputs: Vec<proto::JobOutput> = events(&fx.spool)
        .into_iter()
        .filter_map(|e| match e.event {
            Some(job_event::Event::Output(o)) => Some(o),
            _ => None,
        })
        .collect();
    let mut next = 0u64;
    for o in &outputs {
        assert_eq!(o.offset, next, "offsets are contiguous");
        assert!(o.data.len() <= CHUNK_BYTES);
        next += o.data.len() as u64;
    }
    assert_eq!(next as usize, cap, "exactly the cap is kept");
    let flagged: Vec<_> = outputs.iter().filter(|o| o.truncated).collect();
    assert_eq!(flagged.len(), 1, "truncated once");
    assert!(flagged[0].data.is_empty());
    let text: Vec<u8> = outputs.iter().flat_map(|o| o.data.clone()).collect();
    assert!(text.starts_with(b"1\n2\n3\n"));
}

#[tokio::test]
async fn attempts_cut_short_by_a_crash_are_reported_interrupted_once() {
    let fx = fixture(1, 1 << 20);
    fx.journal
        .begin("dead-1", "job-dead", "backup.run", 1_700_000_000)
        .unwrap();
    assert_eq!(fx.runner.report_interrupted().await, 1);
    let f = fx.finished("dead-1", 1).await;
    assert_eq!((f[0].outcome.as_str(), f[0].reason.as_str()), ("failed", "interrupted"));
    assert_eq!(f[0].action, "backup.run");
    assert_eq!(f[0].started_at_ms, 1_700_000_000_000);
    assert_eq!(fx.runner.report_interrupted().await, 0, "reported once");
    // A re-delivery of it is answered from the journal and does not run.
    fx.runner
        .assign(assignment("dead-1", "backup.run", &[("name", "files")], 10));
    let f = fx.finished("dead-1", 2).await;
    assert_eq!(f[1].reason, "interrupted");
    assert!(!fx.backup.dir().exists(), "the backup did not run");
}

#[tokio::test]
async fn drain_gives_a_grace_period_then_cancels_and_refuses_new_work() {
    let fx = fixture(2, 1 << 20);
    fx.runner
        .assign(assignment("d1", "exec", &[("command", "/bin/echo hello")], 10));
    fx.runner
        .assign(assignment("d2", "exec", &[("command", "/bin/sleep 30")], 60));
    fx.started("d2").await;
    let started = std::time::Instant::now();
    fx.runner.drain(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fx.finished("d1", 1).await[0].outcome, "succeeded");
    let f = fx.finished("d2", 1).await;
    assert_eq!(
        (f[0].outcome.as_str(), f[0].reason.as_str()),
        ("cancelled", SHUTTING_DOWN)
    );
    assert_eq!(
        fx.journal.get("d2").unwrap().unwrap().result.unwrap().outcome.reason(),
        Some(SHUTTING_DOWN)
    );
    let command = format!("/bin/sh {}", fx.tmp.path().join("count.sh").display());
    fx.runner.assign(assignment("d3", "exec", &[("command", &command)], 10));
    let f = fx.finished("d3", 1).await;
    assert_eq!(
        (f[0].outcome.as_str(), f[0].reason.as_str()),
        ("cancelled", SHUTTING_DOWN)
    );
    assert!(!fx.counter.exists(), "nothing started during the drain");
}

#[tokio::test]
async fn a_reload_applies_the_new_policy_to_new_jobs() {
    let fx = fixture(2, 1 << 20);
    fx.runner
        .assign(assignment("h1", "exec", &[("command", "/bin/echo hello")], 10));
    assert_eq!(fx.finished("h1", 1).await[0].outcome, "succeeded");
    fx.runner.replace_executor(executor(
        fx.tmp.path(),
        &fx.journal,
        &fx.backup,
        &["backup.run"],
        1 << 20,
    ));
    fx.runner
        .assign(assignment("h2", "exec", &[("command", "/bin/echo hello")], 10));
    let f = fx.finished("h2", 1).await;
    assert_eq!(f[0].outcome, "failed");
    assert!(
        f[0].reason.contains("action exec is not in [actions] allow"),
        "{}",
        f[0].reason
    );
}

#[tokio::test]
async fn assigned_and_local_backups_report_what_the_backups_view_needs() {
    let fx = fixture(2, 1 << 20);
    fx.runner
        .assign(assignment("b1", "backup.run", &[("name", "files")], 60));
    let f = fx.finished("b1", 1).await;
    assert_eq!(f[0].outcome, "succeeded", "{}", f[0].reason);
    let v: serde_json::Value = serde_json::from_str(&f[0].result_json).unwrap();
    assert_eq!(v["backup"], "files");
    assert_eq!(v["files"], 2);
    assert_eq!(v["bytes"], 10);
    assert_eq!(v["verified"], true);
    assert_eq!(v["rpo_secs"], 3600);
    assert!(v["created_at"].as_i64().unwrap() > 1_700_000_000);
    assert!(v["deleted"].as_array().unwrap().is_empty());

    // A local run: empty job ID, local-<uuid> attempt, action/params/start set.
    fx.runner.run_local(fx.backup.clone(), false).await;
    fx.runner.run_local(fx.backup.clone(), false).await; // keep_last = 2: this one deletes b1's snapshot
    let local: Vec<proto::JobEvent> = events(&fx.spool).into_iter().filter(|e| e.job_id.is_empty()).collect();
    assert_eq!(local.len(), 2, "only finished events for local runs");
    let mut snapshots = vec![v["snapshot"].as_str().unwrap().to_string()];
    for e in &local {
        assert!(
            e.attempt_id.starts_with("local-") && e.attempt_id.len() == 6 + 36,
            "{}",
            e.attempt_id
        );
        let Some(job_event::Event::Finished(f)) = &e.event else {
            panic!("not finished")
        };
        assert_eq!(
            (f.outcome.as_str(), f.action.as_str()),
            ("succeeded", "backup.run"),
            "{}",
            f.reason
        );
        assert_eq!(f.params.get("name").map(String::as_str), Some("files"));
        assert!(f.started_at_ms > 0);
        let v: serde_json::Value = serde_json::from_str(&f.result_json).unwrap();
        snapshots.push(v["snapshot"].as_str().unwrap().to_string());
    }
    let Some(job_event::Event::Finished(last)) = &local[1].event else {
        unreachable!()
    };
    let v: serde_json::Value = serde_json::from_str(&last.result_json).unwrap();
    // One of the two older snapshots (they may share a second, so either) is gone, never the new one.
    let deleted = v["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1);
    assert!(snapshots[..2].iter().any(|s| deleted[0] == *s.as_str()), "{deleted:?}");

    // Scheduled verification of a corrupted latest snapshot names the file.
    let latest = &crate::jobs::backup::list_snapshots(&fx.backup).unwrap()[0].id;
    let archive = fx.backup.dir().join(format!("{latest}.tar.zst"));
    corrupt_file_in_archive(&archive, "a.txt");
    fx.runner.run_local(fx.backup.clone(), true).await;
    let verify = events(&fx.spool)
        .into_iter()
        .filter(|e| e.job_id.is_empty())
        .filter_map(|e| match e.event {
            Some(job_event::Event::Finished(f)) if f.action == "backup.verify" => Some(f),
            _ => None,
        })
        .next()
        .expect("verification reported");
    assert_eq!(verify.outcome, "failed");
    assert!(
        verify.reason.contains("a.txt") && verify.reason.contains("differs"),
        "{}",
        verify.reason
    );
    let v: serde_json::Value = serde_json::from_str(&verify.result_json).unwrap();
    assert_eq!(
        (v["backup"].as_str(), v["verified"].as_bool()),
        (Some("files"), Some(false))
    );
}

/// Rewrites `archive` with the content of the entry ending in `name` changed
/// (same size): a valid archive whose file no longer matches the manifest.
pub(crate) fn corrupt_file_in_archive(archive: &Path, name: &str) {
    let raw = zstd::decode_all(std::fs::File::open(archive).unwrap()).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    for entry in tar::Archive::new(raw.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_string_lossy().ends_with(name) {
            data.iter_mut().for_each(|b| *b = b'X');
        }
        out.append_data(&mut header, &path, data.as_slice()).unwrap();
    }
    let tar = out.into_inner().unwrap();
    std::fs::write(archive, zstd::encode_all(tar.as_slice(), 3).unwrap()).unwrap();
}

#[tokio::test]
async fn backup_schedules_run_without_a_control_plane_and_never_overlap() {
    let fx = fixture(2, 1 << 20);
    let mut cfg = fx.backup.clone();
    cfg.schedule = Some("*/1 * * * * *".into());
    cfg.verify_schedule = Some("*/1 * * * * *".into());
    cfg.keep_last = Some(50);
    let stop = CancellationToken::new();
    let task = tokio::spawn(fx.runner.clone().run_schedules(vec![cfg], stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let actions: Vec<String> = events(&fx.spool)
            .into_iter()
            .filter_map(|e| match e.event {
                Some(job_event::Event::Finished(f)) if f.outcome == "succeeded" => Some(f.action),
                _ => None,
            })
            .collect();
        if actions.iter().filter(|a| *a == "backup.run").count() >= 2 && actions.iter().any(|a| a == "backup.verify") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "schedules did not fire: {actions:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), fx.new_data.notified()).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn retention_with_an_injected_clock_keeps_exactly_restics_set() {
    use std::sync::atomic::AtomicI64;
    let fx = fixture(1, 1 << 20);
    let mut backup = fx.backup.clone();
    backup.verify_after = false;
    backup.keep_last = Some(2);
    backup.keep_daily = Some(3);
    backup.keep_weekly = Some(2);
    backup.keep_monthly = Some(2);
    let now = Arc::new(AtomicI64::new(0));
    let clock = now.clone();
    let actions = ActionsSection {
        allow: vec!["backup.run".into()],
        exec: vec![],
    };
    let exec = Executor::new(
        &actions,
        vec![backup.clone()],
        vec![],
        fx.journal.clone(),
        Arc::new(NoService),
    )
    .unwrap()
    .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    fx.runner.replace_executor(exec);
    let at = |month: u8, day: u8| steward_shared::timestamp::epoch_days(2026, month, day).unwrap() * 86_400 + 3 * 3600;
    // One backup a day at 03:00 UTC from 2026-01-01 to 2026-02-20 (a Friday).
    let days: Vec<i64> = (at(1, 1)..=at(2, 20)).step_by(86_400).collect();
    let mut deleted = Vec::new();
    for (i, t) in days.iter().enumerate() {
        now.store(*t, Ordering::SeqCst);
        let attempt = format!("ret-{i}");
        fx.runner
            .assign(assignment(&attempt, "backup.run", &[("name", "files")], 60));
        let f = fx.finished(&attempt, 1).await;
        assert_eq!(f[0].outcome, "succeeded", "{}", f[0].reason);
        let v: serde_json::Value = serde_json::from_str(&f[0].result_json).unwrap();
        assert_eq!(v["created_at"], *t);
        deleted.extend(
            v["deleted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string()),
        );
    }
    let mut kept: Vec<i64> = crate::jobs::backup::list_snapshots(&backup)
        .unwrap()
        .into_iter()
        .map(|m| m.created_at)
        .collect();
    kept.sort_unstable_by(|a, b| b.cmp(a));
    // keep-last 2: 02-20, 02-19; keep-daily 3: + 02-18; keep-weekly 2: W08 (02-20) and
    // W07 (Sunday 02-15); keep-monthly 2: February (02-20) and January (01-31).
    assert_eq!(kept, vec![at(2, 20), at(2, 19), at(2, 18), at(2, 15), at(1, 31)]);
    assert_eq!(
        deleted.len(),
        days.len() - kept.len(),
        "every other snapshot was reported deleted once"
    );
}
