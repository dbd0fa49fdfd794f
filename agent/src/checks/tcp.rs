//! `tcp`: connect to `host:port` and report the connect latency. Each
//! resolved address is tried in turn; refusal, resolution failure and
//! timeout are `critical`.
use std::time::Instant;
use steward_shared::status::Value;
use tokio::net::TcpStream;

use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, verdict};

pub(crate) struct TcpProbe {
    pub address: String,
    /// On connect latency, milliseconds.
    pub latency: Thresholds,
}

impl TcpProbe {
    pub async fn run(&self) -> Outcome {
        let addrs: Vec<_> = match tokio::net::lookup_host(&self.address).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => return Outcome::critical(format!("cannot resolve {}: {e}", self.address)),
        };
        let mut last_error = format!("{} resolved to no address", self.address);
        for addr in addrs {
            let started = Instant::now();
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    drop(stream);
                    let status = self.latency.status(ms);
                    let message = format!(
                        "connected to {} ({addr}) in {} ms{}",
                        self.address,
                        trim_float(ms),
                        verdict(status, &self.latency)
                    );
                    return Outcome::new(status, vec![Value::new("latency_ms", ms, "ms")], message);
                }
                Err(e) => last_error = format!("cannot connect to {} ({addr}): {e}", self.address),
            }
        }
        Outcome::critical(last_error)
    }
}

#[cfg(test)]
mod tests {
    use super::super::thresholds::Direction;
    use super::*;
    use steward_shared::status::CheckStatus;

    fn probe(address: String) -> TcpProbe {
        TcpProbe {
            address,
            latency: Thresholds::none(Direction::HigherIsWorse),
        }
    }

    #[tokio::test]
    async fn open_port_is_ok_with_latency() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let out = probe(addr.to_string()).run().await;
        assert_eq!(out.status, CheckStatus::Ok, "{out:?}");
        assert_eq!(out.values[0].name, "latency_ms");
        assert!(out.values[0].value >= 0.0);
    }

    #[tokio::test]
    async fn closed_port_is_critical() {
        // Bound but not listening: nothing accepts there, and no parallel
        // test can take the port meanwhile (as it could after a close).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let out = probe(closed.local_addr().unwrap().to_string()).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert!(out.message.contains("cannot connect"), "{}", out.message);
    }

    #[tokio::test]
    async fn latency_thresholds_apply() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = probe(listener.local_addr().unwrap().to_string());
        p.latency.critical = Some(0.0);
        let out = p.run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert!(out.message.contains("(critical: >= 0)"), "{}", out.message);
    }
}
