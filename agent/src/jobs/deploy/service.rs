//! Restarting a systemd unit, behind a trait so tests can substitute a fake
//! that starts and stops a local process.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed, sendable future (keeps [`ServiceManager`] usable as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Restarts services. The executor holds one as `Arc<dyn ServiceManager>`.
pub trait ServiceManager: Send + Sync {
    /// Restarts `unit`; the error is a one-line reason.
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// The real one: `systemctl restart UNIT` (no shell), bounded by a timeout.
#[derive(Debug, Clone)]
pub struct Systemctl {
    pub program: String,
    pub timeout: Duration,
}

impl Default for Systemctl {
    fn default() -> Self {
        Self {
            program: "systemctl".into(),
            timeout: Duration::from_secs(90),
        }
    }
}

impl ServiceManager for Systemctl {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let child = tokio::process::Command::new(&self.program)
                .args(["restart", "--", unit])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(self.timeout, child).await {
                Err(_) => Err(format!("systemctl restart {unit} timed out after {:?}", self.timeout)),
                Ok(Err(e)) => Err(format!("cannot run {}: {e}", self.program)),
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let tail: String = stderr.trim().chars().take(500).collect();
                    Err(format!("systemctl restart {unit}: {}: {tail}", out.status))
                }
            }
        })
    }
}

/// `[agent] service_manager = "command"`: runs `argv... UNIT` (no shell). For
/// hosts without systemd as PID 1, and the stand-in for systemd in tests: the
/// command must stop the unit's old process and start the new one in the
/// background (detached, its output not on the command's stdout/stderr).
#[derive(Debug, Clone)]
pub struct CommandService {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl ServiceManager for CommandService {
    fn restart<'a>(&'a self, unit: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(program) = self.argv.first() else {
                return Err("restart_command is empty".into());
            };
            let mut child = tokio::process::Command::new(program)
                .args(&self.argv[1..])
                .arg(unit)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let mut stderr = child.stderr.take();
            let status = match tokio::time::timeout(self.timeout, child.wait()).await {
                Err(_) => return Err(format!("restart of {unit} timed out after {:?}", self.timeout)),
                Ok(Err(e)) => return Err(format!("wait for {program}: {e}")),
                Ok(Ok(status)) => status,
            };
            if status.success() {
                return Ok(());
            }
            // A background process may hold the pipe open: read what is there, briefly.
            let mut buf = Vec::new();
            if let Some(err) = stderr.as_mut() {
                use tokio::io::AsyncReadExt;
                let _ = tokio::time::timeout(Duration::from_millis(200), err.read_to_end(&mut buf)).await;
            }
            let text = String::from_utf8_lossy(&buf);
            let tail: String = text.trim().chars().take(500).collect();
            Err(format!("restart of {unit} ({program}): {status}: {tail}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn systemctl_failures_are_reasons_not_panics() {
        let missing = Systemctl {
            program: "/nonexistent/systemctl".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(missing.restart("x.service").await.unwrap_err().contains("cannot run"));
        let failing = Systemctl {
            program: "/bin/false".into(),
            timeout: Duration::from_secs(5),
        };
        assert!(failing.restart("x.service").await.unwrap_err().contains("x.service"));
        let ok = Systemctl {
            program: "/bin/true".into(),
            timeout: Duration::from_secs(5),
        };
        ok.restart("x.service").await.unwrap();
    }

    #[tokio::test]
    async fn a_restart_command_gets_the_unit_and_may_leave_a_process_running() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("restart.sh");
        let seen = tmp.path().join("seen");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1\" > {}\n[ \"$1\" = bad.service ] && {{ echo no such unit >&2; exit 3; }}\n\
                 sleep 30 >/dev/null 2>&1 &\nexit 0\n",
                seen.display()
            ),
        )
        .unwrap();
        // Run through /bin/sh rather than exec'ing the fresh file: a file just
        // written can be "busy" (ETXTBSY) while a parallel test forks.
        let svc = CommandService {
            argv: vec!["/bin/sh".into(), script.display().to_string()],
            timeout: Duration::from_secs(5),
        };
        // The background `sleep 30` outlives the 5 s timeout: waiting for it
        // would fail this call with a timeout.
        svc.restart("web.service").await.unwrap();
        assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "web.service");
        let err = svc.restart("bad.service").await.unwrap_err();
        assert!(err.contains("bad.service") && err.contains("no such unit"), "{err}");
    }
}
