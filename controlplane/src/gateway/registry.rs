//! Live agent sessions by host. A host has at most one current session: a new
//! stream from the same host supersedes (and closes) the old one. Also the
//! handle later issues use to close a revoked host's stream at once.
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// A registered session; pass it back to [`Registry::unregister`].
pub struct SessionHandle {
    pub host_id: String,
    pub generation: u64,
    pub cancel: CancellationToken,
}

impl Registry {
    /// Registers a new session for `host_id`, closing the previous one if any.
    pub fn register(&self, host_id: &str) -> SessionHandle {
        let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let cancel = CancellationToken::new();
        let old = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host_id.to_string(), (generation, cancel.clone()));
        if let Some((_, old_cancel)) = old {
            old_cancel.cancel();
        }
        SessionHandle {
            host_id: host_id.to_string(),
            generation,
            cancel,
        }
    }

    /// Removes the session if it is still the current one for its host;
    /// returns whether it was (only then is the host really disconnected).
    pub fn unregister(&self, handle: &SessionHandle) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&handle.host_id) {
            Some((generation, _)) if *generation == handle.generation => {
                map.remove(&handle.host_id);
                true
            }
            _ => false,
        }
    }

    /// Closes the live session of `host_id`, if any.
    pub fn kick(&self, host_id: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(host_id) {
            Some((_, cancel)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn connected(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_session_supersedes_the_old_one() {
        let r = Registry::default();
        let a = r.register("web");
        let b = r.register("web");
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
        assert!(!r.unregister(&a), "the superseded session does not disconnect the host");
        assert_eq!(r.connected(), 1);
        assert!(r.kick("web"));
        assert!(b.cancel.is_cancelled());
        assert!(r.unregister(&b));
        assert_eq!(r.connected(), 0);
        assert!(!r.kick("web"));
    }
}
