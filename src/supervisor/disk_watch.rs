//! The watchdog of a run's disk cap: while code runs, `data/`'s usage is checked every
//! interval where the disk policy needs it, and the run is stopped once it is full.

use super::*;

/// Resolves, with a sentence saying which cap, once the run fills the workspace's `data/`
/// up to its cap (it is full, and holds more than `before`); never, if it does not.
pub(super) async fn disk_filled(
    workspace: Workspace,
    before: Option<crate::workspace::disk::Usage>,
) -> String {
    let (Some(interval), Some(before)) = (workspace.disk_check_interval(), before) else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(now) = disk_usage(&workspace).await
            && let Some(reason) = now.filled_since(&before)
        {
            return reason.to_owned();
        }
    }
}

/// [`Workspace::disk_usage`] on a blocking thread: in watchdog mode it walks the folder.
pub(super) async fn disk_usage(workspace: &Workspace) -> Option<crate::workspace::disk::Usage> {
    let checked = workspace.clone();
    tokio::task::spawn_blocking(move || checked.disk_usage())
        .await
        .ok()
        .flatten()
}
