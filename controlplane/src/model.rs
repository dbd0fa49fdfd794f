//! Domain types of the control plane, shared by the store, the gateway and the
//! REST API. Wire types (protobuf) and JSON views are converted at the edges.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use steward_shared::status::CheckResult;

/// What an agent says about itself in `Hello` (self-reported, never used for access).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentHello {
    pub agent_version: String,
    pub facts: BTreeMap<String, String>,
    pub spool_dropped_total: u64,
}

/// One host's reports from one stream batch, for [`crate::store::Store::ingest`].
#[derive(Debug, Clone, PartialEq)]
pub struct IngestBatch {
    pub host_id: String,
    /// (sequence, result) in ascending sequence order.
    pub results: Vec<(u64, CheckResult)>,
    pub spool_dropped_total: u64,
}
