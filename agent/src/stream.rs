//! The stream client: one long-lived bidirectional gRPC stream over mutual
//! TLS to the control plane. Sends `Hello`, reconciles the spool with the
//! control plane's `Welcome`, streams spooled reports in batches (a bounded
//! window of unacknowledged batches), deletes them on `Ack`, and heartbeats.
//! Reconnects with capped exponential backoff and full jitter. Job
//! assignments are acknowledged with `JobAccepted` at once and handed to the
//! [`JobRunner`]; their events come back through the spool like check results.
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
use crate::enroll::{self, IdentityPaths};
use crate::jobs::JobRunner;
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
    #[error("no certificate at {0}: enroll this agent with `steward-agent enroll --server URL --token TOKEN`")]
    NotEnrolled(String),
    #[error(
        "the agent certificate expired at {at} (unix time) and could not be renewed in time: create a token with \
         `stewardctl enroll-tokens create` and run `steward-agent enroll --force --server {url} --token TOKEN`"
    )]
    Expired { at: i64, url: String },
    #[error("enrollment failed: {0}")]
    Enroll(#[from] crate::enroll::EnrollError),
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
    /// Takes job assignments and cancels; without it assignments are not accepted.
    pub jobs: Option<Arc<JobRunner>>,
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

/// Asks for a new certificate once two thirds of the current one's lifetime
/// have passed (checked after `Welcome` and at every heartbeat tick). Returns
/// whether a renewal is outstanding.
async fn request_renewal_if_due(
    paths: &IdentityPaths,
    tx: &mpsc::Sender<AgentMessage>,
    outstanding: bool,
) -> Result<bool, StreamError> {
    if outstanding || !enroll::due_for_renewal(&paths.cert, steward_shared::now_ms() / 1000) {
        return Ok(outstanding);
    }
    match enroll::renewal_csr(paths) {
        Ok(csr_der) => {
            let renew = proto::RenewRequest { csr_der };
            if tx
                .send(AgentMessage {
                    msg: Some(agent_message::Msg::Renew(renew)),
                })
                .await
                .is_err()
            {
                return Err(StreamError::Protocol("stream closed while sending".into()));
            }
            tracing::info!("certificate renewal requested");
            Ok(true)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot prepare the certificate renewal");
            Ok(false)
        }
    }
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

    /// Makes sure there is a usable certificate: enrolls with the configured
    /// token when there is none; refuses (with what to do) when it expired.
    async fn ensure_identity(&self, paths: &IdentityPaths) -> Result<(), StreamError> {
        match enroll::cert_validity(&paths.cert) {
            None => {
                let Some(token) = &self.server.enrollment_token else {
                    return Err(StreamError::NotEnrolled(paths.cert.display().to_string()));
                };
                let host_id = self.server.host_id.clone().unwrap_or_else(enroll::default_host_id);
                let id = enroll::enroll(
                    &self.server.url,
                    token,
                    &host_id,
                    paths,
                    self.server.server_name.as_deref(),
                    false,
                )
                .await?;
                tracing::info!(host = %id, "enrolled with the control plane");
                Ok(())
            }
            Some((_, not_after)) if not_after <= steward_shared::now_ms() / 1000 => Err(StreamError::Expired {
                at: not_after,
                url: self.server.url.clone(),
            }),
            Some(_) => Ok(()),
        }
    }

    async fn attempt(
        &self,
        stop: &CancellationToken,
        deadline: &mut Option<Instant>,
        grace: Duration,
        backoff: &mut Backoff,
    ) -> Result<End, StreamError> {
        let paths = self.server.identity_paths(&self.data_dir);
        self.ensure_identity(&paths).await?;
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

        let mut renewing = request_renewal_if_due(&paths, &tx, false).await?;
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
                        Some(proto::ControlMessage { msg: Some(control_message::Msg::Renew(r)) }) => {
                            match enroll::install_renewed(&paths, &r.cert_pem) {
                                Ok(()) => {
                                    renewing = false;
                                    let until = enroll::cert_validity(&paths.cert).map(|v| v.1).unwrap_or(0);
                                    tracing::info!(valid_until = until, "certificate renewed; used from the next connection");
                                }
                                Err(error) => tracing::error!(%error, "cannot install the renewed certificate"),
                            }
                        }
                        Some(proto::ControlMessage { msg: Some(control_message::Msg::Job(assignment)) }) => {
                            let Some(jobs) = &self.jobs else {
                                tracing::warn!(job = %assignment.job_id, "job assignment ignored: this agent runs no jobs");
                                continue;
                            };
                            // Receipt first: also for a re-delivered attempt, which the runner never runs twice.
                            let accepted = proto::JobAccepted {
                                job_id: assignment.job_id.clone(),
                                attempt_id: assignment.attempt_id.clone(),
                            };
                            if tx.send(AgentMessage { msg: Some(agent_message::Msg::JobAccepted(accepted)) }).await.is_err() {
                                return Err(StreamError::Protocol("stream closed while sending".into()));
                            }
                            last_sent = Instant::now();
                            jobs.assign(assignment);
                        }
                        Some(proto::ControlMessage { msg: Some(control_message::Msg::Cancel(c)) }) => {
                            if let Some(jobs) = &self.jobs {
                                jobs.cancel(&c.job_id, &c.attempt_id);
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
                    renewing = request_renewal_if_due(&paths, &tx, renewing).await?;
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
