//! Protocol decode and validation: bytes from an agent's stream are decoded
//! as an `AgentMessage` (prost) and a report batch goes through the gateway's
//! `validate_batch`, which also validates job events. Neither may panic, and
//! an accepted batch keeps only reports newer than the acknowledged sequence,
//! in increasing order.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use steward_controlplane::gateway::session::validate_batch;
use steward_shared::proto::{AgentMessage, agent_message};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = AgentMessage::decode(data) else {
        return;
    };
    let Some(agent_message::Msg::Reports(batch)) = message.msg else {
        return;
    };
    for acked in [0, 3] {
        if let Ok((ingest, jobs)) = validate_batch("fuzz-host", batch.clone(), 500, acked) {
            assert!(ingest.results.len() + jobs.len() <= batch.reports.len());
            let mut seqs: Vec<u64> = ingest
                .results
                .iter()
                .map(|(s, _)| *s)
                .chain(jobs.iter().map(|j| j.seq))
                .collect();
            assert!(seqs.iter().all(|s| *s > acked));
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "a sequence number was accepted twice");
        }
    }
});
