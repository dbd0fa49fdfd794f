//! One agent stream: `Hello` → `Welcome`, then batches → commit → `Ack`, and
//! heartbeats, until the agent hangs up, a newer stream of the same host takes
//! over, the stream misbehaves, or the control plane shuts down.
//!
//! Invariants:
//! - The host is the identity of the verified certificate ([`super::tls::AgentConnInfo`]); no
//!   field of any message can change it.
//! - `Ack{n}` is sent only after every report of the host with `seq <= n`
//!   that was sent on this stream is committed.
//! - A malformed message ends this stream with `INVALID_ARGUMENT`; nothing else
//!   is affected.
use std::sync::Arc;
use std::time::Duration;

use steward_shared::proto::{self, ControlMessage, agent_message, control_message, report};
use steward_shared::status::CheckResult;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::enroll::Enroller;
use super::ingest::Ingestor;
use super::registry::Registry;
use crate::jobs::dispatcher::JobsHandle;
use crate::jobs::{JobEventKind, JobReport};
use crate::metrics::Metrics;
use crate::model::{AgentHello, IngestBatch};
use crate::store::Store;
use steward_shared::pki::PeerIdentity;

/// Settings of a session, from the `[grpc]` config section.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_batch: u32,
    pub heartbeat_interval: Duration,
    pub hello_timeout: Duration,
}

pub struct SessionDeps {
    pub store: Store,
    pub ingestor: Ingestor,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: SessionLimits,
    pub shutdown: CancellationToken,
    /// Signs renewals (and enrollments); `None` without a CA key.
    pub enroller: Option<Arc<Enroller>>,
    /// The job dispatcher (assignments go out through the registry).
    pub jobs: JobsHandle,
}

type Out = super::registry::Outbound;

/// Runs one session to its end (the caller wraps it in a `session` span with
/// host and remote address). Errors are sent to the agent as the stream's final status.
pub async fn run(
    deps: Arc<SessionDeps>,
    identity: PeerIdentity,
    mut inbound: Streaming<proto::AgentMessage>,
    out: Out,
) {
    let host_id = identity.host_id.clone();

    // The first message must be Hello, within the deadline.
    let hello = match tokio::time::timeout(deps.limits.hello_timeout, inbound.message()).await {
        Ok(Ok(Some(proto::AgentMessage {
            msg: Some(agent_message::Msg::Hello(h)),
        }))) => h,
        Ok(Ok(Some(_))) => {
            deps.metrics.stream_rejected("protocol");
            let _ = out
                .send(Err(Status::invalid_argument("the first message must be hello")))
                .await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(status)) => {
            tracing::info!(%status, "stream failed before hello");
            return;
        }
        Err(_) => {
            deps.metrics.stream_rejected("protocol");
            let _ = out
                .send(Err(Status::deadline_exceeded("no hello within the deadline")))
                .await;
            return;
        }
    };
    let facts = hello
        .facts
        .into_iter()
        .filter(|(k, v)| k.len() <= 64 && v.len() <= 1024)
        .take(64)
        .collect();
    let info = AgentHello {
        agent_version: hello.agent_version.chars().take(64).collect(),
        facts,
        spool_dropped_total: hello.spool_dropped_total,
    };
    let acked = match Box::pin(deps.store.agent_connected(&host_id, &info, steward_shared::now_ms())).await {
        Ok(acked) => acked,
        Err(error) => {
            tracing::error!(%error, "cannot record the connection");
            let _ = out
                .send(Err(Status::unavailable(
                    "the control plane cannot store data right now",
                )))
                .await;
            return;
        }
    };
    let handle = deps.registry.register(&host_id, &identity.serial);
    deps.metrics.agent_connected();
    tracing::info!(version = %info.agent_version, acked, agent_acked = hello.last_acked_seq, "agent connected");

    let welcome = proto::Welcome {
        host_id: host_id.clone(),
        acked_seq: acked,
        max_batch: deps.limits.max_batch,
        heartbeat_interval_secs: deps.limits.heartbeat_interval.as_secs().max(1) as u32,
    };
    let mut ended = out.send(Ok(msg(control_message::Msg::Welcome(welcome)))).await.is_err();
    let mut last_acked = acked;
    let mut renewed = false;
    // The stream lives no longer than the certificate it was opened with.
    let expiry = tokio::time::sleep(until_not_after(identity.not_after));
    tokio::pin!(expiry);
    // Job assignments reach this stream from now on; due jobs go out at once.
    deps.registry.attach(&handle, out.clone());
    deps.jobs.kick();

    while !ended {
        let next = tokio::select! {
            _ = handle.cancel.cancelled() => {
                let _ = out.send(Err(Status::aborted("superseded by a newer stream of this host, or closed by the control plane"))).await;
                break;
            }
            _ = deps.shutdown.cancelled() => {
                let _ = out.send(Err(Status::unavailable("the control plane is shutting down"))).await;
                break;
            }
            _ = &mut expiry => {
                tracing::info!("certificate expired: closing the stream");
                let _ = out.send(Err(Status::unauthenticated("the certificate of this stream has expired: reconnect with a renewed one"))).await;
                break;
            }
            next = inbound.message() => next,
        };
        let message = match next {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => {
                // Oversized or undecodable messages land here; only this stream ends.
                tracing::info!(%status, "stream ended with an error");
                if matches!(
                    status.code(),
                    tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
                ) {
                    deps.metrics.stream_rejected("protocol");
                    // Tell the agent why (e.g. "message length too large"), if it still listens.
                    let _ = out.send(Err(status)).await;
                }
                break;
            }
        };
        match message.msg {
            Some(agent_message::Msg::Reports(batch)) => {
                let (batch, jobs) = match validate_batch(&host_id, batch, deps.limits.max_batch, last_acked) {
                    Ok(b) => b,
                    Err(reason) => {
                        deps.metrics.stream_rejected("protocol");
                        tracing::warn!(%reason, "malformed batch");
                        let _ = out.send(Err(Status::invalid_argument(reason))).await;
                        break;
                    }
                };
                let top = batch
                    .results
                    .last()
                    .map(|(s, _)| *s)
                    .into_iter()
                    .chain(jobs.last().map(|j| j.seq))
                    .max()
                    .unwrap_or(last_acked);
                let ended_attempts = jobs.iter().any(|j| matches!(j.event, JobEventKind::Finished { .. }));
                if let Err(error) = Box::pin(deps.ingestor.submit_with_jobs(batch, jobs)).await {
                    tracing::error!(%error, "batch not stored");
                    let _ = out
                        .send(Err(Status::unavailable(
                            "the control plane cannot store data right now",
                        )))
                        .await;
                    break;
                }
                last_acked = last_acked.max(top);
                if ended_attempts {
                    deps.jobs.kick(); // a slot on this host may be free
                }
                ended = out
                    .send(Ok(msg(control_message::Msg::Ack(proto::Ack { acked_seq: last_acked }))))
                    .await
                    .is_err();
            }
            Some(agent_message::Msg::Heartbeat(hb)) => {
                let touch = IngestBatch {
                    host_id: host_id.clone(),
                    results: Vec::new(),
                    spool_dropped_total: hb.spool_dropped_total,
                };
                if let Err(error) = Box::pin(deps.ingestor.submit(touch)).await {
                    tracing::error!(%error, "heartbeat not stored");
                    let _ = out
                        .send(Err(Status::unavailable(
                            "the control plane cannot store data right now",
                        )))
                        .await;
                    break;
                }
            }
            Some(agent_message::Msg::Hello(_)) => {
                deps.metrics.stream_rejected("protocol");
                let _ = out
                    .send(Err(Status::invalid_argument("hello may only be sent once per stream")))
                    .await;
                break;
            }
            Some(agent_message::Msg::Renew(renew)) => {
                // One renewal per stream: the stream ends at its certificate's
                // expiry at the latest, and the agent reconnects with the new one.
                let reply = match &deps.enroller {
                    _ if renewed => Err(Status::resource_exhausted(
                        "this stream has renewed its certificate already: reconnect with the new one",
                    )),
                    Some(enroller) => Box::pin(enroller.renew(&host_id, &identity.serial, &renew.csr_der)).await,
                    None => Err(Status::unavailable(
                        "this control plane has no CA key to sign certificates with",
                    )),
                };
                match reply {
                    Ok((cert_pem, ca_pem)) => {
                        renewed = true;
                        let m = msg(control_message::Msg::Renew(proto::RenewResponse { cert_pem, ca_pem }));
                        ended = out.send(Ok(m)).await.is_err();
                    }
                    Err(status) => {
                        tracing::warn!(%status, "renewal refused");
                        let _ = out.send(Err(status)).await;
                        break;
                    }
                }
            }
            Some(agent_message::Msg::JobAccepted(a)) => {
                if a.job_id.is_empty() || a.job_id.len() > 64 || a.attempt_id.len() > 128 {
                    deps.metrics.stream_rejected("protocol");
                    let _ = out
                        .send(Err(Status::invalid_argument("job_accepted: invalid job or attempt ID")))
                        .await;
                    break;
                }
                // A failure here is not fatal: the lease expires and the same
                // attempt is sent again, which the agent accepts again.
                // Batched with other sessions' acceptances by the ingest writers.
                match Box::pin(deps.ingestor.accept(&host_id, &a.job_id, &a.attempt_id)).await {
                    Ok(true) => tracing::info!(job = %a.job_id, attempt = %a.attempt_id, "job accepted"),
                    Ok(false) => {
                        tracing::debug!(job = %a.job_id, attempt = %a.attempt_id, "repeated or stale acceptance")
                    }
                    Err(error) => tracing::warn!(%error, job = %a.job_id, "cannot record the acceptance"),
                }
            }
            None => {
                deps.metrics.stream_rejected("protocol");
                let _ = out.send(Err(Status::invalid_argument("empty message"))).await;
                break;
            }
        }
    }

    if deps.registry.unregister(&handle)
        && let Err(error) = Box::pin(deps.store.agent_disconnected(&host_id, steward_shared::now_ms())).await
    {
        tracing::warn!(%error, "cannot record the disconnection");
    }
    deps.metrics.agent_disconnected();
    tracing::info!(acked = last_acked, "agent disconnected");
}

/// How long from now until `not_after` (seconds since the epoch), zero when past.
fn until_not_after(not_after: i64) -> Duration {
    let left_ms = not_after.saturating_mul(1000).saturating_sub(steward_shared::now_ms());
    Duration::from_millis(left_ms.max(0) as u64)
}

fn msg(m: control_message::Msg) -> ControlMessage {
    ControlMessage { msg: Some(m) }
}

/// Checks a batch from the wire and converts it to the domain type.
/// Reports at or below `acked` are resends of stored data: they are skipped,
/// not refused (ingest is idempotent anyway).
pub fn validate_batch(
    host_id: &str,
    batch: proto::ReportBatch,
    max_batch: u32,
    acked: u64,
) -> Result<(IngestBatch, Vec<JobReport>), String> {
    if batch.reports.is_empty() {
        return Err("a report batch must not be empty".into());
    }
    if batch.reports.len() > max_batch as usize {
        return Err(format!(
            "a report batch holds at most {max_batch} reports, got {}",
            batch.reports.len()
        ));
    }
    let mut results = Vec::with_capacity(batch.reports.len());
    let mut jobs = Vec::new();
    let mut prev = 0u64;
    for r in batch.reports {
        if r.seq == 0 {
            return Err("report sequence numbers start at 1".into());
        }
        if r.seq > i64::MAX as u64 {
            return Err(format!("report sequence {} is out of range", r.seq));
        }
        if r.seq <= prev {
            return Err(format!("report sequence numbers must increase: {} after {prev}", r.seq));
        }
        prev = r.seq;
        match r.body {
            Some(report::Body::Check(c)) => {
                if c.name.is_empty() || c.name.len() > 128 {
                    return Err(format!("report {}: check name must be 1-128 bytes", r.seq));
                }
                if c.kind.len() > 64 || c.message.len() > 4096 || c.values.len() > 256 {
                    return Err(format!("report {}: check result exceeds size limits", r.seq));
                }
                if c.values.iter().any(|v| v.name.len() > 128 || v.unit.len() > 32) {
                    return Err(format!("report {}: value name or unit too long", r.seq));
                }
                if r.seq > acked {
                    results.push((r.seq, CheckResult::from(c)));
                }
            }
            Some(report::Body::Job(j)) => {
                let job = validate_job_event(r.seq, j)?;
                if r.seq > acked {
                    jobs.push(job);
                }
            }
            None => return Err(format!("report {} has no body", r.seq)),
        }
    }
    Ok((
        IngestBatch {
            host_id: host_id.to_string(),
            results,
            spool_dropped_total: batch.spool_dropped_total,
        },
        jobs,
    ))
}

/// Largest output chunk and result accepted in one job event.
const MAX_JOB_DATA: usize = 1024 * 1024;

/// Checks a job event from the wire and converts it; NUL in text becomes U+FFFD.
fn validate_job_event(seq: u64, j: proto::JobEvent) -> Result<JobReport, String> {
    let text = |s: String| s.replace('\0', "\u{FFFD}");
    if j.job_id.len() > 64 || j.attempt_id.is_empty() || j.attempt_id.len() > 128 {
        return Err(format!("report {seq}: job event with an invalid job or attempt ID"));
    }
    if j.job_id.is_empty() && !j.attempt_id.starts_with("local-") {
        return Err(format!(
            "report {seq}: a job event without job ID must be a local run (local-...)"
        ));
    }
    let event = match j.event {
        Some(proto::job_event::Event::Progress(p)) => {
            if p.stage.len() > 256 || p.message.len() > 4096 {
                return Err(format!("report {seq}: job progress exceeds size limits"));
            }
            JobEventKind::Progress {
                stage: text(p.stage),
                percent: if p.percent.is_finite() { p.percent } else { 0.0 },
                message: text(p.message),
            }
        }
        Some(proto::job_event::Event::Output(o)) => {
            if o.data.len() > MAX_JOB_DATA || o.offset > i64::MAX as u64 {
                return Err(format!("report {seq}: job output chunk exceeds size limits"));
            }
            JobEventKind::Output {
                offset: o.offset,
                data: o.data,
                truncated: o.truncated,
            }
        }
        Some(proto::job_event::Event::Finished(f)) => {
            if !matches!(
                f.outcome.as_str(),
                "succeeded" | "failed" | "rolled_back" | "timed_out" | "cancelled"
            ) {
                return Err(format!(
                    "report {seq}: unknown job outcome {:?}",
                    f.outcome.chars().take(32).collect::<String>()
                ));
            }
            if f.reason.len() > 4096 || f.result_json.len() > MAX_JOB_DATA || f.action.len() > 64 || f.params.len() > 64
            {
                return Err(format!("report {seq}: job result exceeds size limits"));
            }
            if f.params.iter().any(|(k, v)| k.len() > 64 || v.len() > 4096) {
                return Err(format!("report {seq}: job parameter too long"));
            }
            JobEventKind::Finished {
                outcome: f.outcome,
                reason: text(f.reason),
                result_json: text(f.result_json),
                finished_at_ms: f.finished_at_ms,
                action: text(f.action),
                params: f.params.into_iter().map(|(k, v)| (text(k), text(v))).collect(),
                started_at_ms: f.started_at_ms,
            }
        }
        None => return Err(format!("report {seq}: job event without content")),
    };
    Ok(JobReport {
        seq,
        job_id: text(j.job_id),
        attempt_id: text(j.attempt_id),
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, name: &str) -> proto::Report {
        proto::Report {
            seq,
            body: Some(report::Body::Check(proto::CheckResult {
                name: name.into(),
                kind: "disk".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn valid_batches_convert_and_skip_acked_reports() {
        let b = proto::ReportBatch {
            reports: vec![report(4, "a"), report(5, "b"), report(9, "c")],
            spool_dropped_total: 3,
        };
        let (out, jobs) = validate_batch("web", b, 10, 4).unwrap();
        assert!(jobs.is_empty());
        assert_eq!(out.results.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(out.spool_dropped_total, 3);
        assert_eq!(out.host_id, "web");
    }

    #[test]
    fn malformed_batches_are_refused_with_a_reason() {
        let cases = vec![
            (vec![], "empty"),
            (vec![report(0, "a")], "start at 1"),
            (vec![report(2, "a"), report(2, "b")], "increase"),
            (vec![report(3, "a"), report(1, "b")], "increase"),
            (vec![report(u64::MAX, "a")], "out of range"),
            (vec![report(1, "")], "check name"),
            (vec![proto::Report { seq: 1, body: None }], "no body"),
            ((1..=11).map(|i| report(i, "x")).collect(), "at most 10"),
        ];
        for (reports, expect) in cases {
            let err = validate_batch(
                "h",
                proto::ReportBatch {
                    reports,
                    spool_dropped_total: 0,
                },
                10,
                0,
            )
            .unwrap_err();
            assert!(err.contains(expect), "{err:?} should mention {expect:?}");
        }
    }

    fn future_size<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected agent keeps one session future for the life of its
    /// stream: the store and ingest calls it awaits now and then are boxed,
    /// so their (large) futures do not sit in every idle session. Unboxed,
    /// this was 6,160 bytes in a debug build.
    #[test]
    fn an_idle_session_stays_small() {
        let size = future_size(run);
        assert!(size <= 2_560, "the session future is {size} bytes");
    }
}
