//! `http`: GET a URL and judge status code, body and latency.
//!
//! reqwest is built with `rustls-no-provider`, so the client is handed a
//! complete rustls `ClientConfig` (ring provider, system roots plus
//! `ca_file`, or no verification) through `tls_backend_preconfigured`;
//! nothing depends on a process-wide default provider. Each run opens a fresh
//! connection (no idle pool), ignores proxy environment variables, follows
//! redirects only on the same host, and reads at most 1 MiB of body.
use reqwest::redirect;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use steward_shared::status::{CheckStatus, Value};

use super::certs::{Recorder, Trust, provider};
use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, error_chain, verdict};

/// Most body bytes read when looking for `body_contains`.
pub(crate) const BODY_LIMIT: usize = 1 << 20;
/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

pub(crate) struct HttpSpec {
    pub url: reqwest::Url,
    /// `None`: any of 200–399.
    pub expect_status: Option<Vec<u16>>,
    pub body_contains: Option<String>,
    pub tls_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub follow_redirects: bool,
    /// On latency, milliseconds.
    pub latency: Thresholds,
}

pub(crate) struct HttpProbe {
    spec: HttpSpec,
    /// Built on first use and kept (it holds the trust roots); rebuilt on
    /// config reload, when the checks are built again.
    client: Mutex<Option<reqwest::Client>>,
}

fn tls_config(spec: &HttpSpec) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let mut config = if spec.tls_verify {
        let system = Trust::system();
        let trust = match &spec.ca_file {
            Some(path) => Arc::new(system.with(&Trust::from_pem_file(path)?)),
            None => system,
        };
        builder
            .with_root_certificates(Arc::clone(&trust.store))
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder::new(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn same_host_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let first_host = attempt.previous().first().and_then(|u| u.host_str().map(str::to_owned));
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.stop()
        } else if first_host.as_deref() == attempt.url().host_str() {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

fn build_client(spec: &HttpSpec) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(spec)?)
        .redirect(if spec.follow_redirects {
            same_host_redirects()
        } else {
            redirect::Policy::none()
        })
        .no_proxy()
        .pool_max_idle_per_host(0)
        .user_agent(concat!("steward-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl HttpProbe {
    pub fn new(spec: HttpSpec) -> Self {
        Self {
            spec,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = build_client(&self.spec)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn status_ok(&self, code: u16) -> bool {
        match &self.spec.expect_status {
            Some(codes) => codes.contains(&code),
            None => (200..=399).contains(&code),
        }
    }

    fn expected(&self) -> String {
        match &self.spec.expect_status {
            Some(codes) => codes.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
            None => "200-399".into(),
        }
    }

    pub async fn run(&self) -> Outcome {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Outcome::unknown(e),
        };
        let url = &self.spec.url;
        let started = Instant::now();
        let mut response = match client.get(url.clone()).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::critical(format!("GET {url} failed: {}", error_chain(&e))),
        };
        let code = response.status().as_u16();
        let mut body_found = None;
        if let Some(needle) = &self.spec.body_contains {
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = BODY_LIMIT - body.len();
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if body.len() >= BODY_LIMIT {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Outcome::critical(format!("GET {url}: reading the body failed: {}", error_chain(&e)));
                    }
                }
            }
            body_found = Some((contains(&body, needle.as_bytes()), body.len()));
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let values = vec![
            Value::new("status_code", f64::from(code), ""),
            Value::new("latency_ms", ms, "ms"),
        ];
        let final_url = response.url();
        let via = if final_url != url {
            format!(" (via {final_url})")
        } else {
            String::new()
        };
        if !self.status_ok(code) {
            let message = format!("GET {url}: status {code}{via}, expected {}", self.expected());
            return Outcome::new(CheckStatus::Critical, values, message);
        }
        if let (Some((false, read)), Some(needle)) = (body_found, &self.spec.body_contains) {
            let message =
                format!("GET {url}: status {code}{via}, but the body ({read} bytes read) does not contain {needle:?}");
            return Outcome::new(CheckStatus::Critical, values, message);
        }
        let status = self.spec.latency.status(ms);
        let message = format!(
            "GET {url}: status {code}{via} in {} ms{}",
            trim_float(ms),
            verdict(status, &self.spec.latency)
        );
        Outcome::new(status, values, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::certs::tests::{pki, server_config};
    use super::super::thresholds::Direction;
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Answers one HTTP/1.1 request by path; closes the connection after it.
    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, other_port: u16) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, extra, body) = match path.as_str() {
            "/health" => ("200 OK", String::new(), "status: all good".to_string()),
            "/broken" => ("500 Internal Server Error", String::new(), "oops".to_string()),
            "/moved" => ("302 Found", "Location: /health\r\n".to_string(), String::new()),
            "/elsewhere" => (
                "302 Found",
                format!("Location: http://localhost:{other_port}/health\r\n"),
                String::new(),
            ),
            "/big" => ("200 OK", String::new(), "x".repeat(BODY_LIMIT + 10) + "needle"),
            _ => ("404 Not Found", String::new(), String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(response.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    /// A tiny HTTP server on 127.0.0.1, plain or with TLS.
    async fn server(tls: Option<Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                respond(tls, addr.port()).await;
                            }
                        }
                        None => respond(tcp, addr.port()).await,
                    }
                });
            }
        });
        addr
    }

    fn spec(url: String) -> HttpSpec {
        HttpSpec {
            url: reqwest::Url::parse(&url).unwrap(),
            expect_status: None,
            body_contains: None,
            tls_verify: true,
            ca_file: None,
            follow_redirects: true,
            latency: Thresholds::none(Direction::HigherIsWorse),
        }
    }

    fn code(out: &Outcome) -> f64 {
        out.values
            .iter()
            .find(|v| v.name == "status_code")
            .map(|v| v.value)
            .unwrap_or(-1.0)
    }

    #[tokio::test]
    async fn status_and_body_are_matched() {
        let addr = server(None).await;
        let base = format!("http://{addr}");

        let out = HttpProbe::new(spec(format!("{base}/health"))).run().await;
        assert_eq!(out.status, CheckStatus::Ok, "{out:?}");
        assert_eq!(code(&out), 200.0);
        assert!(out.values.iter().any(|v| v.name == "latency_ms"));

        let out = HttpProbe::new(spec(format!("{base}/broken"))).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert!(out.message.contains("status 500, expected 200-399"), "{}", out.message);

        let mut s = spec(format!("{base}/broken"));
        s.expect_status = Some(vec![500]);
        assert_eq!(HttpProbe::new(s).run().await.status, CheckStatus::Ok);

        let mut s = spec(format!("{base}/health"));
        s.body_contains = Some("all good".into());
        assert_eq!(HttpProbe::new(s).run().await.status, CheckStatus::Ok);

        let mut s = spec(format!("{base}/health"));
        s.body_contains = Some("all bad".into());
        let out = HttpProbe::new(s).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert!(out.message.contains("does not contain \"all bad\""), "{}", out.message);
    }

    #[tokio::test]
    async fn body_reads_stop_at_the_limit() {
        let addr = server(None).await;
        let mut s = spec(format!("http://{addr}/big"));
        s.body_contains = Some("needle".into());
        let out = HttpProbe::new(s).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "needle lies past 1 MiB: {out:?}");
        assert!(
            out.message.contains(&format!("({BODY_LIMIT} bytes read)")),
            "{}",
            out.message
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_on_the_same_host_only() {
        let addr = server(None).await;
        let out = HttpProbe::new(spec(format!("http://{addr}/moved"))).run().await;
        assert_eq!((out.status, code(&out)), (CheckStatus::Ok, 200.0), "{out:?}");
        assert!(out.message.contains("via"), "{}", out.message);

        // 127.0.0.1 -> localhost is another host: not followed, the 302 is judged.
        let mut s = spec(format!("http://{addr}/elsewhere"));
        s.expect_status = Some(vec![200]);
        let out = HttpProbe::new(s).run().await;
        assert_eq!((out.status, code(&out)), (CheckStatus::Critical, 302.0), "{out:?}");

        let mut s = spec(format!("http://{addr}/moved"));
        s.follow_redirects = false;
        assert_eq!(code(&HttpProbe::new(s).run().await), 302.0);
    }

    #[tokio::test]
    async fn closed_port_is_critical() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let out = HttpProbe::new(spec(format!("http://{closed}/"))).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert!(out.message.contains("failed"), "{}", out.message);
    }

    #[tokio::test]
    async fn https_uses_ca_file_or_skips_verification_without_a_global_provider() {
        let (ca, cert) = pki(30);
        let addr = server(Some(server_config(&cert))).await;
        let url = format!("https://127.0.0.1:{}/health", addr.port());
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();

        let out = HttpProbe::new(spec(url.clone())).run().await;
        assert_eq!(
            out.status,
            CheckStatus::Critical,
            "private CA not trusted by default: {out:?}"
        );

        let mut s = spec(url.clone());
        s.ca_file = Some(ca_file);
        let out = HttpProbe::new(s).run().await;
        assert_eq!(out.status, CheckStatus::Ok, "{out:?}");

        let mut s = spec(url);
        s.tls_verify = false;
        assert_eq!(HttpProbe::new(s).run().await.status, CheckStatus::Ok);

        let mut s = spec(format!("https://{addr}/health"));
        s.ca_file = Some(dir.path().join("missing.pem"));
        assert_eq!(HttpProbe::new(s).run().await.status, CheckStatus::Unknown);
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b"hello!"));
        assert!(contains(b"", b""));
    }
}
