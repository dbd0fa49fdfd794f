//! Receivers and the delivery worker. The worker drains the outbox
//! ([`Store::claim_notifications`]): claimed notifications are leased (a
//! replica that dies mid-delivery leaves them to another), grouped by
//! receiver, and each receiver's group is delivered in order while the
//! groups run side by side, so a receiver that hangs or fails holds up
//! nobody else. A failure is retried with exponential backoff
//! (`retry_initial` doubled per attempt, at most `retry_max`), forever: a
//! receiver that stays down loses nothing.
//!
//! Receivers:
//! - `webhook`: POST of the notification document (JSON) with
//!   `X-Steward-Signature: sha256=<hex HMAC-SHA256 of the body>` when a
//!   secret is configured, `X-Steward-Event` and `X-Steward-Delivery` (the
//!   notification ID: the same on every retry, for deduplication);
//! - `slack`: POST of `{"text": ...}` (Slack-compatible incoming webhook);
//! - `email`: one message over SMTP (lettre), STARTTLS required by default
//!   (`tls = "tls"`: TLS from the start; `tls = "none"`: plain, local relays);
//! - `file`: one JSON line per notification appended to a file (0600).
//!
//! Delivery is at least once: a receiver may see a notification twice if
//! the control plane stops between delivering and recording it.
//! Invariant: URLs and secrets never reach logs or `last_error` (webhook
//! URLs of chat services are credentials).
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::{AlertsConfig, ReceiverConfig};
use crate::store::Store;
use crate::store::alert::Notification;

/// Notifications claimed per round.
const BATCH: i64 = 100;
/// How often the outbox is looked at when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(1);

/// One configured receiver, ready to deliver.
#[derive(Clone)]
pub enum Receiver {
    Webhook {
        url: String,
        secret: Option<Vec<u8>>,
    },
    Slack {
        url: String,
    },
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, String)>,
        from: String,
        to: Vec<String>,
    },
    File {
        path: PathBuf,
    },
    /// Configured, but not usable (e.g. its secret file cannot be read).
    Broken {
        reason: String,
    },
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the secret.
        f.write_str(match self {
            Receiver::Webhook { .. } => "Receiver::Webhook",
            Receiver::Slack { .. } => "Receiver::Slack",
            Receiver::Email { .. } => "Receiver::Email",
            Receiver::File { .. } => "Receiver::File",
            Receiver::Broken { .. } => "Receiver::Broken",
        })
    }
}

/// How an email receiver secures its SMTP connection (`tls` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS required (the default).
    StartTls,
    /// TLS from the first byte.
    Wrapper,
    /// Plain SMTP (local relays).
    None,
}

impl Receiver {
    /// From validated configuration ([`AlertsConfig::check`]).
    pub fn from_config(r: &ReceiverConfig) -> Receiver {
        let url = r.url.clone().unwrap_or_default();
        match r.kind.as_str() {
            "webhook" => {
                let secret = match (&r.secret, &r.secret_file) {
                    (Some(s), _) => match s.resolve() {
                        Ok(s) => Some(s.into_bytes()),
                        Err(e) => {
                            return Receiver::Broken {
                                reason: format!("key secret: {e}"),
                            };
                        }
                    },
                    (None, Some(path)) => match std::fs::read_to_string(path) {
                        Ok(s) => Some(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec()),
                        Err(e) => {
                            return Receiver::Broken {
                                reason: format!("cannot read secret_file {}: {e}", path.display()),
                            };
                        }
                    },
                    (None, None) => None,
                };
                Receiver::Webhook { url, secret }
            }
            "slack" => Receiver::Slack { url },
            "email" => {
                let (host, port) = r
                    .smtp
                    .as_deref()
                    .and_then(|s| s.rsplit_once(':'))
                    .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p.parse().unwrap_or(25)))
                    .unwrap_or_default();
                let tls = match r.tls.as_deref() {
                    Some("none") => SmtpTls::None,
                    Some("tls") => SmtpTls::Wrapper,
                    _ => SmtpTls::StartTls,
                };
                let credentials = match (&r.username, &r.password) {
                    (Some(user), Some(password)) => match password.resolve() {
                        Ok(password) => Some((user.clone(), password)),
                        Err(e) => {
                            return Receiver::Broken {
                                reason: format!("key password: {e}"),
                            };
                        }
                    },
                    _ => None,
                };
                Receiver::Email {
                    host,
                    port,
                    tls,
                    credentials,
                    from: r.from.clone().unwrap_or_default(),
                    to: r.to.clone(),
                }
            }
            "file" => Receiver::File {
                path: r.path.clone().unwrap_or_default(),
            },
            other => Receiver::Broken {
                reason: format!("unknown receiver kind {other:?}"),
            },
        }
    }
}

/// Where an email receiver sends (borrowed from [`Receiver::Email`]).
struct Smtp<'a> {
    host: &'a str,
    port: u16,
    tls: SmtpTls,
    credentials: &'a Option<(String, String)>,
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

/// Whether `header` is the signature of `body` under `secret` (constant time).
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(tag) = header.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &tag).is_ok()
}

/// The one-line text of a notification (Slack, email subject).
pub fn headline(payload: &serde_json::Value) -> String {
    let a = &payload["alert"];
    let labels: Vec<String> = a["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "[{}] {} {}: {} ({})",
        payload["event"].as_str().unwrap_or("").to_uppercase(),
        a["severity"].as_str().unwrap_or(""),
        a["labels"]["alertname"].as_str().unwrap_or(""),
        a["summary"].as_str().unwrap_or(""),
        labels.join(", ")
    )
}

/// The delivery worker of one process.
pub struct Deliverer {
    store: Store,
    receivers: HashMap<String, Receiver>,
    http: reqwest::Client,
    retry_initial: Duration,
    retry_max: Duration,
    timeout: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn http_client(timeout: Duration) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("steward-controlplane/", env!("CARGO_PKG_VERSION")));
    let builder = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => builder.tls_backend_preconfigured(b.with_root_certificates(roots).with_no_client_auth()),
        Err(_) => builder,
    };
    builder.build().unwrap_or_default()
}

/// A transport error without the URL.
fn http_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connect() {
        return "cannot connect".into();
    }
    e.without_url().to_string()
}

impl Deliverer {
    pub fn new(store: Store, cfg: &AlertsConfig) -> Self {
        let receivers: HashMap<String, Receiver> = cfg
            .receivers
            .iter()
            .map(|r| {
                let rx = Receiver::from_config(r);
                if let Receiver::Broken { reason } = &rx {
                    tracing::error!(receiver = %r.name, %reason, "alert receiver not usable; its notifications wait");
                }
                (r.name.clone(), rx)
            })
            .collect();
        let timeout = cfg.delivery_timeout.as_std();
        Deliverer {
            store,
            receivers,
            http: http_client(timeout),
            retry_initial: cfg.retry_initial.as_std(),
            retry_max: cfg.retry_max.as_std(),
            timeout,
        }
    }

    /// When to try again after `attempts` failed attempts (this one included).
    pub fn retry_at(&self, now_ms: i64, attempts: i64) -> i64 {
        let factor = 1u32 << attempts.clamp(0, 20) as u32;
        let wait = self.retry_initial.saturating_mul(factor).min(self.retry_max);
        now_ms.saturating_add(ms(wait))
    }

    /// Delivers one notification to one receiver.
    pub async fn deliver(&self, receiver: &Receiver, n: &Notification) -> Result<(), String> {
        match receiver {
            Receiver::Broken { reason } => Err(reason.clone()),
            Receiver::Webhook { url, secret } => {
                let mut req = self
                    .http
                    .post(url.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("x-steward-event", n.event.as_str())
                    .header("x-steward-delivery", n.id.as_str());
                if let Some(secret) = secret {
                    req = req.header("x-steward-signature", signature(secret, n.payload.as_bytes()));
                }
                let resp = req.body(n.payload.clone()).send().await.map_err(http_error)?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status().as_u16()))
                }
            }
            Receiver::Slack { url } => {
                let payload: serde_json::Value = serde_json::from_str(&n.payload).unwrap_or_default();
                let body = serde_json::json!({ "text": headline(&payload) });
                let resp = self
                    .http
                    .post(url.as_str())
                    .json(&body)
                    .send()
                    .await
                    .map_err(http_error)?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status().as_u16()))
                }
            }
            Receiver::Email {
                host,
                port,
                tls,
                credentials,
                from,
                to,
            } => {
                let server = Smtp {
                    host,
                    port: *port,
                    tls: *tls,
                    credentials,
                };
                tokio::time::timeout(self.timeout, self.email(&server, from, to, n))
                    .await
                    .map_err(|_| "timed out".to_string())?
            }
            Receiver::File { path } => {
                let mut line = n.payload.clone();
                line.push('\n');
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .await
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                f.write_all(line.as_bytes())
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                f.flush().await.map_err(|e| e.to_string())
            }
        }
    }

    async fn email(&self, server: &Smtp<'_>, from: &str, to: &[String], n: &Notification) -> Result<(), String> {
        use lettre::message::header::ContentType;
        use lettre::transport::smtp::extension::ClientId;
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let payload: serde_json::Value = serde_json::from_str(&n.payload).unwrap_or_default();
        let a = &payload["alert"];
        let mut text = format!("{}\n\n", a["summary"].as_str().unwrap_or(""));
        if let Some(labels) = a["labels"].as_object() {
            for (k, v) in labels {
                text.push_str(&format!("{k}: {}\n", v.as_str().unwrap_or("")));
            }
        }
        text.push_str(&format!(
            "\nalert: {}\nfingerprint: {}\nstarted: {}\n\n{}\n",
            a["id"].as_str().unwrap_or(""),
            a["fingerprint"].as_str().unwrap_or(""),
            steward_shared::timestamp::rfc3339(a["started_ms"].as_i64().unwrap_or(0)),
            n.payload
        ));
        let mut msg = Message::builder()
            .from(from.parse().map_err(|e| format!("from: {e}"))?)
            .subject(format!("[Steward] {}", headline(&payload)))
            .header(ContentType::TEXT_PLAIN);
        for t in to {
            msg = msg.to(t.parse().map_err(|e| format!("to: {e}"))?);
        }
        let msg = msg.body(text).map_err(|e| e.to_string())?;
        use lettre::transport::smtp::client::{Tls, TlsParameters};
        let params = || TlsParameters::new_rustls(server.host.to_string()).map_err(|e| format!("TLS: {e}"));
        let tls = match server.tls {
            SmtpTls::StartTls => Tls::Required(params()?),
            SmtpTls::Wrapper => Tls::Wrapper(params()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.host)
            .port(server.port)
            .tls(tls)
            .timeout(Some(self.timeout))
            .hello_name(ClientId::Domain("steward-controlplane".into()));
        if let Some((user, password)) = server.credentials {
            builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user.clone(),
                password.clone(),
            ));
        }
        let transport = builder.build();
        transport.send(msg).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// One round: claims due notifications, delivers them (receivers side
    /// by side, each in order), records each outcome. Returns how many were
    /// claimed.
    pub async fn drain(&self, now_ms: i64) -> Result<usize, crate::store::StoreError> {
        // The lease outlives the slowest group (each item bounded by the timeout).
        let lease = ms(self.timeout) * (BATCH + 2);
        let claimed = self.store.claim_notifications(now_ms, lease, BATCH).await?;
        let n = claimed.len();
        let mut groups: BTreeMap<String, Vec<Notification>> = BTreeMap::new();
        for c in claimed {
            groups.entry(c.receiver.clone()).or_default().push(c);
        }
        let rounds = groups.into_iter().map(|(name, items)| self.deliver_group(name, items));
        for r in futures_util::future::join_all(rounds).await {
            r?;
        }
        Ok(n)
    }

    async fn deliver_group(&self, name: String, items: Vec<Notification>) -> Result<(), crate::store::StoreError> {
        let receiver = self.receivers.get(&name).cloned().unwrap_or_else(|| Receiver::Broken {
            reason: format!("no receiver named {name:?} is configured"),
        });
        let mut failed: Option<(String, i64)> = None;
        for item in items {
            let now = steward_shared::now_ms();
            if let Some((error, retry_at)) = &failed {
                // Not tried: the receiver just failed; keep the order.
                let why = format!("not tried: an earlier delivery failed: {error}");
                self.store
                    .notification_attempted(&item.id, Err(&why), *retry_at, now)
                    .await?;
                continue;
            }
            match self.deliver(&receiver, &item).await {
                Ok(()) => {
                    self.store.notification_attempted(&item.id, Ok(()), now, now).await?;
                    tracing::debug!(receiver = %name, notification = %item.id, event = %item.event, "notification delivered");
                }
                Err(error) => {
                    let retry_at = self.retry_at(now, item.attempts + 1);
                    tracing::warn!(receiver = %name, notification = %item.id, attempts = item.attempts + 1, %error, "notification not delivered; will retry");
                    self.store
                        .notification_attempted(&item.id, Err(&error), retry_at, now)
                        .await?;
                    failed = Some((error, retry_at));
                }
            }
        }
        Ok(())
    }

    /// Drains the outbox until shutdown: at once when woken, else every second.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let busy = match self.drain(steward_shared::now_ms()).await {
                Ok(n) => n as i64 == BATCH,
                Err(error) => {
                    tracing::warn!(%error, "alert delivery round failed");
                    false
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
