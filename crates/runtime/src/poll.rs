//! A polling loop for state that has no change notification: certificate files (kubelet swaps
//! Secret volumes by symlink, which file watchers miss) and policy files.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `check` on `state` every `interval` until `shutdown`, on a blocking thread: reading
/// and hashing files must never stall the runtime's workers. Shared by the policy file source
/// and the TLS certificate reloader.
pub async fn poll_every<T, F>(state: T, interval: Duration, shutdown: CancellationToken, what: &str, check: F)
where
    T: Send + 'static,
    F: FnMut(&mut T) + Send + 'static,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut carried = Some((state, check));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (mut state, mut check) = carried.take().expect("the state comes back after every check");
        match tokio::task::spawn_blocking(move || {
            check(&mut state);
            (state, check)
        })
        .await
        {
            Ok(back) => carried = Some(back),
            Err(error) => {
                tracing::error!(%error, "{what} stopped");
                return;
            }
        }
    }
}
