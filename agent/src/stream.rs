//! The stream client: one long-lived bidirectional gRPC stream over mutual
//! TLS to the control plane. Sends `Hello`, reconciles the spool with the
//! control plane's `Welcome`, streams spooled reports in batches (a bounded
//! window of unacknowledged batches), deletes them on `Ack`, and heartbeats.
//! Reconnects with capped exponential backoff and full jitter.
//!
//! Invariants:
//! - Only reports read from the spool are sent, and a report leaves the spool
//!   only on an `Ack` covering its sequence: a crash or disconnect at any point
//!   means resending, never losing.
//! - Certificate and key files are read on every connect, so a renewed
//!   certificate is picked up without a restart.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use steward_shared::proto::{
    self, AgentMessage, agent_gateway_client::AgentGatewayClient, agent_message, control_message,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::backoff::Backoff;
use crate::config::ServerSection;
use crate::spool::{Spool, SpoolError};

/// Unacknowledged batches allowed in flight on one stream.
const WINDOW: usize = 4;

/// Why a stream attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read {path}: {message}")]
    Identity { path: String, message: String },
    #[error("invalid server URL {0:?}")]
    Url(String),
    #[error("connect failed: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("spool task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Everything the stream client needs.
pub struct StreamClient {
    pub server: ServerSection,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub max_batch: usize,
    pub spool: Arc<Spool>,
    /// Signalled by the spool writer after each append.
    pub new_data: Arc<Notify>,
    pub facts: std::collections::BTreeMap<String, String>,
}

enum End {
    /// Stop was requested and the spool is empty (or the grace period ran out).
    Done,
}

async fn blocking<T: Send + 'static>(
    spool: &Arc<Spool>,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, StreamError> {
    let spool = spool.clone();
    Ok(tokio::task::spawn_blocking(move || f(&spool)).await??)
}

impl StreamClient {
    /// Runs until `stop` is cancelled and then tries, for at most `grace`, to
    /// deliver what is spooled. Never returns early on errors: it reconnects.
    pub async fn run(self, stop: CancellationToken, grace: Duration) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.server.reconnect_max.as_std());
        let mut deadline: Option<Instant> = None;
        loop {
            if stop.is_cancelled() && deadline.is_none() {
                deadline = Some(Instant::now() + grace);
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    tracing::warn!("shutdown grace period over; undelivered reports stay in the spool");
                    return;
                }
                match self.spool.stats() {
                    Ok(s) if s.depth == 0 => return,
                    _ => {}
                }
            }
            match self.attempt(&stop, &mut deadline, grace, &mut backoff).await {
                Ok(End::Done) => return,
                Err(error) => {
                    tracing::warn!(%error, "stream to the control plane ended");
                }
            }
            let wait = backoff.next_delay();
            tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
            let sleep_until = match deadline {
                Some(d) => (Instant::now() + wait).min(d),
                None => Instant::now() + wait,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(sleep_until) => {}
                _ = stop.cancelled(), if deadline.is_none() => {}
            }
        }
    }

    fn read_file(path: &std::path::Path) -> Result<String, StreamError> {
        std::fs::read_to_string(path).map_err(|e| StreamError::Identity {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    async fn connect(&self) -> Result<Channel, StreamError> {
        let ca = Self::read_file(&self.server.ca_cert_path(&self.data_dir))?;
        let cert = Self::read_file(&self.server.cert_path(&self.data_dir))?;
        let key = Self::read_file(&self.server.key_path(&self.data_dir))?;
        let uri: http::Uri = self
            .server
            .url
            .parse()
            .map_err(|_| StreamError::Url(self.server.url.clone()))?;
        let domain = match &self.server.server_name {
            Some(name) => name.clone(),
            None => uri
                .host()
                .ok_or_else(|| StreamError::Url(self.server.url.clone()))?
                .trim_matches(['[', ']'])
                .to_string(),
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(domain)
            .timeout(self.server.connect_timeout.as_std());
        let endpoint = Endpoint::from_shared(self.server.url.clone())
            .map_err(|_| StreamError::Url(self.server.url.clone()))?
            .connect_timeout(self.server.connect_timeout.as_std())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .tls_config(tls)?;
        Ok(endpoint.connect().await?)
    }

    async fn attempt(
        &self,
        stop: &CancellationToken,
        deadline: &mut Option<Instant>,
        grace: Duration,
        backoff: &mut Backoff,
    ) -> Result<End, StreamError> {
        let channel = self.connect().await?;
        let mut client = AgentGatewayClient::new(channel).max_decoding_message_size(16 << 20);
        let stats = blocking(&self.spool, |s| s.stats()).await?;
        let (tx, rx) = mpsc::channel::<AgentMessage>(WINDOW + 4);
        let hello = proto::Hello {
            agent_version: crate::VERSION.to_string(),
            facts: self.facts.clone().into_iter().collect(),
            last_acked_seq: stats.acked_seq,
            spool_dropped_total: stats.dropped_total,
            protocol: steward_shared::PROTOCOL_REVISION,
        };
        let _ = tx
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            })
            .await;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();

        let welcome = match inbound.message().await? {
            Some(proto::ControlMessage {
                msg: Some(control_message::Msg::Welcome(w)),
            }) => w,
            Some(_) => return Err(StreamError::Protocol("expected welcome as the first message".into())),
            None => return Err(StreamError::Protocol("stream closed before welcome".into())),
        };
        let cp_acked = welcome.acked_seq;
        blocking(&self.spool, move |s| s.reconcile(cp_acked)).await?;
        backoff.reset();
        let max_batch = self.max_batch.min(welcome.max_batch.max(1) as usize);
        let heartbeat = if welcome.heartbeat_interval_secs > 0 {
            Duration::from_secs(welcome.heartbeat_interval_secs as u64).min(self.heartbeat)
        } else {
            self.heartbeat
        };
        tracing::info!(host = %welcome.host_id, acked = cp_acked, "connected to the control plane");

        let mut sent_up_to = cp_acked.max(blocking(&self.spool, |s| s.stats()).await?.acked_seq);
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut last_sent = Instant::now();
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;

        loop {
            // Fill the window from the spool.
            while in_flight.len() < WINDOW {
                let after = sent_up_to;
                let batch = blocking(&self.spool, move |s| s.read_after(after, max_batch)).await?;
                let Some(last) = batch.last().map(|r| r.seq) else { break };
                let dropped = blocking(&self.spool, |s| s.stats()).await?.dropped_total;
                let msg = proto::ReportBatch {
                    reports: batch,
                    spool_dropped_total: dropped,
                };
                if tx
                    .send(AgentMessage {
                        msg: Some(agent_message::Msg::Reports(msg)),
                    })
                    .await
                    .is_err()
                {
                    return Err(StreamError::Protocol("stream closed while sending".into()));
                }
                sent_up_to = last;
                in_flight.push_back(last);
                last_sent = Instant::now();
            }
            if let Some(d) = *deadline {
                if in_flight.is_empty() && blocking(&self.spool, |s| s.stats()).await?.depth == 0 {
                    return Ok(End::Done);
                }
                if Instant::now() >= d {
                    return Ok(End::Done);
                }
            }
            let deadline_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                message = inbound.message() => {
                    match message? {
                        Some(proto::ControlMessage { msg: Some(control_message::Msg::Ack(ack)) }) => {
                            let n = ack.acked_seq;
                            blocking(&self.spool, move |s| s.ack(n)).await?;
                            while in_flight.front().is_some_and(|top| *top <= n) {
                                in_flight.pop_front();
                            }
                        }
                        Some(proto::ControlMessage { msg: Some(other) }) => {
                            tracing::debug!(?other, "ignoring a control message this agent version does not handle");
                        }
                        Some(proto::ControlMessage { msg: None }) => {}
                        None => return Err(StreamError::Protocol("the control plane closed the stream".into())),
                    }
                }
                _ = self.new_data.notified(), if in_flight.len() < WINDOW => {}
                _ = ticker.tick() => {
                    if last_sent.elapsed() >= heartbeat / 2 {
                        let s = blocking(&self.spool, |s| s.stats()).await?;
                        let hb = proto::Heartbeat { sent_at_ms: steward_shared::now_ms(), spool_depth: s.depth, spool_dropped_total: s.dropped_total };
                        if tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) }).await.is_err() {
                            return Err(StreamError::Protocol("stream closed while sending".into()));
                        }
                        last_sent = Instant::now();
                    }
                }
                _ = stop.cancelled(), if deadline.is_none() => {
                    *deadline = Some(Instant::now() + grace);
                }
                _ = tokio::time::sleep_until(deadline_at), if deadline.is_some() => {
                    return Ok(End::Done);
                }
            }
        }
    }
}
