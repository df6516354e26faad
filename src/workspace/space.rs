//! How much disk a workspace may take and does take: the cap on its `data/` (a loop-mounted
//! ext4 of its own, or the watchdog's measurements; the engine is `disk`), and the
//! bytes removing the workspace would free, which retention weighs against its quota.

use std::collections::HashMap;
use std::path::Path;

use super::disk::{self, DiskMode, DiskPolicy};
use super::{Workspace, Workspaces};
use crate::error::IoError;
use crate::safe_fs::walk::{self, Found, Step};

impl Workspaces {
    /// Gives a prepared workspace's `data/` its own capped file system when the policy is
    /// `loop` (see [`disk::mount_data`]). Returns whether it was mounted now: a sandbox made
    /// before then saw the bare folder and must be made again.
    pub fn mount_data(&self, workspace: &Workspace) -> Result<bool, IoError> {
        match &self.disk {
            Some(policy) if policy.mode == DiskMode::Loop => {
                disk::mount_data(&workspace.root, &workspace.data, policy, self.sandbox_owner)
            }
            _ => Ok(false),
        }
    }
}

impl Workspace {
    /// Bytes that removing the workspace would free: the blocks its entries occupy (links not
    /// followed, so that a sparse file the sandbox made counts for what it uses, not what it
    /// claims). A file with other names outside the workspace (an attachment hard-linked
    /// from the blob store) is not freed by the removal and does not count; one with several
    /// names inside it counts once.
    pub fn bytes(&self) -> u64 {
        let mut count = CountFreed::default();
        // By file descriptors, not entering another file system: the sandbox controls data/
        // and may swap a folder for a link to another workspace while this walk goes on, and
        // a loop-mounted data/ is counted by its image file, which holds it. A workspace that
        // cannot be opened frees nothing that can be counted.
        if walk::walk(&self.root, &mut count).is_err() {
            return 0;
        }
        count
            .inodes
            .values()
            .filter(|(links, seen, _)| seen >= links)
            .map(|(_, _, bytes)| bytes)
            .sum()
    }

    /// What `data/` holds, measured against its cap; `None` when it is not capped or cannot
    /// be measured.
    pub fn disk_usage(&self) -> Option<disk::Usage> {
        disk::usage(&self.data, self.disk.as_ref()?)
    }

    /// How often its `data/` should be checked against the cap while code runs; `None` when
    /// it is not capped.
    pub fn disk_check_interval(&self) -> Option<std::time::Duration> {
        self.disk.as_ref().map(DiskPolicy::check_interval)
    }
}

/// The walk of [`Workspace::bytes`]: files other than folders, by identity.
#[derive(Default)]
struct CountFreed {
    /// (device, inode) -> (links the file has, names of it seen here, bytes).
    inodes: HashMap<(u64, u64), (u64, u64, u64)>,
}

impl walk::Visitor for CountFreed {
    fn entry(&mut self, found: Found<'_>) -> Step {
        if let Ok(stat) = &found.stat
            && !walk::is_folder(stat)
        {
            let seen = self.inodes.entry((stat.st_dev, stat.st_ino)).or_insert((
                walk::links(stat),
                0,
                walk::allocated(stat),
            ));
            seen.1 += 1;
        }
        Step::Descend
    }

    // What is not entered is not counted: removing the workspace may free it, but only what
    // is sure to be freed counts.
    fn refused(&mut self, _: &Path) {}
}
