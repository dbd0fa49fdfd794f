//! The gateway refuses what it must (plaintext, no certificate, a foreign CA,
//! malformed and oversized messages) and keeps serving everyone else.
use std::sync::Arc;
use std::time::Duration;

use steward_e2e::ControlPlane;
use steward_shared::pki::Ca;
use steward_shared::proto::{
    self, AgentMessage, ControlMessage, agent_gateway_client::AgentGatewayClient, agent_message, control_message,
    report,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Creds {
    ca_pem: String,
    identity: Option<(String, String)>,
}

fn agent_creds(cp: &ControlPlane, root: &std::path::Path, host: &str) -> Creds {
    let dir = root.join(format!("creds-{host}"));
    cp.issue_agent(host, &dir).unwrap();
    Creds {
        ca_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        identity: Some((
            std::fs::read_to_string(dir.join("agent.pem")).unwrap(),
            std::fs::read_to_string(dir.join("agent.key")).unwrap(),
        )),
    }
}

async fn channel(cp: &ControlPlane, creds: &Creds) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = &creds.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{}", cp.grpc_addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

fn hello() -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(proto::Hello {
            agent_version: "test".into(),
            protocol: 1,
            ..Default::default()
        })),
    }
}

/// Opens a session and returns the sender, the inbound stream and the Welcome.
async fn open(
    ch: Channel,
    first: AgentMessage,
) -> Result<(mpsc::Sender<AgentMessage>, Streaming<ControlMessage>, proto::Welcome), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let mut inbound = AgentGatewayClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(ControlMessage {
            msg: Some(control_message::Msg::Welcome(w)),
        }) => Ok((tx, inbound, w)),
        other => Err(tonic::Status::internal(format!("unexpected first message {other:?}"))),
    }
}

fn batch(seqs: &[u64], message: &str) -> AgentMessage {
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

/// A well-behaved client gets a Welcome and an Ack: the gateway is still serving.
async fn assert_gateway_serves(cp: &ControlPlane, creds: &Creds, seq: u64) {
    let ch = channel(cp, creds).await.expect("valid client connects");
    let (tx, mut inbound, welcome) = open(ch, hello()).await.expect("valid client gets a welcome");
    assert!(!welcome.host_id.is_empty());
    tx.send(batch(&[seq], "fine")).await.unwrap();
    match inbound.message().await.unwrap() {
        Some(ControlMessage {
            msg: Some(control_message::Msg::Ack(a)),
        }) => assert!(a.acked_seq >= seq),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_certificateless_and_foreign_ca_clients_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let good = agent_creds(&cp, root.path(), "good");

    // Plaintext HTTP/2 against the TLS port.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", cp.grpc_addr.port())).unwrap();
    if let Ok(ch) = plain.connect().await {
        assert!(open(ch, hello()).await.is_err(), "plaintext must not get a session");
    }

    // TLS without a client certificate.
    let no_cert = Creds {
        ca_pem: good.ca_pem.clone(),
        identity: None,
    };
    if let Ok(ch) = channel(&cp, &no_cert).await {
        assert!(
            open(ch, hello()).await.is_err(),
            "a client without a certificate must not get a session"
        );
    }

    // A certificate from another CA, even with a plausible host name.
    let foreign = Ca::create("Evil CA", Duration::from_secs(3600)).unwrap();
    let evil = foreign.issue_agent("good", Duration::from_secs(3600)).unwrap();
    let foreign_creds = Creds {
        ca_pem: good.ca_pem.clone(),
        identity: Some((evil.cert_pem, evil.key_pem)),
    };
    if let Ok(ch) = channel(&cp, &foreign_creds).await {
        assert!(
            open(ch, hello()).await.is_err(),
            "a foreign-CA certificate must not get a session"
        );
    }

    assert_gateway_serves(&cp, &good, 1).await;
    // The refusals are counted.
    let metrics = reqwest::get(format!("{}/metrics", cp.rest_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("rejected"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_certificate_not_the_message() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let creds = agent_creds(&cp, root.path(), "real-host");
    let mut h = hello();
    if let Some(agent_message::Msg::Hello(hello)) = &mut h.msg {
        hello.facts.insert("hostname".into(), "someone-else".into());
    }
    let (_tx, _inbound, welcome) = open(channel(&cp, &creds).await.unwrap(), h).await.unwrap();
    assert_eq!(welcome.host_id, "real-host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_end_only_their_own_stream() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let creds = agent_creds(&cp, root.path(), "fuzzy");

    // First message is not hello.
    let err = open(channel(&cp, &creds).await.unwrap(), batch(&[1], "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Sequence numbers going backwards.
    let (tx, mut inbound, _) = open(channel(&cp, &creds).await.unwrap(), hello()).await.unwrap();
    tx.send(batch(&[5, 3], "x")).await.unwrap();
    let err = inbound.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // A message over the gateway's size limit (4 MiB by default).
    let (tx, mut inbound, _) = open(channel(&cp, &creds).await.unwrap(), hello()).await.unwrap();
    let _ = tx.send(batch(&[1], &"x".repeat(6 << 20))).await;
    let r = inbound.message().await;
    assert!(
        r.is_err(),
        "an oversized message ends the stream: {r:?}; log:\n{}",
        cp.log()
    );

    // Garbage bytes after a valid mTLS handshake.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for c in steward_shared::pki::certs_from_pem(&creds.ca_pem).unwrap() {
                roots.add(c).unwrap();
            }
            roots
        })
        .with_client_auth_cert(
            steward_shared::pki::certs_from_pem(&creds.identity.as_ref().unwrap().0).unwrap(),
            steward_shared::pki::key_from_pem(&creds.identity.as_ref().unwrap().1).unwrap(),
        )
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(cp.grpc_addr).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let _ = tls.write_all(&[0xde; 4096]).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the gateway closes a connection that speaks garbage");

    // Nothing above took the gateway down.
    assert_gateway_serves(&cp, &creds, 1).await;
    let (status, _) = cp.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_grpc_health_service_answers_on_the_gateway() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let creds = agent_creds(&cp, root.path(), "prober");
    let mut health = HealthClient::new(channel(&cp, &creds).await.unwrap());
    for service in ["", "steward.v1.AgentGateway"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "{service:?}");
    }
}
