//! The election as it runs: rounds of the [`Elector`] at its pace, their outcome published as
//! [`Leadership`] to the leader-only jobs (status writing, the audit and its sinks), and the
//! `trustgate_leader` metric. Imports `lease`; the jobs import this, never the reverse.

use std::future::Future;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::lease::Elector;

/// `trustgate_leader`.
#[derive(Clone, Debug, Default)]
pub struct ElectionMetrics {
    leader: Gauge,
}

impl ElectionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ElectionMetrics::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease (writes status, runs the audit)",
            m.leader.clone(),
        );
        m
    }
}

/// Whether this replica leads, as the last round of the election said. Every leader-only job
/// holds one, and stops the moment it says no.
#[derive(Clone, Debug)]
pub struct Leadership(channel::Receiver<bool>);

impl Leadership {
    /// The sender the election writes to, and the leadership the jobs read; not leading yet.
    pub fn channel() -> (channel::Sender<bool>, Leadership) {
        let (tx, rx) = channel::channel(false);
        (tx, Leadership(rx))
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until this replica leads; `false` when the election has ended.
    pub async fn acquired(&mut self) -> bool {
        self.0.wait_for(|leading| *leading).await.is_ok()
    }

    /// Waits until this replica no longer leads, or the election has ended.
    pub async fn lost(&mut self) {
        // An ended election (sender dropped) leads no one: an error is a loss too.
        let _ = self.0.wait_for(|leading| !*leading).await;
    }

    /// Runs `job` while this replica leads: its output, or `None` when leadership is lost
    /// first. The job is then dropped where it stands, so the API call it was waiting for is
    /// abandoned at once: a replica that lost the lease must not go on writing beside the new
    /// leader until its own timeouts run out.
    pub async fn while_leading<F: Future>(&mut self, job: F) -> Option<F::Output> {
        tokio::select! {
            // Checked first: a job that is ready at the same time as the loss is not finished.
            biased;
            () = self.lost() => None,
            output = job => Some(output),
        }
    }
}

/// Runs election rounds until `shutdown`, publishing each outcome to `leader`; then steps down
/// and releases the lease, so that another replica takes over without waiting for it to expire.
pub(crate) async fn run(
    mut elector: Elector,
    leader: channel::Sender<bool>,
    metrics: ElectionMetrics,
    shutdown: CancellationToken,
) {
    let config = elector.config().clone();
    loop {
        let (leading, error) = elector.tick(tokio::time::Instant::now()).await;
        if let Some(error) = error {
            let source = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            warn!(%error, %source, leading, "leader election round failed");
        }
        let was = leader.send_replace(leading);
        if was != leading {
            if leading {
                info!(identity = %config.identity, "acquired the lease: this replica writes status and audits");
            } else {
                info!(identity = %config.identity, "lost the lease");
            }
        }
        metrics.leader.set(i64::from(leading));
        let mut pause = if leading { config.renew_interval } else { config.retry_interval };
        // A leader whose renewals fail wakes at its deadline, to step down on time.
        if let Some(until) = elector.leading_until() {
            pause = pause.min(until.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    leader.send_replace(false);
    metrics.leader.set(0);
    match elector.release().await {
        Ok(true) => info!("released the lease"),
        Ok(false) => {}
        Err(error) => warn!(%error, "failed to release the lease; another replica takes over when it expires"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_job_is_dropped_the_moment_leadership_is_lost() {
        let (leader, mut leadership) = Leadership::channel();
        leader.send_replace(true);
        assert!(leadership.acquired().await);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            leader.send_replace(false);
            // Kept open: the job must stop on the loss itself, not on the election ending.
            std::future::pending::<()>().await;
        });
        let start = tokio::time::Instant::now();
        let job = leadership.while_leading(std::future::pending::<()>());
        let outcome = tokio::time::timeout(Duration::from_secs(60), job).await;
        assert_eq!(outcome, Ok(None), "the job stopped");
        assert_eq!(start.elapsed(), Duration::from_secs(5), "stopped when the lease was lost, not later");
        assert!(!leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_that_finishes_while_leading_gives_its_output() {
        let (leader, mut leadership) = Leadership::channel();
        leader.send_replace(true);
        assert_eq!(leadership.while_leading(async { 7 }).await, Some(7));
        // The election ended without a last word (its task gone): nobody leads.
        drop(leader);
        let job = leadership.while_leading(std::future::pending::<()>());
        assert_eq!(tokio::time::timeout(Duration::from_secs(60), job).await, Ok(None));
    }
}
