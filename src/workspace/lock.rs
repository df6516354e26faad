//! The lock of one workspace: a file `<workspaces>/.locks/<id>` held with `flock`, which
//! serializes runs and removal across tasks and processes. It lives outside the workspace, so
//! removing a workspace never removes a lock someone is waiting on; a waiter that gets a lock
//! file someone removed meanwhile takes the new one instead.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use super::Workspace;
use crate::error::{IoContext, IoError};

impl Workspace {
    /// Takes the workspace's exclusive lock, blocking until it is free. Everything that
    /// changes a workspace holds it, so that two runs of a message (even in two processes), or
    /// a run and the reaper, never work on the folder at once. The lock is released when the
    /// returned file is dropped.
    pub fn lock(&self) -> Result<File, IoError> {
        loop {
            let file = self.open_lock_file()?;
            file.lock().with_path("lock", &self.lock_path)?;
            if self.lock_is_current(&file)? {
                return Ok(file);
            }
        }
    }

    /// Like [`Workspace::lock`] but gives up at once, returning `None`, when someone holds it.
    pub fn try_lock(&self) -> Result<Option<File>, IoError> {
        let file = self.open_lock_file()?;
        match file.try_lock() {
            Ok(()) if self.lock_is_current(&file)? => Ok(Some(file)),
            Ok(()) | Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(error)) => Err(error).with_path("lock", &self.lock_path),
        }
    }

    /// Removes the lock file; call it while holding the lock, just before dropping it.
    pub fn remove_lock_file(&self) -> Result<(), IoError> {
        match fs::remove_file(&self.lock_path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &self.lock_path),
        }
    }

    fn open_lock_file(&self) -> Result<File, IoError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.lock_path)
            .with_path("open", &self.lock_path)
    }

    /// Whether the locked file is still the one at the lock path: whoever removed the
    /// workspace may have removed the lock file while we waited on it.
    fn lock_is_current(&self, file: &File) -> Result<bool, IoError> {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata().with_path("inspect", &self.lock_path)?;
        match fs::symlink_metadata(&self.lock_path) {
            Ok(current) => Ok(current.ino() == held.ino() && current.dev() == held.dev()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error).with_path("inspect", &self.lock_path),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::workspace::Workspaces;

    #[test]
    fn locks_exclude_each_other_and_survive_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::open(dir.path(), None).expect("open");
        let workspace = workspaces.prepare("ws_3").expect("prepare");
        let held = workspace.lock().expect("lock");
        assert!(
            workspace.try_lock().expect("try").is_none(),
            "held elsewhere"
        );
        workspace.remove_lock_file().expect("remove");
        drop(held);
        let again = workspace
            .try_lock()
            .expect("try")
            .expect("free after removal");
        workspaces.remove("ws_3").expect("remove workspace");
        drop(again);
        assert!(
            workspace.lock().is_ok(),
            "a removed workspace can be locked again"
        );
    }
}
