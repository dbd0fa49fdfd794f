//! A raw gRPC client of the agent gateway for tests that act as an agent (or
//! an attacker) without the agent binary: mTLS with any certificate, a
//! session opened with `Hello`, renewals and batches sent by hand.
use std::time::Duration;

use steward_shared::proto::{
    self, AgentMessage, ControlMessage, agent_gateway_client::AgentGatewayClient, agent_message, control_message,
    report,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ControlPlane;

/// What a client presents: the CA it trusts and, optionally, its certificate and key.
#[derive(Clone)]
pub struct Creds {
    pub ca_pem: String,
    pub identity: Option<(String, String)>,
}

impl Creds {
    /// The files `ca issue-agent` or `steward-agent enroll` wrote into `dir`.
    pub fn from_dir(dir: &std::path::Path) -> Creds {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        Creds {
            ca_pem: read("ca.pem"),
            identity: Some((read("agent.pem"), read("agent.key"))),
        }
    }

    /// The same key with another certificate.
    pub fn with_cert(&self, cert_pem: &str) -> Creds {
        let (_, key) = self.identity.clone().expect("an identity");
        Creds {
            ca_pem: self.ca_pem.clone(),
            identity: Some((cert_pem.to_string(), key)),
        }
    }
}

/// A TLS channel to the control plane's gateway.
pub async fn channel(cp: &ControlPlane, creds: &Creds) -> Result<Channel, String> {
    channel_to(cp.grpc_addr.port(), creds).await
}

/// A TLS channel to a gateway on `localhost:port`.
pub async fn channel_to(port: u16, creds: &Creds) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = &creds.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

pub fn hello() -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(proto::Hello {
            agent_version: "test".into(),
            protocol: 1,
            ..Default::default()
        })),
    }
}

pub fn renew(csr_der: Vec<u8>) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Renew(proto::RenewRequest { csr_der })),
    }
}

/// A batch of `probe` check results with these sequence numbers.
pub fn batch(seqs: &[u64], message: &str) -> AgentMessage {
    let reports = seqs
        .iter()
        .map(|s| proto::Report {
            seq: *s,
            body: Some(report::Body::Check(proto::CheckResult {
                name: "probe".into(),
                kind: "tcp".into(),
                status: proto::CheckStatus::Ok as i32,
                message: message.into(),
                ..Default::default()
            })),
        })
        .collect();
    AgentMessage {
        msg: Some(agent_message::Msg::Reports(proto::ReportBatch {
            reports,
            spool_dropped_total: 0,
        })),
    }
}

/// An open session: send with `tx`, read from `inbound`.
pub struct Session {
    pub tx: mpsc::Sender<AgentMessage>,
    pub inbound: Streaming<ControlMessage>,
    pub welcome: proto::Welcome,
}

/// Opens a session (`first` is normally [`hello`]) and reads the Welcome.
pub async fn open(ch: Channel, first: AgentMessage) -> Result<Session, tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.expect("the request stream is open");
    let mut inbound = AgentGatewayClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(ControlMessage {
            msg: Some(control_message::Msg::Welcome(welcome)),
        }) => Ok(Session { tx, inbound, welcome }),
        other => Err(tonic::Status::internal(format!("unexpected first message {other:?}"))),
    }
}

/// Connects with `creds` and opens a session: the gateway's answer.
pub async fn connect(cp: &ControlPlane, creds: &Creds) -> Result<Session, tonic::Status> {
    connect_to(cp.grpc_addr.port(), creds).await
}

/// [`connect`] to a gateway on `localhost:port`.
pub async fn connect_to(port: u16, creds: &Creds) -> Result<Session, tonic::Status> {
    let ch = channel_to(port, creds)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("no TLS connection: {e}")))?;
    open(ch, hello()).await
}

impl Session {
    /// Sends a renewal and returns the new certificate, or the status that ended the stream.
    pub async fn renew(&mut self, csr_der: Vec<u8>) -> Result<String, tonic::Status> {
        self.tx
            .send(renew(csr_der))
            .await
            .map_err(|_| tonic::Status::cancelled("the stream is closed"))?;
        loop {
            match self.inbound.message().await? {
                Some(ControlMessage {
                    msg: Some(control_message::Msg::Renew(r)),
                }) => return Ok(r.cert_pem),
                Some(_) => continue, // acks, job assignments
                None => return Err(tonic::Status::cancelled("the stream ended")),
            }
        }
    }

    /// Sends a batch and waits for its ack.
    pub async fn send_batch(&mut self, seqs: &[u64]) -> Result<u64, tonic::Status> {
        self.tx
            .send(batch(seqs, "by hand"))
            .await
            .map_err(|_| tonic::Status::cancelled("the stream is closed"))?;
        loop {
            match self.inbound.message().await? {
                Some(ControlMessage {
                    msg: Some(control_message::Msg::Ack(a)),
                }) => return Ok(a.acked_seq),
                Some(_) => continue,
                None => return Err(tonic::Status::cancelled("the stream ended")),
            }
        }
    }
}
