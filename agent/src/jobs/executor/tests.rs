//! Executor tests: policy, journal, timeout, output cap and dispatch.
use super::*;
use crate::jobs::policy::ActionsSection;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct RecordingService {
    restarted: Mutex<Vec<String>>,
}

impl ServiceManager for RecordingService {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.restarted.lock().unwrap().push(unit.to_string());
            Ok(())
        })
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    exec: Executor,
    journal: Arc<Journal>,
    svc: Arc<RecordingService>,
}

fn fixture(cap: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "data").unwrap();
    let backup: BackupConfig = toml::from_str(&format!(
        "name = \"files\"\nsources = [{:?}]\ndestination = {:?}\n",
        src.display().to_string(),
        tmp.path().join("dest").display().to_string()
    ))
    .unwrap();
    let journal = Arc::new(Journal::open(&tmp.path().join("jobs.redb")).unwrap());
    let svc = Arc::new(RecordingService::default());
    let actions = ActionsSection {
        allow: [
            "backup.run",
            "backup.verify",
            "service.restart:nginx.service",
            "exec",
            "checks.run",
        ]
        .map(String::from)
        .to_vec(),
        exec: vec![
            "/bin/echo hello".into(),
            "/bin/sleep 30".into(),
            "/usr/bin/seq 1 100000".into(),
            "/bin/false".into(),
        ],
    };
    let exec = Executor::new(&actions, vec![backup], vec![], journal.clone(), svc.clone())
        .unwrap()
        .with_output_cap(cap)
        .with_clock(Arc::new(|| 1_700_000_000));
    Fixture {
        tmp,
        exec,
        journal,
        svc,
    }
}

fn assignment(attempt: &str, action: &str, params: &[(&str, &str)]) -> Assignment {
    Assignment {
        job_id: format!("job-{attempt}"),
        attempt_id: attempt.into(),
        action: action.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout: Duration::from_secs(20),
    }
}

/// Runs an assignment and collects its progress.
async fn run(f: &Fixture, a: Assignment) -> (JobResult, Vec<Progress>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let result = f.exec.run(a, tx).await;
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (result, progress)
}

fn stdout(progress: &[Progress]) -> String {
    progress
        .iter()
        .filter_map(|p| match p {
            Progress::Output {
                stream: OutputStream::Stdout,
                chunk,
                ..
            } => Some(chunk.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn actions_outside_the_policy_are_refused_and_not_run() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    // Every refused action would create this marker if it ran.
    let marker = f.tmp.path().join("ran");
    let touch = format!("/usr/bin/touch {}", marker.display());
    let chained = format!("/bin/echo hello; {touch}");
    let releases = f.tmp.path().join("releases");
    for (action, params) in [
        (
            "deploy.apply",
            vec![
                ("app", "web"),
                ("version", "1"),
                ("artifact", "/a.tar.gz"),
                ("sha256", "ab"),
            ],
        ),
        ("service.restart", vec![("unit", "sshd.service")]),
        ("exec", vec![("command", touch.as_str())]),
        ("exec", vec![("command", chained.as_str())]),
        ("exec", vec![("command", "/bin/echo hello; reboot")]),
        ("rm -rf /", vec![]),
    ] {
        let (r, progress) = run(&f, assignment("a1", action, &params)).await;
        let reason = r.outcome.reason().unwrap_or_default().to_string();
        assert!(
            reason.starts_with("not allowed by agent policy: "),
            "{action}: {reason}"
        );
        assert!(progress.is_empty());
        assert!(!marker.exists(), "{action} {params:?} ran");
    }
    assert!(f.svc.restarted.lock().unwrap().is_empty());
    assert!(f.journal.get("a1").unwrap().is_none());
    assert!(!releases.exists());

    // The marker does show a run: the same command, once allowed, creates it.
    let actions = ActionsSection {
        allow: vec!["exec".into()],
        exec: vec![touch.clone()],
    };
    let journal = Arc::new(Journal::open(&f.tmp.path().join("allowed.redb")).unwrap());
    let allowed = Executor::new(&actions, vec![], vec![], journal, f.svc.clone()).unwrap();
    let (tx, _rx) = mpsc::channel(1024);
    let r = allowed
        .run(assignment("a2", "exec", &[("command", touch.as_str())]), tx)
        .await;
    assert_eq!(r.outcome, JobOutcome::Succeeded);
    assert!(marker.exists());
}

#[tokio::test]
async fn exec_streams_output_and_reports_the_exit_code() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let (r, progress) = run(&f, assignment("a1", "exec", &[("command", "/bin/echo hello")])).await;
    assert_eq!(r.outcome, JobOutcome::Succeeded);
    assert_eq!(r.result, serde_json::json!({"exit_code": 0}));
    assert!(matches!(progress.first(), Some(Progress::Started { .. })));
    assert_eq!(stdout(&progress), "hello\n");
    let (r, _) = run(&f, assignment("a2", "exec", &[("command", "/bin/false")])).await;
    assert!(matches!(r.outcome, JobOutcome::Failed { .. }));
    assert_eq!(r.result, serde_json::json!({"exit_code": 1}));
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_and_marked_truncated_once() {
    let f = fixture(1000);
    let (r, progress) = run(&f, assignment("a1", "exec", &[("command", "/usr/bin/seq 1 100000")])).await;
    assert_eq!(r.outcome, JobOutcome::Succeeded);
    assert!(r.output_truncated);
    assert_eq!(stdout(&progress).len(), 1000);
    assert_eq!(
        progress
            .iter()
            .filter(|p| matches!(p, Progress::Truncated { .. }))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_job_past_its_timeout_is_stopped() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let mut a = assignment("a1", "exec", &[("command", "/bin/sleep 30")]);
    a.timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let (r, _) = run(&f, a).await;
    assert!(matches!(r.outcome, JobOutcome::TimedOut { .. }), "{:?}", r.outcome);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(f.journal.get("a1").unwrap().unwrap().result.unwrap().outcome, r.outcome);
}

#[tokio::test]
async fn a_redelivered_attempt_is_not_run_twice() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let (first, _) = run(&f, assignment("a1", "backup.run", &[("name", "files")])).await;
    assert_eq!(first.outcome, JobOutcome::Succeeded, "{first:?}");
    assert_eq!(first.result["files"], 1);
    assert_eq!(first.result["verified"], true);
    let (again, progress) = run(&f, assignment("a1", "backup.run", &[("name", "files")])).await;
    assert_eq!(again, first);
    assert!(progress.is_empty());
    let dest = f.tmp.path().join("dest/files");
    let snapshots = std::fs::read_dir(dest)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(snapshots, 1);
    let (verify, _) = run(&f, assignment("a2", "backup.verify", &[("name", "files")])).await;
    assert_eq!(verify.outcome, JobOutcome::Succeeded, "{verify:?}");
    let (missing, _) = run(&f, assignment("a3", "backup.run", &[("name", "nope")])).await;
    assert!(
        missing.outcome.reason().unwrap().contains("no backup named"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn an_attempt_cut_short_by_a_crash_is_reported_interrupted_and_never_rerun() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    f.journal.begin("cut", "job-9", "exec", 1).unwrap();
    let pending = f.exec.interrupted_results().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].job_id.as_str(), pending[0].outcome.reason()),
        ("job-9", Some(INTERRUPTED))
    );
    let (r, progress) = run(&f, assignment("cut", "exec", &[("command", "/bin/echo hello")])).await;
    assert_eq!(r.outcome, JobOutcome::failed(INTERRUPTED));
    assert!(progress.is_empty());
    f.journal.finish(&pending[0]).unwrap();
    assert!(f.exec.interrupted_results().unwrap().is_empty());
}

#[tokio::test]
async fn service_restart_goes_through_the_service_manager() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let (r, _) = run(&f, assignment("a1", "service.restart", &[("unit", "nginx.service")])).await;
    assert_eq!(r.outcome, JobOutcome::Succeeded);
    assert_eq!(*f.svc.restarted.lock().unwrap(), vec!["nginx.service".to_string()]);
}

#[tokio::test]
async fn checks_run_needs_the_runtime() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let (r, _) = run(&f, assignment("a1", "checks.run", &[])).await;
    assert!(r.outcome.reason().unwrap().contains("handled by the agent runtime"));
    struct Runner;
    impl ChecksRunner for Runner {
        fn run_checks(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async { Ok(serde_json::json!({"checks": 3})) })
        }
    }
    let tmp = PathBuf::from(f.tmp.path());
    let exec = Executor::new(
        &ActionsSection {
            allow: vec!["checks.run".into()],
            exec: vec![],
        },
        vec![],
        vec![],
        Arc::new(Journal::open(&tmp.join("other.redb")).unwrap()),
        f.svc.clone(),
    )
    .unwrap()
    .with_checks(Arc::new(Runner));
    let (tx, _rx) = mpsc::channel(16);
    let r = exec.run(assignment("a2", "checks.run", &[]), tx).await;
    assert_eq!(
        (r.outcome, r.result),
        (JobOutcome::Succeeded, serde_json::json!({"checks": 3}))
    );
}

#[tokio::test]
async fn a_cancelled_job_stops_its_command() {
    let f = fixture(DEFAULT_OUTPUT_CAP);
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let job = f.exec.run_cancellable(
        assignment("a1", "exec", &[("command", "/bin/sleep 30")]),
        tx,
        cancel.clone(),
    );
    tokio::pin!(job);
    // Cancel once the command has started (not after a guessed delay).
    let mut started = false;
    let r = loop {
        tokio::select! {
            r = &mut job => break r,
            Some(p) = rx.recv(), if !started => {
                if matches!(p, Progress::Started { .. }) {
                    started = true;
                    cancel.cancel();
                }
            }
        }
    };
    assert!(started, "the job ended before it started: {:?}", r.outcome);
    assert!(matches!(r.outcome, JobOutcome::Cancelled { .. }), "{:?}", r.outcome);
    assert!(f.exec.interrupted_results().unwrap().is_empty());
}
