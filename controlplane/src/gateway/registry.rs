//! Live agent sessions by host. A host has at most one current session: a new
//! stream from the same host supersedes (and closes) the old one. Also the
//! handle later issues use to close a revoked host's stream at once, and
//! the way the job dispatcher reaches a connected host's stream.
use std::collections::HashMap;
use std::sync::Mutex;
use steward_shared::proto::ControlMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a session sends its agent: a control message, or the status that ends the stream.
pub type OutItem = Result<ControlMessage, tonic::Status>;

/// The sending half of a session's outbound stream. Items travel boxed: a
/// bounded tokio channel allocates its slots 32 at a time, and an unboxed
/// item is a few hundred bytes, which every idle session would hold.
#[derive(Debug, Clone)]
pub struct Outbound(mpsc::Sender<Box<OutItem>>);

impl Outbound {
    /// A session's outbound queue of `capacity` items.
    pub fn channel(capacity: usize) -> (Outbound, mpsc::Receiver<Box<OutItem>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbound(tx), rx)
    }

    /// Waits for room; `Err` when the stream is gone.
    pub async fn send(&self, item: OutItem) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }

    /// Sends without waiting.
    pub fn try_send(&self, item: OutItem) -> Result<(), mpsc::error::TrySendError<Box<OutItem>>> {
        self.0.try_send(Box::new(item))
    }
}

/// (generation, cancel, serial of the certificate the session presented).
type Session = (u64, CancellationToken, Box<str>);

#[derive(Default)]
pub struct Registry {
    /// By host: (generation, cancel, serial of the certificate the session presented).
    inner: Mutex<HashMap<String, Session>>,
    /// Outbound streams of the current sessions, by host (set by [`Registry::attach`]).
    outbound: Mutex<HashMap<String, (u64, Outbound)>>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// A registered session; pass it back to [`Registry::unregister`].
pub struct SessionHandle {
    pub host_id: String,
    pub generation: u64,
    pub cancel: CancellationToken,
}

impl Registry {
    /// Registers a new session for `host_id` (connected with the certificate
    /// `serial`), closing the previous one if any.
    pub fn register(&self, host_id: &str, serial: &str) -> SessionHandle {
        let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let cancel = CancellationToken::new();
        let old = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host_id.to_string(), (generation, cancel.clone(), serial.into()));
        if let Some((_, old_cancel, _)) = old {
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
            Some((generation, _, _)) if *generation == handle.generation => {
                map.remove(&handle.host_id);
                let mut out = self.outbound.lock().unwrap_or_else(|p| p.into_inner());
                if out.get(&handle.host_id).is_some_and(|(g, _)| *g == handle.generation) {
                    out.remove(&handle.host_id);
                }
                true
            }
            _ => false,
        }
    }

    /// Closes the live session of `host_id`, if any.
    pub fn kick(&self, host_id: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(host_id) {
            Some((_, cancel, _)) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Closes the live session of `host_id` if it presented the certificate `serial`.
    pub fn kick_serial(&self, host_id: &str, serial: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(host_id) {
            Some((_, cancel, s)) if &**s == serial => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Makes the session's outbound stream reachable (for job assignments).
    pub fn attach(&self, handle: &SessionHandle, out: Outbound) {
        let current = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle.host_id)
            .is_some_and(|(g, _, _)| *g == handle.generation);
        if current {
            self.outbound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle.host_id.clone(), (handle.generation, out));
        }
    }

    /// The outbound stream of the current session of `host_id`.
    pub fn outbound(&self, host_id: &str) -> Option<Outbound> {
        self.outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host_id)
            .map(|(_, o)| o.clone())
    }

    /// Hosts with a session attached here, sorted.
    pub fn attached_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .outbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        hosts.sort_unstable();
        hosts
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
        let a = r.register("web", "01");
        let b = r.register("web", "02");
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
        let (tx, _rx) = Outbound::channel(1);
        r.attach(&a, tx.clone());
        assert!(r.attached_hosts().is_empty(), "a superseded session is not attached");
        r.attach(&b, tx);
        assert_eq!(r.attached_hosts(), vec!["web".to_string()]);
        assert!(!r.unregister(&a), "the superseded session does not disconnect the host");
        assert!(r.outbound("web").is_some());
        assert_eq!(r.connected(), 1);
        assert!(!r.kick_serial("web", "01"), "the superseded certificate has no session");
        assert!(!b.cancel.is_cancelled());
        assert!(r.kick_serial("web", "02"));
        assert!(b.cancel.is_cancelled());
        assert!(r.kick("web"));
        assert!(r.unregister(&b));
        assert_eq!(r.connected(), 0);
        assert!(r.outbound("web").is_none());
        assert!(!r.kick("web"));
    }
}
