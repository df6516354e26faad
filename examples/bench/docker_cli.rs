//! The docker command line, as the `docker run` baselines and the engine's version use it.

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Fails unless the command exited 0, with its stderr for diagnosis.
pub(crate) fn check_command(case: &str, output: &std::process::Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "{case}: docker ended with {}; stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The engine's version, as the docker CLI reports it.
pub(crate) async fn docker_server_version() -> Result<String> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .await
        .context("run docker version")?;
    check_command("docker version", &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
