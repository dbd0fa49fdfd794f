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
}
