//! Runs checks on their schedules. (Interface stub: the checks helper fills this in.)
use std::sync::Arc;
use steward_shared::status::CheckResult;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checks::Check;

/// Starts every check on its schedule; results go to `sink`. Returns when
/// `shutdown` is cancelled and the running checks have stopped.
pub async fn run(_checks: Vec<Arc<Check>>, _sink: mpsc::Sender<CheckResult>, _shutdown: CancellationToken) {}
