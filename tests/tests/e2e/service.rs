//! The daemons as systemd services, without systemd: with `NOTIFY_SOCKET` set
//! to a datagram socket the test listens on, and `WATCHDOG_USEC` small,
//! `READY=1`, `WATCHDOG=1`, `RELOADING=1` and `STOPPING=1` arrive in order;
//! SIGTERM ends both daemons with status 0 within their grace periods.
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_e2e::{Agent, ControlPlane, fast_checks, wait_for};

/// `WATCHDOG_USEC` given to the daemons: 400 ms, so a ping every 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// A notification socket like systemd's: receives datagrams on a thread and
/// keeps each message with its arrival time.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`; `on_message` runs on the receiving thread
    /// right when a message arrives (to observe the world at that instant).
    fn bind(dir: &Path, on_message: impl Fn(&str) + Send + 'static) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with the test process; recv errors end it earlier.
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                on_message(&msg);
                sink.lock().unwrap().push((Instant::now(), msg));
            }
        });
        NotifySocket { path, received }
    }

    /// The environment systemd would give the service.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.path.display().to_string()),
            ("WATCHDOG_USEC".into(), WATCHDOG_USEC.into()),
        ]
    }

    /// Every `KEY=VALUE` line received so far, in order.
    fn lines(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, m)| m.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// Waits until `line` has arrived at least `n` times.
    async fn wait_count(&self, line: &str, n: usize, timeout: Duration) {
        wait_for(&format!("{n} × {line}"), timeout, || async {
            (self.count(line) >= n).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; received: {:?}", self.lines()));
    }
}

fn position(lines: &[String], line: &str) -> Option<usize> {
    lines.iter().position(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_notifies_ready_pings_the_watchdog_reloads_and_stops() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let notify = NotifySocket::bind(root.path(), |_| {});
    let mut agent = Agent::prepare(root.path(), &cp, "notified", &fast_checks(1), "").unwrap();
    agent.env = notify.env();
    agent.spawn().unwrap();

    notify.wait_count("READY=1", 1, Duration::from_secs(30)).await;
    // Pinged every 200 ms: a few pings within seconds, none before READY.
    notify.wait_count("WATCHDOG=1", 3, Duration::from_secs(10)).await;
    let lines = notify.lines();
    assert!(
        position(&lines, "READY=1") < position(&lines, "WATCHDOG=1"),
        "{lines:?}"
    );

    // A reload is bracketed by RELOADING=1 … READY=1, refused or not.
    let good = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("{good}\n[[checks]]\nname = \"x\"\nkind = \"bogus\"\n"),
    )
    .unwrap();
    agent.sighup();
    notify.wait_count("READY=1", 2, Duration::from_secs(10)).await;
    let lines = notify.lines();
    let reloading = position(&lines, "RELOADING=1").expect("RELOADING=1 before the second READY=1");
    assert!(
        lines[reloading + 1].starts_with("MONOTONIC_USEC="),
        "systemd ≥ 253 wants the time with RELOADING=1: {lines:?}"
    );
    assert!(lines[reloading..].contains(&"READY=1".to_string()));
    assert!(agent.log().contains("reload refused"), "{}", agent.log());
    // Still alive and pinging after the refused reload.
    let pings = notify.count("WATCHDOG=1");
    notify
        .wait_count("WATCHDOG=1", pings + 2, Duration::from_secs(10))
        .await;

    let started = Instant::now();
    let status = agent.terminate().expect("agent was running");
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    assert!(started.elapsed() < Duration::from_secs(10 + 5), "within shutdown_grace");
    notify.wait_count("STOPPING=1", 1, Duration::from_secs(5)).await;
    let lines = notify.lines();
    let stopping = position(&lines, "STOPPING=1").unwrap();
    assert!(
        !lines[stopping..].contains(&"WATCHDOG=1".to_string()),
        "pings come from the main loop only, which has ended: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controlplane_notifies_ready_once_listening_and_pings_the_watchdog() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    let first = cp.terminate().expect("control plane was running");
    assert!(first.success(), "SIGTERM exits 0: {first:?}; log:\n{}", cp.log());

    // When READY=1 arrives, both listeners must already accept connections.
    let rest_addr = cp.rest_url.trim_start_matches("http://").to_string();
    let grpc_addr = cp.grpc_addr;
    let listening_at_ready = Arc::new(Mutex::new(None));
    let seen = listening_at_ready.clone();
    let notify = NotifySocket::bind(root.path(), move |msg| {
        if msg.lines().any(|l| l == "READY=1") {
            let rest = TcpStream::connect(&rest_addr).is_ok();
            let grpc = TcpStream::connect(grpc_addr).is_ok();
            *seen.lock().unwrap() = Some((rest, grpc));
        }
    });
    cp.env = notify.env();
    cp.spawn().await.unwrap();

    notify.wait_count("READY=1", 1, Duration::from_secs(30)).await;
    assert_eq!(
        *listening_at_ready.lock().unwrap(),
        Some((true, true)),
        "REST and gRPC listeners are bound before READY=1"
    );
    notify.wait_count("WATCHDOG=1", 3, Duration::from_secs(10)).await;

    let started = Instant::now();
    let status = cp.terminate().expect("control plane was running");
    assert!(status.success(), "exit {status:?}; log:\n{}", cp.log());
    assert!(started.elapsed() < Duration::from_secs(10 + 5), "within the REST grace");
    notify.wait_count("STOPPING=1", 1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_controlplane_down_exits_0_after_the_grace_and_keeps_the_spool() {
    let root = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(root.path()).await.unwrap();
    cp.kill9(); // nothing can be delivered
    let mut agent = Agent::prepare(root.path(), &cp, "unreachable", &fast_checks(2), "").unwrap();
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        config.replace("shutdown_grace = \"10s\"", "shutdown_grace = \"2s\""),
    )
    .unwrap();
    let notify = NotifySocket::bind(root.path(), |_| {});
    agent.env = notify.env();
    agent
        .env
        .push(("STEWARD_LOG".into(), "info,steward_agent::scheduler=debug".into()));
    agent.spawn().unwrap();
    notify.wait_count("READY=1", 1, Duration::from_secs(30)).await;
    // Results pile up while the control plane is away (SIGTERM flushes them
    // into the spool).
    wait_for("four check runs", Duration::from_secs(30), || async {
        (agent.log().matches("check ran").count() >= 4).then_some(())
    })
    .await
    .unwrap();

    let started = Instant::now();
    let status = agent.terminate().expect("agent was running");
    let took = started.elapsed();
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    assert!(
        took < Duration::from_secs(2 + 5),
        "shutdown_grace is 2 s; took {took:?}; log:\n{}",
        agent.log()
    );
    let stats = agent.spool_stats().unwrap();
    assert!(stats.depth >= 4, "undelivered results stay in the spool: {stats:?}");
    assert_eq!(stats.dropped_total, 0);
}
