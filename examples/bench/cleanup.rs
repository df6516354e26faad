//! The clean-up, and what it removes: every message the benchmark made has its workspace deleted
//! through `DELETE /v1/messages/{id}/workspace` (per sample in cases 1 and 2, after the others),
//! and the server is then stopped with SIGTERM, which removes its pool and every sandbox it
//! started. After it exits, the benchmark removes whatever containers still carry the server's
//! instance label or the benchmark's own name prefix (the baselines' and AutoGen's), and unmounts
//! any workspace file system left under the scratch folder. This runs when the benchmark ends,
//! fails, or gets Ctrl-C or SIGTERM; if the benchmark is killed outright, the server still gets
//! SIGTERM from the kernel (a parent-death signal) and removes its sandboxes, nginx is stopped the
//! same way, and the AutoGen helper stops its container when its standard input closes; what is
//! left then is the scratch folder, with the loop mounts of the workspaces that were live (`umount
//! -l` them, then remove it), and at most one container of the engine baseline if it was killed in
//! the middle of a cycle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};

use crate::harness::Bench;

impl Bench {
    /// Stops the AutoGen helper, deletes the workspaces still left, stops the server (which
    /// removes its pool and sandboxes), then removes any container left with the server's
    /// instance label or the benchmark's name prefix and unmounts what is still mounted in
    /// the scratch folder. Tries every step even if one fails, and reports the first failure.
    pub(crate) async fn clean_up(&mut self) -> Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        if let Some(helper) = self.autogen.take() {
            helper.stop().await;
        }
        if self.server.check_alive().is_ok() {
            let live = self.live.clone();
            if let Err(error) = self.discard_all(&live).await {
                eprintln!("deleting the benchmark's workspaces: {error:#}");
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.server.stop().await {
            eprintln!("stopping the server: {error:#}");
            first_error.get_or_insert(error);
        }
        let mut filters = vec![("name", format!("codebox-bench-{}", self.nonce))];
        if let Some(instance) = &self.server.instance {
            filters.push(("label", format!("codebox.instance={instance}")));
        }
        for (key, value) in filters {
            match remove_containers(&self.docker, key, &value).await {
                Ok(0) => {}
                Ok(removed) => {
                    eprintln!("removed {removed} container(s) left behind ({key} {value})")
                }
                Err(error) => {
                    eprintln!("removing containers ({key} {value}): {error:#}");
                    first_error.get_or_insert(error);
                }
            }
        }
        unmount_below(&self.server.data_dir);
        first_error.map_or(Ok(()), Err)
    }
}

/// Force-removes every container, running or not, that matches the engine filter
/// `key=value`. Returns how many it removed.
async fn remove_containers(docker: &Docker, key: &str, value: &str) -> Result<usize> {
    let filters = HashMap::from([(key, vec![value.to_owned()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .context("list containers")?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|container| container.id) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => removed += 1,
            // Already gone, or being removed by someone else.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(error) => return Err(error).with_context(|| format!("remove container {id}")),
        }
    }
    Ok(removed)
}

/// Lazily unmounts every file system mounted at or below `dir` (the server's loop-mounted
/// workspaces, should it have left any), deepest first.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_path(point)))
        .filter(|point| point.starts_with(&dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.as_os_str().len()));
    for point in points {
        if let Err(error) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            eprintln!("unmounting {}: {error}", point.display());
        }
    }
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash in paths as octal escapes.
fn unescape_mount_path(text: &str) -> String {
    text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }
}
