//! What every long-lived task of an instance shares: its metrics, the
//! shutdown signal, and the tracker a drain waits on.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// A cheap handle, cloned into each connection and session task.
#[derive(Clone)]
pub(crate) struct Runtime {
    /// Where every task records what it did.
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when the instance starts to drain.
    pub(crate) shutdown: CancellationToken,
    /// Client and backend tasks; a drain waits for them.
    pub(crate) tasks: TaskTracker,
}
