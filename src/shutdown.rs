//! The shutdown flag every long-running task watches (ground floor: `serve`, `telemetry`
//! and the reload task all wait on it).

use tokio::sync::watch;

/// Resolves once `stop` holds `true` (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, inside this future.
    let _ = stop.wait_for(|s| *s).await;
}
