//! What the child processes the benchmark starts (the server and nginx) share: a loopback
//! port to listen on, and a parent-death signal so that neither outlives the benchmark.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

/// Makes the kernel send the child `command` starts SIGTERM if the benchmark dies without
/// running any clean-up (SIGKILL), so that neither the server nor nginx outlives it. The
/// signal follows the thread that spawns the child; both are spawned on the main thread
/// (`#[tokio::main]` polls `main`'s future on it and neither is started from a spawned task),
/// which lives as long as the process.
pub(crate) fn stop_with_parent(command: &mut std::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        });
    }
}

/// A loopback port free right now. Another process could take it before nginx binds it;
/// nginx then fails to start, and says so.
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        StdTcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("find a free port")?;
    Ok(listener.local_addr().context("read the free port")?.port())
}
