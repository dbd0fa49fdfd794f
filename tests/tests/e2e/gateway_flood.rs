//! The unauthenticated side of the gateway under a flood: thousands of idle
//! connections without a certificate and a burst of enrollments with bad
//! tokens (from other loopback addresses) leave connected agents streaming,
//! a new agent able to enroll, and the audit log within its denial budget.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use steward_e2e::{Agent, ControlPlane, fast_checks, wait_for};
use steward_shared::proto::{EnrollRequest, agent_gateway_client::AgentGatewayClient};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

/// A gateway channel whose TCP connection leaves from `source` (a loopback address).
async fn channel_from(cp: &ControlPlane, ca_pem: &str, source: IpAddr) -> Result<Channel, tonic::transport::Error> {
    let target = cp.grpc_addr;
    let connector = tower::service_fn(move |_: Uri| async move {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(target).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    Endpoint::from_shared(format!("https://localhost:{}", target.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_with_connector(connector)
        .await
}

/// A TLS session without a client certificate, left idle.
async fn idle_tls(
    target: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    source: IpAddr,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let tcp: TcpStream = socket.connect(target).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn audit_len(cp: &ControlPlane) -> usize {
    let (status, v) = cp.get("/api/v1/audit/export").await.unwrap();
    assert_eq!(status, 200, "{v}");
    v["entries"].as_array().map(Vec::len).expect("entries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_certificateless_connections_and_bad_enrollments_do_not_starve_agents() {
    let root = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(root.path()).await.unwrap();
    let mut agent = Agent::start(root.path(), &cp, "steady", &fast_checks(2)).await.unwrap();
    cp.wait_connected("steady").await.unwrap();
    let ca_pem = std::fs::read_to_string(cp.dir.join("ca.pem")).unwrap();
    let audit_before = audit_len(&cp).await;
    let flood_started = std::time::Instant::now();

    // 5,000 idle connections without a certificate, from 127.0.0.2..=127.0.0.11:
    // all but 8 per address are closed after their handshake.
    let mut roots = rustls::RootCertStore::empty();
    for c in steward_shared::pki::certs_from_pem(&ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let mut idle = Vec::new();
    for wave in 0..25 {
        let source: IpAddr = format!("127.0.0.{}", 2 + wave % 10).parse().unwrap();
        let batch: Vec<_> = (0..200)
            .map(|_| tokio::spawn(idle_tls(cp.grpc_addr, tls.clone(), source)))
            .collect();
        for t in batch {
            if let Some(conn) = t.await.unwrap() {
                idle.push(conn);
            }
        }
    }
    // A burst of enrollments with well-formed random tokens, one per connection.
    let fingerprint =
        steward_shared::pki::fingerprint_sha256(&steward_shared::pki::certs_from_pem(&ca_pem).unwrap()[0]);
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..300 {
        let source: IpAddr = format!("127.0.0.{}", 20 + i % 3).parse().unwrap();
        let code = match channel_from(&cp, &ca_pem, source).await {
            Ok(ch) => {
                let token = format!(
                    "stwe_{:012x}_{:032x}_{fingerprint}",
                    rand::random::<u64>() >> 16,
                    rand::random::<u128>()
                );
                let csr =
                    steward_shared::pki::agent_csr(&steward_shared::pki::new_private_key_pem().unwrap(), "intruder")
                        .unwrap();
                match AgentGatewayClient::new(ch)
                    .enroll(EnrollRequest { token, csr_der: csr })
                    .await
                {
                    Ok(_) => panic!("a random token enrolled"),
                    Err(status) => status.code(),
                }
            }
            Err(_) => Code::Unavailable, // closed at the enrollment-connection cap
        };
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    eprintln!("idle connections held: {}, enrollment answers: {codes:?}", idle.len());
    assert!(codes.get("PermissionDenied").copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(
        codes.get("ResourceExhausted").copied().unwrap_or(0) > 0,
        "rate limited: {codes:?}"
    );

    // The connected agent kept streaming.
    let n = cp.stored_seqs("steady").await.unwrap().len();
    wait_for("the agent still streaming", Duration::from_secs(30), || async {
        (cp.stored_seqs("steady").await.ok()?.len() >= n + 4).then_some(())
    })
    .await
    .unwrap();
    // A new agent (from 127.0.0.1) connects and enrolls while the idle ones are still open.
    let token = cp.enrollment_token(&[]).unwrap();
    let mut fresh = Agent::prepare_unenrolled(root.path(), &cp, "newcomer", &fast_checks(1), "").unwrap();
    let (ok, out, err) = fresh.enroll(&token, &[]);
    assert!(ok, "{out}{err}");
    fresh.spawn().unwrap();
    cp.wait_connected("newcomer").await.unwrap();

    // The audit log grew by at most the denial budget (a burst of 60, then one
    // a second), the real enrollment, its token and a checkpoint or two; the
    // rest was counted in /metrics.
    let budget = 60 + flood_started.elapsed().as_secs() as usize + 1;
    let grown = audit_len(&cp).await - audit_before;
    assert!(grown <= budget + 4, "the audit log grew by {grown} (budget {budget})");
    assert!(
        grown < 150,
        "far fewer than the 204 refused enrollments and 300 attempts"
    );
    let metrics = cp
        .http()
        .unwrap()
        .get(format!("{}/metrics", cp.rest_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "steward_enrollments_total{outcome=\"rate_limited\"}") > 0,
        "{metrics}"
    );
    assert!(metric(&metrics, "steward_enrollments_total{outcome=\"refused\"}") > 0);
    assert!(
        metric(&metrics, "steward_audit_denials_unaudited_total") > 0,
        "counted beyond the budget"
    );
    assert!(
        metric(&metrics, "steward_enrollments_total{outcome=\"over_capacity\"}") >= 4_000,
        "beyond 8 per address"
    );
    drop(idle);
    agent.kill9();
    fresh.kill9();
}
